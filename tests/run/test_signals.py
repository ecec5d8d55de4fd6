"""A run stopped by a signal (issue 24, cases 9 and 10, and a scheduler's time limit): SIGINT,
SIGTERM and SIGUSR1 stop it after the pass under way is committed, with the file unlocked,
one line with the resume command, the shell's exit status (128 + the signal), and a resume
that gives the uninterrupted run's numbers bit for bit."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lanczos_hessian.storage.hdf5 import read_file
from lanczos_hessian.storage.lock import lock_path
from cli_runs import COMMAND, TIMEOUT, committed_steps, problem_env

#: Each forward sleeps 20 ms: a pass over the 90 samples (3 batches of 30) takes 60 ms.
SLEEP = "0.02"


def start(args):
    env = dict(problem_env(), SLOW_MLP_SLEEP=SLEEP)
    return subprocess.Popen(COMMAND + args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def signal_after(path, args, signum, target):
    """Start the command, send ``signum`` once ``target`` passes are committed; return
    (exit status, stderr, passes committed when sent, seconds from the signal to the exit)."""
    process = start(args)
    deadline = time.monotonic() + TIMEOUT
    try:
        while committed_steps(path) < target and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.01)
        sent_at = committed_steps(path)
        time.sleep(0.03)  # mid-pass
        os.kill(process.pid, signum)
        sent = time.monotonic()
        _, err = process.communicate(timeout=TIMEOUT)
        return process.returncode, err, sent_at, time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def in_process(args) -> int:
    """The command line in this process (no second start of torch), on the tests' problems."""
    from lanczos_hessian.cli import main

    sys.path.insert(0, problem_env()["PYTHONPATH"].split(os.pathsep)[0])
    try:
        return main(args)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert in_process(COMMAND[3:] + ["--out", str(path)]) == 0
    return read_file(path)["eigs"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                            (signal.SIGUSR1, 138)],
                         ids=["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_signal_stops_the_run_at_the_next_commit_and_it_resumes_bit_for_bit(
        signum, status, reference, tmp_path):
    path = tmp_path / "run.h5"
    code, err, sent_at, seconds = signal_after(path, ["--out", str(path)], signum, 4)
    assert code == status, err
    lines = err.strip().splitlines()
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in lines[-1] and "traceback" not in err.lower(), err
    assert lines[-1].endswith(f"--out {path} --resume"), lines[-1]
    assert not lock_path(path).exists()
    stopped = committed_steps(path)
    assert sent_at <= stopped <= sent_at + 2  # the pass under way, and no further
    assert seconds < 5
    assert in_process(lines[-1].split("continue with: lanczos-hessian ")[1].split()) == 0
    resumed = read_file(path)["eigs"]
    np.testing.assert_array_equal(resumed["eigenvalues"], reference["eigenvalues"])
    np.testing.assert_array_equal(resumed.steps["alpha"], reference.steps["alpha"])
    assert resumed.attrs["num_matvecs"] == reference.attrs["num_matvecs"]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """"At once" means without finishing the pass under way: a pass is 3 forwards that sleep
    2 s each, so a run that waited for it would commit one more step than it had when the
    signals were sent. The step count, not the wall time, is the check (interpreter shutdown
    alone took 1-3 s on a loaded machine); TIMEOUT still catches a hang."""
    path = tmp_path / "run.h5"
    env = dict(problem_env(), SLOW_MLP_SLEEP="2.0")
    process = subprocess.Popen(COMMAND + ["--out", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while committed_steps(path) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # 1 s into the next 6 s pass: a first signal that landed between a commit and the
        # safe point after it would stop the run there, before the second one is sent
        time.sleep(1.0)
        os.kill(process.pid, signal.SIGINT)
        time.sleep(0.1)
        os.kill(process.pid, signal.SIGINT)
        steps_at_signal = committed_steps(path)
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert steps_at_signal >= 1 and committed_steps(path) == steps_at_signal
    assert "stopped by SIGINT" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not lock_path(path).exists()


def test_a_signal_in_a_python_run_raises_run_interrupted_after_the_commit(tmp_path):
    """The fast tier's check, in this process: SIGTERM sent from inside a pass stops
    ``run.eigs`` at the commit that ends it; the file is unlocked and resumes bit for bit."""
    import torch

    from conftest import make_mlp, mlp_data
    from lanczos_hessian import HessianOperator, RunInterrupted, run

    calls = {"count": 0, "at": None}

    class Signalling(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_mlp()

        def forward(self, x):
            calls["count"] += 1
            if calls["count"] == calls["at"]:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.net(x)

    def eigs(path, **kwargs):
        op = HessianOperator(Signalling(), torch.nn.CrossEntropyLoss(), mlp_data())
        return run.eigs(op, path, k=3, which="BE", seed=0, progress=False, **kwargs)

    reference = eigs(tmp_path / "ref.h5")
    calls.update(count=0, at=12)
    path = tmp_path / "run.h5"
    former = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as stopped:
        eigs(path)
    assert stopped.value.exit_status == 143 and stopped.value.committed
    assert signal.getsignal(signal.SIGTERM) is former  # the handlers are given back
    assert not lock_path(path).exists()
    stopped_at = committed_steps(path)
    assert 0 < stopped_at < len(read_file(tmp_path / "ref.h5")["eigs"].steps["alpha"])
    calls.update(count=0, at=None)
    resumed = eigs(path, resume=True)
    np.testing.assert_array_equal(resumed.eigenvalues, reference.eigenvalues)
    assert resumed.num_matvecs == reference.num_matvecs
