"""Kill -9 and resume on two gloo ranks under torchrun (replicated and sharded vectors, the
basis in memory and on disk). A file of its own, apart from test_resume.py: under
``--dist loadscope`` each module runs on one worker, and these eight runs of four torchrun
launches each are most of the storage tests' time."""

import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from lanczos_hessian.storage.hdf5 import read_file

from cli_runs import (
    COMMAND,
    SLQ_COMMAND,
    TIMEOUT,
    assert_continued,
    assert_same_slq,
    problem_env,
    run_cli,
    run_until,
)


def torchrun(command):
    """``command`` (a ``python -m lanczos_hessian ...`` line) on 2 gloo ranks under torchrun."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "lanczos_hessian", *command[3:]]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
@pytest.mark.parametrize("budget", [[], ["--memory-budget", "5000"], ["--shard-vectors"],
                                    ["--shard-vectors", "--memory-budget", "3000"]],
                         ids=["memory", "disk", "sharded", "sharded-disk"])
def test_killed_slq_run_on_two_ranks_resumes_in_both_phases(budget, tmp_path):
    """Replicated, rank 1 does not write: on resume it copies the committed state from rank
    0's file. Sharded, each rank resumes its rows of both phases from its own file."""
    env = dict(problem_env(), OMP_NUM_THREADS="1")
    ref_path, path = tmp_path / "ref.h5", tmp_path / "run.h5"
    done = subprocess.run(torchrun(SLQ_COMMAND) + budget + ["--out", str(ref_path),
                                                            "--keep-state"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ref.rank1-of-2.h5").exists() == ("--shard-vectors" in budget)
    args = budget + ["--out", str(path)]
    for target, group in ((6, "eigs"), (8, "slq")):  # in the deflation phase, then in SLQ
        seen, code = run_until(path, args + (["--resume"] if group == "slq" else []), target,
                               torchrun(SLQ_COMMAND), group)
        assert code == -signal.SIGKILL
        assert_continued(seen, target)
    done = subprocess.run(torchrun(SLQ_COMMAND) + args + ["--resume"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_slq(path, ref_path)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
@pytest.mark.parametrize("options", [[], ["--memory-budget", "5000"], ["--shard-vectors"],
                                     ["--shard-vectors", "--memory-budget", "3000"]],
                         ids=["replicated", "replicated-basis-on-disk", "sharded",
                              "sharded-basis-on-disk"])
def test_killed_run_on_two_ranks_resumes_to_the_uninterrupted_result(options, tmp_path):
    """Replicated: rank 1 copies the committed state from rank 0's file. Sharded: each rank
    resumes its rows from its own file, from the last state both committed."""
    env = dict(problem_env(), OMP_NUM_THREADS="1")
    reference_path, sharded = tmp_path / "ref.h5", "--shard-vectors" in options
    command = torchrun(COMMAND) + options
    done = subprocess.run(command + ["--out", str(reference_path), "--keep-state"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ref.rank1-of-2.h5").exists() == sharded  # rank 1's rows of the state
    reference = read_file(reference_path)["eigs"]
    assert reference.attrs["sharded"] == sharded and reference.attrs["num_restarts"] >= 2
    assert reference.attrs["basis_location"] == ("disk" if "--memory-budget" in options
                                                 else "device")
    path, total = tmp_path / "run.h5", len(reference.steps["alpha"])
    for i, target in enumerate((4, total // 2)):  # before and after a thick restart
        seen, code = run_until(path, ["--out", str(path)] + (["--resume"] if i else []),
                               target, command=torchrun(COMMAND) + options)
        assert code == -signal.SIGKILL, f"run ended by itself (code {code}) before {target}"
        assert_continued(seen, target)
    done = subprocess.run(torchrun(COMMAND) + options + ["--out", str(path), "--resume"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_file(path)["eigs"]
    np.testing.assert_array_equal(resumed["eigenvalues"], reference["eigenvalues"])
    np.testing.assert_array_equal(resumed["residual_bounds"], reference["residual_bounds"])
    assert resumed.attrs["num_matvecs"] == reference.attrs["num_matvecs"]
    other_world = run_cli(["--out", str(path), "--resume"])  # one process: not the same run
    assert other_world.returncode == 2 and "world_size: file has 2, this run has 1" \
        in other_world.stderr
