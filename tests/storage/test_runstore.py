"""Several named runs in one file (:class:`~lanczos_hessian.storage.runstore.RunStore`), each
with its own resume state, dropped when that run finishes; adaptive SLQ with a file, stopped
and resumed to the same numbers, from Python and from the command line."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from lanczos_hessian import read_spectrum, run
from lanczos_hessian.errors import OutputPathError
from lanczos_hessian.storage.hdf5 import read_file
from lanczos_hessian.storage.runstore import RunStore, holds_state

sys.path.insert(0, str(Path(__file__).parents[1]))
from _linop_run import Killed, matrix  # noqa: E402
from cli_runs import (PROBLEMS, TIMEOUT, committed_steps, problem_env,  # noqa: E402
                      run_in_process, run_until)


class Preempted(Exception):
    """Stands in for a kill: raised inside a product, it ends the run before its commit."""


class Stopped(Killed):
    def _matmat(self, X):
        if self.calls + 1 == self.kill_at:
            raise Preempted
        return super()._matmat(X)


def block_matrix():
    return matrix(30)


def test_two_runs_in_one_file_the_first_finishes_while_the_second_stays_resumable(tmp_path):
    out = tmp_path / "runs.h5"
    block = "blocks/fc1/eigs"
    reference = run.eigs(Stopped(block_matrix(), 0), tmp_path / "ref.h5", k=3, ncv=9,
                         tol=1e-10, seed=1, progress=False)
    with pytest.raises(Preempted):  # the block's run is cut off at its 10th product
        run.eigs(Stopped(block_matrix(), 10), out, k=3, ncv=9, tol=1e-10, seed=1,
                 progress=False, name=block)
    whole = run.eigs(Stopped(matrix(), 0), out, k=4, ncv=10, tol=1e-10, seed=3,
                     progress=False, append=True)  # the model's run, added and finished
    with h5py.File(out, "r") as f:
        assert f["eigs"].attrs["complete"] and "state" not in f["eigs"]  # dropped: finished
        assert "state" in f[block] and not f[block].attrs["complete"]  # still resumable
        assert int(f[f"{block}/state/commit"][0]) == 9
    resumed = run.eigs(Stopped(block_matrix(), 0), out, k=3, ncv=9, tol=1e-10, seed=1,
                       progress=False, name=block, resume=True)
    np.testing.assert_array_equal(resumed.eigenvalues, reference.eigenvalues)
    assert resumed.num_passes == reference.num_passes
    with h5py.File(out, "r") as f:
        assert not holds_state(f) and f[block].attrs["complete"]
        np.testing.assert_array_equal(f["eigs/eigenvalues"][()], whole.eigenvalues)
    with pytest.raises(OutputPathError, match="already holds a run named 'eigs'"):
        run.eigs(Stopped(matrix(), 0), out, k=2, progress=False, append=True)


def test_a_store_drops_one_runs_state_and_compacts_when_none_is_left(tmp_path):
    path = tmp_path / "store.h5"
    with RunStore.create(path, {"seed": 0}) as store:
        for name in ("step_0/eigs", "step_1/eigs"):
            store.declare(name, {"k": 2})
            store.checkpoint(name, 1000, 1, 50).declare({"k": 2})
    size = path.stat().st_size
    with RunStore.reopen(path) as store:
        store.drop_state("step_0/eigs")
    with h5py.File(path, "r") as f:
        assert "state" not in f["step_0/eigs"] and "state" in f["step_1/eigs"]
    with RunStore.reopen(path) as store:
        store.drop_state("step_1/eigs")
    assert path.stat().st_size < size / 2  # rewritten without the space the states held
    assert set(read_file(path)) == {"attrs", "step_0", "step_1"}


@pytest.mark.parametrize("where", [pytest.param("deflation", marks=pytest.mark.slow),
                                   "second round"])
def test_adaptive_slq_with_a_file_stops_and_resumes_bit_identically(tmp_path, where):
    """Stopped in its deflation (5th product) or two steps into its second round of probes;
    a file cut off there reads back round by round."""
    options = dict(num_probes=3, num_steps=6, k_top=2, seed=4, progress=False,
                   target_error=1e-9, max_probes=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the target is out of reach: all 9 probes run
        _, reference = run.slq(Stopped(matrix(), 0), tmp_path / "ref.h5", **options)
        stop_at = 5 if where == "deflation" else reference.deflation_passes + 8
        with pytest.raises(Preempted):
            run.slq(Stopped(matrix(), stop_at), tmp_path / "run.h5", **options)
        _, resumed = run.slq(Stopped(matrix(), 0), tmp_path / "run.h5", resume=True,
                             **options)
    assert reference.num_probes == 9 and reference.target_error == 1e-9
    np.testing.assert_array_equal(resumed.nodes, reference.nodes)
    np.testing.assert_array_equal(resumed.weights, reference.weights)
    assert resumed.num_passes == reference.num_passes
    stored = read_file(tmp_path / "run.h5")["slq"]
    np.testing.assert_array_equal(stored["nodes"], reference.nodes)
    assert len(stored.steps["alpha"]) == 18  # three rounds of six steps, one record each
    np.testing.assert_array_equal(stored.steps["round"], np.repeat([0, 1, 2], 6))
    if where == "second round":
        with pytest.raises(Preempted):
            run.slq(Stopped(matrix(), stop_at), tmp_path / "cut.h5", **options)
        cut = read_spectrum(tmp_path / "cut.h5").quadrature
        assert not cut.complete and cut.nodes.shape[0] == 6  # two rounds of three probes
        np.testing.assert_allclose(cut.nodes[:3], reference.nodes[:3], rtol=1e-12)
    _, again = run.slq(Stopped(matrix(), 0), tmp_path / "run.h5", resume=True, **options)
    np.testing.assert_array_equal(again.nodes, reference.nodes)  # the stored result


SLQ_ADAPTIVE = [sys.executable, "-m", "lanczos_hessian", "slq", "--problem", "slow_mlp:build",
                "--num-probes", "3", "--num-steps", "8", "--target-error", "1.0",
                "--confidence", "0.9", "--batch-size", "30", "--strategy",
                "reverse-over-reverse", "--no-progress"]


@pytest.mark.slow
def test_adaptive_slq_from_the_command_line_is_killed_and_resumes_bit_identically(tmp_path):
    ref_path, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    assert run_in_process(SLQ_ADAPTIVE, ["--out", str(ref_path)]) == 0  # in-process
    total = committed_steps(ref_path, "slq")
    assert total >= 16, total  # at least two rounds: the kill falls in the second
    _, code = run_until(path, ["--out", str(path)], 11, SLQ_ADAPTIVE, "slq")
    assert code == -signal.SIGKILL
    done = subprocess.run(SLQ_ADAPTIVE + ["--out", str(path), "--resume"], env=problem_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    ref, resumed = read_file(ref_path)["slq"], read_file(path)["slq"]
    np.testing.assert_array_equal(resumed["nodes"], ref["nodes"])
    np.testing.assert_array_equal(resumed["weights"], ref["weights"])
    assert resumed.attrs["num_probes"] == ref.attrs["num_probes"] >= 6
    assert resumed.attrs["target_error"] == 1.0 and resumed.attrs["confidence"] == 0.9
    assert os.path.exists(path) and PROBLEMS


def test_a_finished_run_with_its_state_kept_resumes_without_stepping(tmp_path):
    out, options = tmp_path / "kept.h5", dict(k=3, ncv=9, tol=1e-10, seed=1, progress=False,
                                              keep_state=True)
    first = run.eigs(Stopped(matrix(), 0), out, **options)
    op = Stopped(matrix(), 0)
    again = run.eigs(op, out, resume=True, **options)
    np.testing.assert_array_equal(again.eigenvalues, first.eigenvalues)
    assert op.calls == 1  # the measured residuals' one product, no Lanczos step


@pytest.mark.slow
def test_the_command_line_refuses_a_bad_target_before_any_work(capsys, tmp_path):
    from lanczos_hessian.cli import main

    out = tmp_path / "never.h5"
    for flag, value, name in (("--target-error", "-1", "target_error"),
                              ("--confidence", "1.5", "confidence")):
        code = main(["slq", "--problem", "clusters-mlp", "--num-steps", "4", "--target-error", "0.1", flag, value,
                     "--out", str(out), "--no-progress"])
        assert code == 2 and f"{name} must be" in capsys.readouterr().err
        assert not out.exists()
