"""The operator contract: the run and its files see an operator only through
:mod:`lanczos_hessian.contract`, so a plain scipy ``LinearOperator`` runs with a file, is
killed and resumes to the uninterrupted numbers."""

import ast
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.sparse.linalg import aslinearoperator

from lanczos_hessian import contract, run
from lanczos_hessian.errors import ResumeError
from lanczos_hessian.storage.hdf5 import read_file

SCRIPT = str(Path(__file__).parents[1] / "_linop_run.py")
PACKAGE = Path(__file__).parents[2] / "lanczos_hessian"


def launch(kind, out, kill_at, *flags):
    return subprocess.run([sys.executable, SCRIPT, kind, str(out), str(kill_at), *flags],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("kind, kill_at, flags", [
    ("eigs", 9, ()), ("eigs", 23, ("--identity",)), ("slq", 12, ()),
])
def test_a_plain_linear_operator_is_killed_and_resumes_bit_identically(tmp_path, kind,
                                                                      kill_at, flags):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from _linop_run import run_once

    reference, path = tmp_path / "reference.h5", tmp_path / "run.h5"
    run_once(kind, reference, 0, *flags)  # uninterrupted, in this process: one launch fewer
    killed = launch(kind, path, kill_at, *flags)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = launch(kind, path, 0, "--resume", *flags)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_array_equal(np.load(f"{path}.npy"), np.load(f"{reference}.npy"))
    stored, ref = read_file(path)[kind], read_file(reference)[kind]
    assert stored.attrs["num_passes"] == ref.attrs["num_passes"]
    with h5py.File(path, "r") as f:
        assert f.attrs["operator"] == ("Killed" if not flags else "test-matrix")
        assert int(f.attrs["num_params"]) == 60


class Preempted(Exception):
    """Stands in for a kill: raised inside a product, it ends the run before its commit."""


@pytest.mark.parametrize("kind", ["eigs", "slq"])
def test_a_plain_linear_operator_stopped_in_process_resumes_bit_identically(tmp_path, kind):
    """The fast tier's check of the above: stopped by an exception at its 9th product, the
    run resumes (a new operator, as a new process would build) to the uninterrupted numbers."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from _linop_run import Killed, matrix

    class Stopped(Killed):
        def _matmat(self, X):
            if self.calls + 1 == self.kill_at:
                raise Preempted
            return super()._matmat(X)

    def call(op, out, **kw):
        if kind == "eigs":
            return run.eigs(op, out, k=4, ncv=10, tol=1e-10, seed=3, progress=False,
                            **kw).eigenvalues
        return run.slq(op, out, num_probes=3, num_steps=12, k_top=2, seed=3,
                       progress=False, **kw).slq.nodes

    whole = Stopped(matrix(), 0)
    reference = call(whole, tmp_path / "ref.h5")
    with pytest.raises(Preempted):
        call(Stopped(matrix(), 9), tmp_path / "run.h5")
    resumed = Stopped(matrix(), 0)
    np.testing.assert_array_equal(call(resumed, tmp_path / "run.h5", resume=True), reference)
    assert resumed.calls == whole.calls - 8  # continued from its 8 committed products


def test_an_operator_identity_is_what_a_resume_checks(tmp_path):
    """A fingerprint the operator offers is a setting of the run: another matrix under the
    same fingerprint name is refused."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from _linop_run import Killed, matrix

    out = tmp_path / "run.h5"
    run.eigs(Killed(matrix(), 0, True), out, k=2, ncv=8, seed=0, progress=False,
             keep_state=True)
    other = Killed(matrix() * 2.0, 0, True)
    with pytest.raises(ResumeError, match="model: file has"):
        run.eigs(other, out, k=2, ncv=8, seed=0, progress=False, resume=True)


def test_the_contract_helpers():
    A = aslinearoperator(np.diag(np.arange(1.0, 8.0)))
    assert isinstance(A, contract.SpectralOperator) is False  # no identity(), no partition()
    assert contract.identity_of(A) == {"provenance": {"operator": "MatrixLinearOperator",
                                                      "num_params": 7, "dtype": "float64"},
                                       "fingerprints": {}}
    assert contract.partition_of(A, 2) == [0, 3, 7]
    assert contract.device_of(A).type == "cpu"
    assert contract.data_fingerprint_of(A).size == 0

    class Bad:
        shape = (4, 4)

        def partition(self, world_size):
            return [0, 3, 2, 4][: world_size + 1]

    with pytest.raises(ValueError, match="non-decreasing row offsets"):
        contract.partition_of(Bad(), 3)


def test_storage_never_reads_an_attribute_of_an_operator():
    """No storage module names the operator or its members (they take plain data)."""
    members = {"flat_parameters", "data_fingerprint", "expect_data_fingerprint", "curvature",
               "num_samples", "model_dtype", "allow_tf32", "loss_fn", "space"}
    for path in sorted((PACKAGE / "storage").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert node.value.id != "op", f"{path.name}: op.{node.attr}"
            if isinstance(node, ast.Attribute) and node.attr in members:
                assert False, f"{path.name}:{node.lineno} reads .{node.attr}"
