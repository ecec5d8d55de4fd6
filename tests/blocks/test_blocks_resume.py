"""A blockwise run SIGKILLed mid-run and resumed continues bit for bit: every block's
eigenpairs and quadrature equal the uninterrupted run's, and the passes before the kill plus
those after the resume are the uninterrupted run's passes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lanczos_hessian import ResumeError
from lanczos_hessian.blocks import block_spectra, preset_blocks, read_block_spectra
from lanczos_hessian.storage.hdf5 import open_spectrum

#: Subprocesses that import torch, killed and resumed: the slow tier.
pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("_kill_blocks.py"))
sys.path.insert(0, str(Path(__file__).parent))
from _kill_blocks import SETTINGS, problem  # noqa: E402


def run_worker(out, point="none", n=0, resume=False):
    """The worker's exit code and its printed passes (None when killed)."""
    args = [sys.executable, WORKER, str(out), point, str(n)] + (["--resume"] if resume else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    lines = done.stdout.strip().splitlines()
    return done.returncode, (json.loads(lines[-1]) if done.returncode == 0 else None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "blocks.h5"
    code, passes = run_worker(path)
    assert code == 0
    return path, passes


def assert_same_blocks(path, reference_path):
    got, ref = read_block_spectra(path), read_block_spectra(reference_path)
    assert got.names == ref.names
    for name in ref.names:
        a, b = got[name], ref[name]
        for key in ("eigenvalues", "residual_bounds", "alphas", "betas", "eigenvectors"):
            np.testing.assert_array_equal(getattr(a.eigs, key), getattr(b.eigs, key))
        for key in ("nodes", "weights", "alphas", "betas"):
            np.testing.assert_array_equal(getattr(a.density, key), getattr(b.density, key))


@pytest.mark.parametrize("point, n", [
    ("pass", 5),      # every solver running
    ("pass", 10),     # the probes finished at pass 8, the eigensolvers run on
    ("commit", 27),   # within pass 4: some solvers committed it, the others not yet
])
def test_a_killed_blockwise_run_resumes_bit_for_bit(tmp_path, reference, point, n):
    reference_path, uninterrupted = reference
    path = tmp_path / "blocks.h5"
    code, _ = run_worker(path, point, n)
    assert code == -9  # SIGKILL
    with open_spectrum(path) as f:  # the states are there, no result yet
        assert not f["blocks/attn.q/eigs"].attrs["complete"]
        counts = {int(f[f"blocks/{b}/{run}/state/commit"][0])
                  for b in f["blocks"] for run in ("eigs", "slq")}
    # a kill between passes leaves every solver at the same pass (the probes at their last,
    # 8, after it); a kill within pass 4 leaves some solvers one commit ahead
    assert counts == {"pass": {5: {5}, 10: {8, 10}}, "commit": {27: {3, 4}}}[point][n]
    if point == "pass" and n == 5:  # another setting is refused, naming it, file untouched
        model, H = problem()
        with pytest.raises(ResumeError, match="num_steps=8, not 9"):
            block_spectra(H, preset_blocks(model, "mha"), out=path, resume=True,
                          **{**SETTINGS, "num_steps": 9})
    code, resumed = run_worker(path, resume=True)
    assert code == 0
    assert_same_blocks(path, reference_path)
    total = resumed["resumed_from"] + resumed["num_passes"]
    assert total == uninterrupted["num_passes"]
    if point == "pass":  # killed between two passes: nothing computed is lost
        assert resumed["resumed_from"] == n
    with h5py.File(path, "r") as f:  # finished: the states dropped
        assert not any("state" in f[f"blocks/{b}/eigs"] for b in f["blocks"])
