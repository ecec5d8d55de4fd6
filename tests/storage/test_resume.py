"""Out-of-core bases, committed state, kill -9 and resume, readers following a writer."""

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import spectrum_matrix
from lanczos_hessian import lanczos_eigsh
from lanczos_hessian.linalg.hooks import Hooks
from lanczos_hessian.storage.disk_basis import (
    HDF5Basis,
    MirroredBasis,
    _runs,
    create_basis_dataset,
)
from lanczos_hessian.linalg.basis import (
    TensorBasis,
    choose_location,
    copy_vectors,
    parse_bytes,
)
from lanczos_hessian.errors import OutputPathError
from lanczos_hessian.storage.hdf5 import read_file

from cli_runs import (  # noqa: F401 (the names other tests import from here too)
    COMMAND,
    PROBLEMS,
    SLQ_COMMAND,
    TIMEOUT,
    assert_continued,
    assert_same_slq,
    committed_steps,
    problem_env,
    run_cli,
    run_in_process,
    run_until,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert run_in_process(COMMAND, ["--out", str(path)]) == 0  # uninterrupted, in-process
    return read_file(path)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path):
    path = tmp_path / "run.h5"
    total = len(reference["eigs"].steps["alpha"])
    assert reference["eigs"].attrs["num_restarts"] >= 3  # kills fall before and after restarts
    args = ["--out", str(path)]
    for i, target in enumerate((5, total // 2, total - 3)):
        seen, code = run_until(path, args if i == 0 else args + ["--resume"], target)
        assert code == -signal.SIGKILL, f"run ended by itself (code {code}) before step {target}"
        assert_continued(seen, target)
    done = run_cli(args + ["--resume"])
    assert done.returncode == 0, done.stderr
    resumed, ref = read_file(path)["eigs"], reference["eigs"]
    np.testing.assert_array_equal(resumed["eigenvalues"], ref["eigenvalues"])
    np.testing.assert_array_equal(resumed["residual_bounds"], ref["residual_bounds"])
    np.testing.assert_array_equal(resumed.steps["alpha"], ref.steps["alpha"])
    np.testing.assert_array_equal(resumed.steps["ritz_values"], ref.steps["ritz_values"])
    assert resumed.attrs["num_matvecs"] == ref.attrs["num_matvecs"]


BLOCK_COMMAND = COMMAND[:-1] + ["--block-size", "3", "--ncv", "21", "--no-progress"]


@pytest.mark.slow
def test_killed_block_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Block Lanczos (3 vectors per pass) killed twice, before and after restarts, resumes to
    the uninterrupted result bit for bit."""
    ref_path, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    assert run_in_process(BLOCK_COMMAND, ["--out", str(ref_path)]) == 0  # in-process
    reference = read_file(ref_path)["eigs"]
    total = len(reference.steps["alpha"])
    assert reference.attrs["num_restarts"] >= 2 and reference.attrs["block_size"] == 3
    args = ["--out", str(path)]
    for i, target in enumerate((3, total // 2)):
        seen, code = run_until(path, args if i == 0 else args + ["--resume"], target,
                               BLOCK_COMMAND)
        assert code == -signal.SIGKILL, f"run ended by itself (code {code}) before step {target}"
        assert_continued(seen, target)
    done = subprocess.run(BLOCK_COMMAND + args + ["--resume"], env=problem_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    resumed = read_file(path)["eigs"]
    np.testing.assert_array_equal(resumed["eigenvalues"], reference["eigenvalues"])
    np.testing.assert_array_equal(resumed["residual_bounds"], reference["residual_bounds"])
    np.testing.assert_array_equal(resumed.steps["ritz_values"], reference.steps["ritz_values"])
    assert resumed.attrs["num_matvecs"] == reference.attrs["num_matvecs"]


@pytest.mark.slow
def test_killed_slq_run_resumes_in_both_phases(tmp_path):
    env = dict(os.environ, PYTHONPATH=PROBLEMS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ref_path, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    assert run_in_process(SLQ_COMMAND, ["--out", str(ref_path)]) == 0  # in-process
    args = ["--out", str(path)]
    _, code = run_until(path, args, 6, SLQ_COMMAND, "eigs")  # in the deflation phase
    assert code == -signal.SIGKILL
    _, code = run_until(path, args + ["--resume"], 8, SLQ_COMMAND, "slq")  # in the SLQ phase
    assert code == -signal.SIGKILL
    done = subprocess.run(SLQ_COMMAND + args + ["--resume"], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert_same_slq(path, ref_path)


@pytest.mark.slow
def test_analyze_reads_a_running_job(tmp_path):
    path = tmp_path / "live.h5"
    seen, _ = run_until(path, ["--out", str(path)], 8)
    assert seen[-1] >= 8
    done = subprocess.run([sys.executable, "-m", "lanczos_hessian", "analyze", str(path)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "CUT OFF" in done.stdout


@pytest.mark.slow
def test_resume_refuses_a_different_run(reference, tmp_path):
    path = tmp_path / "run.h5"
    run_until(path, ["--out", str(path)], 4)
    other_k = run_cli(["--out", str(path), "--resume", "--k", "8"])
    assert other_k.returncode == 2 and "different run" in other_k.stderr
    assert "k: file has 6, this run has 8" in other_k.stderr
    other_data = subprocess.run(
        [a if a != "slow_mlp:build" else "slow_mlp:build_other_data" for a in COMMAND]
        + ["--out", str(path), "--resume"],
        env=dict(os.environ, PYTHONPATH=PROBLEMS), capture_output=True, text=True,
        timeout=TIMEOUT)
    assert other_data.returncode == 2 and "data source yielded different" in other_data.stderr
    assert run_cli(["--out", str(tmp_path / "none.h5"), "--resume"]).returncode == 2


@pytest.mark.parametrize("location", ["device", "host", "disk", "mirrored"])
def test_every_basis_store_gives_the_same_numbers(location, tmp_path):
    rng = np.random.default_rng(0)
    A = spectrum_matrix(np.concatenate([rng.uniform(-1, 1, 150), [3, 4, 5, 6.0]]), seed=0)
    reference = lanczos_eigsh(A, k=4, which="LA", ncv=10, tol=1e-10, rng=0)
    n, capacity = A.shape[0], 10
    handle = h5py.File(tmp_path / "basis.h5", "w")
    basis = {
        "device": lambda: TensorBasis(n, capacity),
        "host": lambda: TensorBasis(n, capacity, device="cpu"),
        "disk": lambda: HDF5Basis(create_basis_dataset(handle, "Q", n, capacity, 64), capacity,
                                  block_rows=64),
        "mirrored": lambda: MirroredBasis(TensorBasis(n, capacity), HDF5Basis(
            create_basis_dataset(handle, "Q", n, capacity, 64), capacity, block_rows=64)),
    }[location]()
    result = lanczos_eigsh(A, k=4, which="LA", ncv=10, tol=1e-10, rng=0,
                           hooks=Hooks(bases=lambda i, dim, capacity: basis))
    assert result.num_restarts > 0
    np.testing.assert_allclose(result.eigenvalues, reference.eigenvalues, rtol=1e-13)
    signs = np.sign((result.eigenvectors * reference.eigenvectors).sum(axis=0))  # eigh's choice
    np.testing.assert_allclose(result.eigenvectors * signs, reference.eigenvectors, atol=1e-10)
    assert result.num_matvecs == reference.num_matvecs


def test_mirror_holds_the_bits_of_the_memory_basis_after_a_restart(tmp_path):
    """A resume reloads the mirror, so it must equal the in-memory basis exactly."""
    n, capacity = 300, 8
    with h5py.File(tmp_path / "m.h5", "w") as handle:
        basis = MirroredBasis(TensorBasis(n, capacity), HDF5Basis(
            create_basis_dataset(handle, "Q", n, capacity, 64), capacity, block_rows=64))
        Q, _ = torch.linalg.qr(torch.randn(n, 6, dtype=torch.float64))
        for j in range(6):
            basis.append(Q[:, j])
        assert basis.primary.rows[: basis.size].is_contiguous()  # one vector per row
        basis.restart(np.linalg.qr(np.random.default_rng(1).standard_normal((6, 3)))[0])
        memory = basis.primary.Q[:, : basis.size]
        disk = basis.mirror.combine(np.eye(basis.size))
        assert torch.equal(memory, disk)


def test_disk_basis_streams_and_keeps_committed_columns(tmp_path):
    n, capacity = 1000, 6
    with h5py.File(tmp_path / "b.h5", "w") as handle:
        disk = HDF5Basis(create_basis_dataset(handle, "Q", n, capacity, 128), capacity,
                         block_rows=128)
        Q, _ = torch.linalg.qr(torch.randn(n, 5, dtype=torch.float64))
        for j in range(5):
            disk.append(Q[:, j])
        w = torch.randn(n, dtype=torch.float64)
        w_perp, h = disk.orthogonalize(w)
        assert float((Q.T @ w_perp).abs().max()) < 1e-14
        np.testing.assert_allclose(h, Q.T @ w, rtol=1e-12)
        before = list(disk.column_map)
        S = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 3)))[0]
        disk.restart(S)
        assert not set(disk.column_map) & set(before)  # new columns, old ones untouched
        np.testing.assert_allclose(disk.combine(np.eye(3)), Q @ torch.from_numpy(S), atol=1e-13)
        assert disk.bytes_read > 0 and disk.bytes_written > 0
        # appends wrap into freed slots: the live columns become several runs of slots
        memory = TensorBasis(n, capacity)
        copy_vectors(disk, memory)
        extra, _ = torch.linalg.qr(torch.randn(n, 2, dtype=torch.float64))
        for j in range(2):
            disk.append(extra[:, j])
            memory.append(extra[:, j])
        assert len(_runs(disk.column_map)) > 1
        w = torch.randn(n, dtype=torch.float64)
        np.testing.assert_allclose(disk.project(w), memory.project(w), rtol=1e-13)
        T = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 4)))[0]
        disk.restart(T)
        memory.restart(T)
        np.testing.assert_allclose(disk.combine(np.eye(4)), memory.combine(np.eye(4)),
                                   atol=1e-14)


def test_disk_basis_of_an_older_layout_is_refused(tmp_path):
    with h5py.File(tmp_path / "old.h5", "w") as handle:
        old = handle.create_dataset("Q", shape=(100, 12), dtype="f8", chunks=(64, 1))
        with pytest.raises(ValueError, match="older version"):
            HDF5Basis(old, 6)


def test_memory_budget_and_disk_space_errors(tmp_path, monkeypatch):
    assert choose_location(10**6, 20, None) == "device"
    assert choose_location(10**6, 20, "1GiB") == "device"
    assert choose_location(10**6, 20, "100MB") == "disk"
    assert choose_location(10**6, 20, "100MB", "cuda", host_budget="1GiB") == "host"
    assert parse_bytes("6GiB") == 6 * 2**30 and parse_bytes(1e3) == 1000
    with pytest.raises(MemoryError, match="too small for the working vectors"):
        choose_location(10**6, 20, "1MB")
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    from lanczos_hessian.storage.hdf5 import check_disk_space

    with pytest.raises(OutputPathError, match=r"not enough disk space .*: 320.4 MiB needed "
                       r"\(20 columns .*\), 1000 bytes free"):
        check_disk_space(tmp_path / "x.h5", 10**6, 20)


def test_a_rank_one_commit_ahead_rewinds_to_the_agreed_state(tmp_path):
    """Sharded runs resume from the last state every rank committed: a rank one commit
    ahead goes back to its other slot, and its next commit takes the count the others'
    take (so that a second kill finds the ranks' counts in step again)."""
    from lanczos_hessian.storage.checkpoint import ResumeError, RunCheckpoint
    from lanczos_hessian.storage.hdf5 import SpectrumWriter

    with SpectrumWriter(tmp_path / "run.h5", {}) as writer:
        store = RunCheckpoint(writer, "eigs", 5, 1, 0)
        store.declare({"k": 1})
        for i in range(1, 4):
            store.save({"step": np.array(i)}, [torch.full((5,), float(i))])
        assert store.load(2)[1]["step"] == 2 and store.load(2)[2][0, 0] == 2.0
        with pytest.raises(ResumeError, match="state 1 of the eigs run is gone"):
            store.load(1)
        with pytest.raises(ResumeError, match="cannot go back from state 3 to 1"):
            store.rewind(1)
        store.rewind(2)
        assert store.count == 2 and store.load()[1]["step"] == 2
        assert store.save({"step": np.array(7)}, [torch.zeros(5)]) == 3
        assert store.load()[1]["step"] == 7 and store.load(2)[1]["step"] == 2
        store.rewind(0)
        assert store.count == 0


def test_ranks_resume_from_the_last_state_all_of_them_committed(monkeypatch):
    """The agreement of sharded ranks on resume, in one process (the 2-rank kill scenarios
    above are slow): the minimum over ranks of their committed counts, unless the ranks are
    more than one commit apart; a failing rank closes the writer and raises."""
    from lanczos_hessian.errors import InvalidDataError
    from lanczos_hessian.storage import agreement
    from lanczos_hessian.storage.checkpoint import ResumeError

    class Writer:
        closed = False

        def close(self):
            self.closed = True

    assert agreement.agree_on_states([3, 1], None, None, "cpu") == [3, 1]  # one rank
    writer = Writer()
    with pytest.raises(InvalidDataError, match="unreadable"):
        agreement.agree_on_states([3, 1], InvalidDataError("unreadable"), writer, "cpu")
    assert writer.closed
    assert agreement.read_before_main_reopens(lambda: 1 / 0, default="main") == "main"
    other = []  # rank 1's row of the gathered table
    monkeypatch.setattr(agreement, "gather_rows", lambda counts, error, **kwargs: torch.tensor(
        [counts, other], dtype=torch.float64))
    other[:] = [7, 1]  # rank 1 killed before its 8th commit
    assert agreement.agree_on_states([8, 1], None, Writer(), "cpu") == [7, 1]
    other[:] = [6, 0]
    writer = Writer()
    with pytest.raises(ResumeError, match="more than one commit apart"):
        agreement.agree_on_states([8, 1], None, writer, "cpu")
    assert writer.closed


class Preempted(Exception):
    """Stands in for a kill: raised inside a pass, it ends the run before its next commit."""


@pytest.mark.parametrize("command, phases", [(COMMAND, ["eigs"]), (BLOCK_COMMAND, ["eigs"]),
                                             (SLQ_COMMAND, ["eigs", "slq"])],
                         ids=["eigs", "eigs-block", "slq"])
def test_a_run_stopped_in_process_resumes_to_the_uninterrupted_result(command, phases,
                                                                      tmp_path, monkeypatch,
                                                                      capsys):
    """The fast tier's resume check (the kill -9 and torchrun scenarios above are slow): the
    problem of those scenarios, stopped by an exception in a pass (eigs: half way; SLQ: in
    its deflation phase, then in its SLQ phase), resumes in the same process to the numbers
    of the uninterrupted run, bit for bit."""
    from lanczos_hessian.cli import main

    monkeypatch.syspath_prepend(PROBLEMS)
    import slow_mlp

    calls = {"count": 0, "stop_at": None}

    def forward(self, x):  # slow_mlp's model without the sleep, counting its passes
        calls["count"] += 1
        if calls["count"] == calls["stop_at"]:
            raise Preempted
        return self.net(x)

    monkeypatch.setattr(slow_mlp.SlowMLP, "forward", forward)
    ref_path, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    args = command[3:]  # the same arguments, to cli.main in this process
    assert main(args + ["--out", str(ref_path)]) == 0
    total = calls["count"]
    for i, group in enumerate(phases):  # stop at 1/2, or at 1/4 then 1/2, of the forwards
        calls.update(count=0, stop_at=total * (i + 1) // (2 * len(phases)))
        with pytest.raises(Preempted):
            main(args + ["--out", str(path)] + (["--resume"] if i else []))
        assert 0 < committed_steps(path, group) < committed_steps(ref_path, group), group
    calls.update(count=0, stop_at=None)
    assert main(args + ["--out", str(path), "--resume"]) == 0
    assert calls["count"] < total  # continued, not started afresh
    if "slq" in phases:
        assert_same_slq(path, ref_path)
    else:
        resumed, ref = read_file(path)["eigs"], read_file(ref_path)["eigs"]
        assert ref.attrs["num_restarts"] >= 2
        np.testing.assert_array_equal(resumed["eigenvalues"], ref["eigenvalues"])
        np.testing.assert_array_equal(resumed["residual_bounds"], ref["residual_bounds"])
        np.testing.assert_array_equal(resumed.steps["alpha"], ref.steps["alpha"])
        assert resumed.attrs["num_matvecs"] == ref.attrs["num_matvecs"]
