"""Command-line runs that tests kill, stop and resume: the slow test problem's command lines,
a reader following the running writer, and the checks that a resume continued."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lanczos_hessian.storage.hdf5 import read_file

PROBLEMS = str(Path(__file__).parent / "problems")
COMMAND = [sys.executable, "-m", "lanczos_hessian", "eigs", "--problem", "slow_mlp:build",
           "--k", "6", "--which", "BE", "--ncv", "14", "--tol", "1e-10", "--batch-size", "30",
           "--strategy", "reverse-over-reverse", "--no-progress"]
TIMEOUT = 240


def run_cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=PROBLEMS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(COMMAND + args, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, **kwargs)


def run_in_process(command, args):
    """``command`` (one of the lists above) with ``args`` run by the CLI's ``main`` in this
    process: an uninterrupted reference run without an interpreter to start. Its exit code."""
    from lanczos_hessian.cli import main

    if PROBLEMS not in sys.path:
        sys.path.insert(0, PROBLEMS)
    return main(command[3:] + args)


SLQ_COMMAND = [sys.executable, "-m", "lanczos_hessian", "slq", "--problem", "slow_mlp:build",
               "--num-probes", "3", "--num-steps", "20", "--deflate-top", "3", "--tol", "1e-10",
               "--batch-size", "30", "--strategy", "reverse-over-reverse", "--no-progress"]


def committed_steps(path, group="eigs"):
    try:
        return len(read_file(path)[group].steps.get("alpha", []))
    except Exception:  # not created yet, or between creation and the first record
        return 0


def problem_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = PROBLEMS + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def run_until(path, args, target, command=COMMAND, group="eigs"):
    """Start the CLI and SIGKILL it (with every process it started, as a preemption does)
    once ``target`` steps are committed; return what it saw and its exit code."""
    process = subprocess.Popen(command + args, env=problem_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    seen, deadline = [], time.monotonic() + TIMEOUT
    try:
        while process.poll() is None and time.monotonic() < deadline:
            count = committed_steps(path, group)  # a reader following the running writer
            seen.append(count)
            if count >= target:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return seen, process.returncode


def assert_continued(seen, target):
    """What a reader saw of a killed run: it reached ``target`` steps, and a resume did not
    start afresh. (0: not readable while (re)opening; a resume may first drop the one record
    written after the last committed state, killed between the two, then steps only grow.)"""
    readable = [count for count in seen if count]
    drops = [a - b for a, b in zip(readable, readable[1:]) if b < a]
    assert seen[-1] >= target and drops in ([], [1])


def assert_same_slq(path, reference_path):
    """A resumed SLQ run's file holds bit for bit the uninterrupted run's results."""
    ref, run = read_file(reference_path), read_file(path)
    np.testing.assert_array_equal(run["slq"]["nodes"], ref["slq"]["nodes"])
    np.testing.assert_array_equal(run["slq"]["weights"], ref["slq"]["weights"])
    np.testing.assert_array_equal(run["eigs"]["eigenvalues"], ref["eigs"]["eigenvalues"])
    assert run["slq"].attrs["num_passes"] == ref["slq"].attrs["num_passes"]
    assert run["slq"].attrs["deflation_passes"] == ref["eigs"].attrs["num_passes"] > 0
