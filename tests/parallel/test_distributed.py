"""Data-parallel operators: 2 gloo processes on the CPU against one process.

Each run launches ``tests/_dist_worker.py`` twice (``RANK`` 0 and 1, ``WORLD_SIZE=2``,
``MASTER_ADDR=127.0.0.1`` and a free port), or the CLI under ``torch.distributed.run``; every
wait has a timeout, so that a hang fails the test instead of blocking CI. The data set has
N = 37 samples in batches of 5 (18 + 19 samples on the two ranks, ragged batches), as a
tensor pair and as a list of batches; the models are float64, so the distributed results
must equal the single-process ones to rounding.

Everything that launches processes is in the slow tier (the full suite, which CI runs); the
fast tier keeps the single-process helpers (sharding, timeouts, launch errors).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import _dist_worker as worker
from lanczos_hessian.parallel.distributed import (
    TIMEOUT_ENV, DistributedError, RankFailedError, all_reduce_or_raise, current_world,
    gather_rows, init_from_env,
)
from lanczos_hessian.curvature.data import DataSource
from lanczos_hessian.errors import InvalidDataError, LanczosHessianError

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120  # per launch: a hang fails the test after this long
RTOL = 1e-12

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


# ------------------------------------------------------------------ launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra_path=(), timeout_s=60, **variables) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    paths = [str(p) for p in extra_path] + [str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               **{TIMEOUT_ENV: str(timeout_s)}, **{k: str(v) for k, v in variables.items()})
    return env


def _kill(procs):
    """Kill each process with its children (each runs in a session of its own)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait()


def _wait_all(procs, logs, what):
    """Wait for every process until one shared deadline; kill them all on a hang."""
    deadline = time.monotonic() + WAIT_S
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        _kill(procs)
        tails = "\n".join(Path(log).read_text()[-2000:] for log in logs)
        pytest.fail(f"{what} did not finish within {WAIT_S} s (a hang):\n{tails}")
    return [p.returncode for p in procs]


def start(scenario: str, outdir: Path, timeout_s=60) -> tuple:
    """Start ``scenario`` of the worker on 2 ranks (gloo, 127.0.0.1, a free port)."""
    port = _free_port()
    logs = [outdir / f"{scenario}-log{r}.txt" for r in range(2)]
    procs = []
    for rank, log in enumerate(logs):
        env = _env(timeout_s=timeout_s, MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   WORLD_SIZE=2, RANK=rank, LOCAL_RANK=rank)
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "_dist_worker.py"), scenario,
                 str(outdir)], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True))
    return scenario, outdir, procs, logs


def finish(run) -> list:
    """Wait (with a timeout) for a run of :func:`start`; return each rank's pickled result."""
    scenario, outdir, procs, logs = run
    codes = _wait_all(procs, logs, f"the 2-rank run {scenario!r}")
    results = []
    for rank, log in enumerate(logs):
        path = outdir / f"{scenario}-rank{rank}.pkl"
        assert path.exists(), f"rank {rank} wrote no result (exit {codes[rank]}):\n" \
                              f"{log.read_text()[-3000:]}"
        result = pickle.loads(path.read_bytes())
        assert result["ok"], f"rank {rank} failed:\n{result.get('traceback')}"
        results.append(result)
    return results


def launch(scenario: str, outdir: Path, timeout_s=60) -> list:
    return finish(start(scenario, outdir, timeout_s))


@contextmanager
def _one_thread():
    """References in this process at one thread, as each worker runs (2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def numerics(tmp_path_factory):
    """The 2-rank results and the same computations in this (single) process."""
    assert current_world().size == 1
    dist_dir, ref_dir = tmp_path_factory.mktemp("numerics"), tmp_path_factory.mktemp("single")
    run = start("numerics", dist_dir)
    try:
        with _one_thread():  # while the 2 ranks run
            reference = worker.numerics(ref_dir, 0)
    except BaseException:
        _kill(run[2])
        raise
    ranks = finish(run)
    return {"ranks": ranks, "reference": reference, "dist_dir": dist_dir, "ref_dir": ref_dir}


def _relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


# ------------------------------------------------------------------ numbers


@pytest.mark.slow  # the numerics fixture: 2 gloo processes, about 8 s to start and run
@pytest.mark.parametrize("case", worker.PRODUCT_CASES, ids="-".join)
def test_products_equal_single_process(numerics, case):
    """H, G and R products (tensor pair and list of batches, mean and sum) over 2 ranks."""
    expected = numerics["reference"]["products"][case]
    for rank, result in enumerate(numerics["ranks"]):
        err = _relative_error(result["products"][case], expected)
        assert err <= RTOL, f"rank {rank}, {case}: relative error {err:.1e}"
        assert result["num_samples"][case] == worker.N  # the whole data set, once


@pytest.mark.slow  # the numerics fixture: 2 gloo processes, about 8 s to start and run
def test_every_rank_holds_the_same_numbers(numerics):
    """The all-reduced products, hence Lanczos and SLQ, are bitwise identical on all ranks."""
    zero, one = numerics["ranks"]
    for case in worker.PRODUCT_CASES:
        assert np.array_equal(zero["products"][case], one["products"][case])
    for group in ("eigs", "slq"):
        for name, value in zero[group].items():
            assert np.array_equal(value, one[group][name], equal_nan=True), (group, name)


@pytest.mark.slow  # the numerics fixture: 2 gloo processes, about 8 s to start and run
def test_lanczos_eigenpairs_equal_single_process(numerics):
    got, ref = numerics["ranks"][0]["eigs"], numerics["reference"]["eigs"]
    assert got["num_passes"] == ref["num_passes"]
    assert _relative_error(got["eigenvalues"], ref["eigenvalues"]) <= 1e-12
    Y, Y_ref = got["eigenvectors"], ref["eigenvectors"]
    signs = np.sign(np.sum(Y * Y_ref, axis=0))
    assert _relative_error(Y * signs, Y_ref) <= 1e-10
    assert np.all(got["residuals"] <= 1e-9 * np.abs(ref["eigenvalues"]).max())


@pytest.mark.slow  # the numerics fixture: 2 gloo processes, about 8 s to start and run
def test_slq_nodes_and_weights_equal_single_process(numerics):
    got, ref = numerics["ranks"][0]["slq"], numerics["reference"]["slq"]
    assert got["num_passes"] == ref["num_passes"] == worker.NUM_STEPS  # lockstep probes
    assert _relative_error(got["nodes"], ref["nodes"]) <= 1e-10
    assert np.abs(got["weights"] - ref["weights"]).max() <= 1e-10


def _datasets(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
        out["/attrs"] = dict(f.attrs)
    return out


@pytest.mark.slow  # the numerics fixture: 2 gloo processes, about 8 s to start and run
@pytest.mark.parametrize("name", ["eigs.h5", "slq.h5"])
def test_rank0_alone_writes_the_job_file_and_it_matches(numerics, name):
    dist_dir, ref_dir = numerics["dist_dir"], numerics["ref_dir"]
    files = sorted(p.name for p in dist_dir.glob("*.h5"))
    assert files == ["eigs.h5", "slq.h5"]  # one file per job, written once (rank 0)
    got, ref = _datasets(dist_dir / name), _datasets(ref_dir / name)
    assert got["/attrs"]["world_size"] == 2 and ref["/attrs"]["world_size"] == 1
    arrays = sorted(k for k in ref if k != "/attrs")
    assert sorted(k for k in got if k != "/attrs") == arrays and arrays
    # residuals and bounds are rounding-level numbers: measured against the operator's scale
    floor = max(np.abs(ref.get("eigs/eigenvalues", np.zeros(1))).max(), 1e-300)
    for key in arrays:
        if "/state/" in key:  # the resume checkpoint: timings, serialized driver state
            continue
        a, b = np.asarray(got[key]), np.asarray(ref[key])
        assert a.shape == b.shape, key
        if key.endswith("eigenvectors"):  # each column is defined up to its sign
            a = a * np.sign(np.sum(a * b, axis=0))
        if a.dtype.kind in "fc":
            finite = np.isfinite(b)
            assert np.array_equal(finite, np.isfinite(a)), key
            scale = max(np.abs(b[finite]).max(initial=0.0), floor)
            assert np.abs(a[finite] - b[finite]).max(initial=0.0) <= 1e-9 * scale, key
        else:
            assert np.array_equal(a, b), key


# ------------------------------------------------------------------ failures


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    start = time.monotonic()
    ranks = launch("failures", tmp_path_factory.mktemp("failures"))
    return {"ranks": ranks, "elapsed": time.monotonic() - start}


def _outcomes(failures, name):
    return [result["cases"][name] for result in failures["ranks"]]


@pytest.mark.slow  # the failures fixture: 2 processes through every failure case
@pytest.mark.parametrize("name, failing_rank, error, text", [
    ("nan_in_pass", 1, "NonFiniteError", "the loss is nan on batch 2 of rank 1's shard"),
    ("nan_at_construction", 1, "NonFiniteError", "the loss is nan on batch 0 of rank 1's shard"),
    ("bad_batch", 1, "InvalidDataError", "batch 5 is a Tensor"),
    ("changed_data", 1, "NonDeterministicDataError", "different samples on two passes"),
    ("fewer_batches_than_ranks", 1, "InvalidDataError", "rank 1 of 2 receives no batch"),
])
def test_a_failing_rank_fails_the_other_with_its_error(failures, name, failing_rank, error,
                                                       text):
    """The failing rank raises its own error; the other raises RankFailedError naming it."""
    for rank, (kind, message, mro, elapsed) in enumerate(_outcomes(failures, name)):
        assert elapsed < 30, f"{name}: rank {rank} took {elapsed:.0f} s to fail"
        assert text in message, (rank, message)
        if rank == failing_rank:
            assert kind == error and "LanczosHessianError" in mro
        else:
            assert kind == "RankFailedError" and "LanczosHessianError" in mro
            assert f"rank {failing_rank} raised {error}" in message


@pytest.mark.slow
@pytest.mark.parametrize("name, error, text", [
    ("more_ranks_than_samples", "InvalidDataError",
     "2 ranks (processes) but the data has only 1 sample"),
    ("unseeded_start_vectors", "RankMismatchError", "applied the hessian operator to "
                                                    "different vectors"),
    ("different_models", "RankMismatchError", "disagree on the sum of the model's parameters"),
    ("sharded_data", "RankMismatchError", "pass the whole data set on every rank"),
])
def test_bad_input_fails_every_rank_alike(failures, name, error, text):
    for rank, (kind, message, mro, elapsed) in enumerate(_outcomes(failures, name)):
        assert kind == error and text in message, (rank, kind, message)
        assert elapsed < 30


@pytest.mark.slow
def test_the_group_is_still_usable_after_the_failures(failures, numerics):
    """Every failure kept the ranks in step: a product afterwards is still exact."""
    expected = numerics["reference"]["products"][("hessian", "mean", "tensors")]
    for result in failures["ranks"]:
        assert _relative_error(result["after"], expected) <= RTOL
    assert failures["ranks"][0]["seed"] == failures["ranks"][1]["seed"]  # common_seed()
    assert failures["elapsed"] < WAIT_S / 2


@pytest.mark.slow  # waits for its timeout
def test_a_rank_that_skips_the_pass_ends_at_the_timeout(tmp_path):
    """The backstop: a rank alive but absent from the all-reduce costs the timeout, no more."""
    zero, _ = launch("timeout", tmp_path, timeout_s=2)
    kind, message, mro, elapsed = zero["outcome"]
    assert kind == "DistributedError" and "LanczosHessianError" in mro, message
    assert "Timed out" in message and 1.5 < elapsed < worker.SKIPPING_RANK_SLEEP_S, \
        (elapsed, message)


# ------------------------------------------------------------------ the command line


PROBLEM = '''
import torch


def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 4, generator=g)
    y = torch.randint(0, 3, (37,), generator=g)
    return model, torch.nn.CrossEntropyLoss(), (x, y)
'''


@pytest.mark.slow
def test_cli_under_torchrun(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny_dist_problem.py").write_text(PROBLEM)
    args = ["eigs", "--problem", "tiny_dist_problem:build", "--k", "4", "--model-dtype",
            "float64", "--batch-size", "5", "--tol", "1e-10", "--no-progress"]
    out = tmp_path / "dist.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
               str(_free_port()), "-m", "lanczos_hessian", *args, "--out", str(out)]
    log = tmp_path / "torchrun.txt"
    with open(log, "w") as stdout, open(tmp_path / "torchrun-err.txt", "w") as stderr:
        proc = subprocess.Popen(command, cwd=tmp_path, env=_env([tmp_path]), stdout=stdout,
                                stderr=stderr, start_new_session=True)
    code, = _wait_all([proc], [log, tmp_path / "torchrun-err.txt"], "torchrun")
    printed = log.read_text()
    report = (f"exit code {code}\n--- stdout ---\n{printed[-3000:]}\n--- stderr ---\n"
              f"{(tmp_path / 'torchrun-err.txt').read_text()[-3000:]}")
    assert code == 0, report
    title = "hessian eigenvalues (LA, k=4), 51 parameters"
    assert printed.count(title) == 1 and printed.count("written to") == 1, report

    from lanczos_hessian.cli import main

    monkeypatch.syspath_prepend(str(tmp_path))
    ref = tmp_path / "single.h5"
    with _one_thread():
        assert main([*args, "--out", str(ref)]) == 0
    assert title in capsys.readouterr().out
    got, expected = _datasets(out), _datasets(ref)
    assert got["/attrs"]["world_size"] == 2
    eig, eig_ref = got["eigs/eigenvalues"], expected["eigs/eigenvalues"]
    assert _relative_error(eig, eig_ref) <= 1e-12
    assert np.array_equal(got["eigs/converged"], expected["eigs/converged"])
    assert got["eigs/steps/matvec"].shape == expected["eigs/steps/matvec"].shape


# ------------------------------------------------------------------ single process


def test_without_a_group_the_helpers_are_plain(monkeypatch):
    """No process group: the error-aware reduce re-raises, gathering returns one row."""
    for name in ("WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert current_world().size == 1 and init_from_env().size == 1
    buffer = torch.zeros(3, dtype=torch.float64)
    assert all_reduce_or_raise(buffer, None) is buffer
    with pytest.raises(InvalidDataError, match="boom"):
        all_reduce_or_raise(buffer, InvalidDataError("boom"))
    assert gather_rows([1.0, 2.0]).tolist() == [[1.0, 2.0]]
    assert issubclass(RankFailedError, DistributedError)
    assert issubclass(DistributedError, LanczosHessianError)


def test_timeout_must_be_finite(monkeypatch):
    from lanczos_hessian.parallel.distributed import DEFAULT_TIMEOUT_S, resolve_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert resolve_timeout() == DEFAULT_TIMEOUT_S and resolve_timeout(5) == 5.0
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    assert resolve_timeout() == 12.5
    for bad in ("inf", "0", "soon"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=TIMEOUT_ENV):
            resolve_timeout()


def test_distributed_launch_without_master_address_is_a_clear_error(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DistributedError, match="MASTER_ADDR, MASTER_PORT are not set"):
        init_from_env(timeout_s=5)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 37])
@pytest.mark.parametrize("form", ["tensors", "batches"])
def test_shards_cover_every_sample_exactly_once(world_size, form):
    """No padding, no dropped or repeated sample, for any number of ranks up to N."""
    x, y = worker.make_data()
    data = worker.as_batches((x, y)) if form == "batches" else (x, y)
    if form == "batches" and world_size > len(data):
        return  # fewer batches than ranks: see test_fewer_batches_than_ranks_is_clear
    shards = [DataSource(data, worker.BATCH, rank, world_size) for rank in range(world_size)]
    seen = torch.cat([xb for shard in shards for xb, _ in shard])
    assert len(seen) == worker.N
    assert torch.equal(seen[seen[:, 0].argsort()], x[x[:, 0].argsort()])
    if form == "tensors":  # contiguous ranges whose sizes differ by at most one
        sizes = [shard.num_samples for shard in shards]
        assert sum(sizes) == worker.N and max(sizes) - min(sizes) <= 1


def test_fewer_batches_than_ranks_is_clear():
    batches = worker.as_batches(worker.make_data())  # 8 batches
    assert len(DataSource(batches, rank=7, world_size=8).first_batch()[0]) == 2
    with pytest.raises(InvalidDataError, match="rank 8 of 9 receives no batch: the data "
                                               "source yields 8 batches"):
        DataSource(batches, rank=8, world_size=9).first_batch()
    with pytest.raises(InvalidDataError, match="2 ranks .* only 1 sample"):
        DataSource(worker.make_data(n=1), rank=0, world_size=2)


def test_loaders_that_deal_different_batches_to_ranks_are_refused():
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = TensorDataset(*worker.make_data())
    DataSource(DataLoader(dataset, batch_size=5, shuffle=True))  # one process: harmless
    DataSource(DataLoader(dataset, batch_size=5), rank=1, world_size=2)
    with pytest.raises(InvalidDataError, match="shuffle=False"):
        DataSource(DataLoader(dataset, batch_size=5, shuffle=True), rank=1, world_size=2)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1)
    with pytest.raises(InvalidDataError, match="unsharded"):
        DataSource(DataLoader(dataset, batch_size=5, sampler=sampler), rank=1, world_size=2)
