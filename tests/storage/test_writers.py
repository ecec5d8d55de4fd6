"""One writer per file, files readable after any kill, a full disk: issue 16, points 1, 2, 5.

The fast tests hold a file's lock from a plain subprocess (no torch import) and reproduce a
killed writer's file by copying a file that is open for writing; the slow ones run the
command line: two of them on one file, SIGKILL at every phase, a file system that fills up.
"""

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lanczos_hessian.cli import main
from lanczos_hessian.errors import DiskFullError, OutputPathError, SpectrumFileError
from lanczos_hessian.storage import recovery  # where open_spectrum reads LEFT_OPEN_WAIT
from lanczos_hessian.storage.hdf5 import (
    SpectrumWriter,
    check_output_path,
    format_bytes,
    read_file,
)
from lanczos_hessian.storage.lock import WriterLock, hold, holder_of, lock_path
from cli_runs import (
    COMMAND,
    PROBLEMS,
    SLQ_COMMAND,
    TIMEOUT,
    assert_same_slq,
    committed_steps,
    problem_env,
    run_until,
)

HERE = Path(__file__).parents[1]
HOLDER = """
import fcntl, json, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(fd, fcntl.LOCK_EX)
record = {"host": sys.argv[2], "pid": os.getpid(), "started": "earlier", "command": "holder"}
os.write(fd, (json.dumps(record) + "\\n").encode())
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def foreign_holder(path):
    """Another process that holds ``path``'s writer lock (as a live run does) until the end
    of the block, then exits leaving its record behind (as a killed run does)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path(path)),
                                platform.node()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def small_file(path, steps=(1.0,)):
    with SpectrumWriter(path, {"seed": 1}) as writer:
        for value in steps:
            writer.append_step("eigs", {"alpha": value})
    return path


# ---- point 1: one writer ------------------------------------------------------------------------
def test_a_live_writer_in_another_process_refuses_every_other_writer(tmp_path, caplog):
    path = small_file(tmp_path / "run.h5")
    before = path.read_bytes()
    with foreign_holder(path) as holder:
        named = rf"being written by process {holder.pid} on host {re.escape(platform.node())}"
        for kwargs in ({}, {"overwrite": True}, {"append": True}):  # fresh, overwrite, resume
            with pytest.raises(OutputPathError, match=named):
                SpectrumWriter(path, {}, **kwargs)
        assert path.read_bytes() == before  # not even opened
        assert holder_of(path)["pid"] == holder.pid
    # the holder is gone, its record stays: the next writer takes the lock over
    with caplog.at_level("WARNING", logger="lanczos_hessian.storage.lock"):
        with SpectrumWriter(path, append=True) as writer:
            writer.append_step("eigs", {"alpha": 2.0})
            assert holder_of(path)["pid"] == os.getpid()
    assert f"process {holder.pid} on host {platform.node()}" in caplog.text
    assert "is gone" in caplog.text
    assert read_file(path)["eigs"].steps["alpha"].tolist() == [1.0, 2.0]
    assert not lock_path(path).exists()  # removed when the writer closed


def test_the_command_line_refuses_at_once_before_building_the_model(tmp_path, monkeypatch,
                                                                    capsys):
    (tmp_path / "never_built.py").write_text(
        "def build():\n    raise SystemExit('the model was built')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = small_file(tmp_path / "run.h5")
    with foreign_holder(path) as holder:
        for extra in ([], ["--resume"], ["--overwrite"]):
            start = time.monotonic()
            code = main(["eigs", "--problem", "never_built:build", "--out", str(path),
                         "--no-progress"] + extra)
            err = capsys.readouterr().err
            assert code == 2 and f"being written by process {holder.pid}" in err, err
            assert time.monotonic() - start < 5
    assert read_file(path)["eigs"].steps["alpha"].tolist() == [1.0]


TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except OSError:
    print("held")
"""


def test_two_writers_in_one_process_and_the_shared_lock_of_a_command(tmp_path):
    path = tmp_path / "run.h5"
    writer = SpectrumWriter(path, {})
    assert holder_of(path)["pid"] == os.getpid()  # read without releasing the lock:
    seen = subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock_path(path))],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    assert seen == "held"  # (closing any descriptor of the file would release it)
    with pytest.raises(OutputPathError, match="already being written by this process"):
        SpectrumWriter(path, {}, overwrite=True)
    with pytest.raises(OutputPathError, match="already being written by this process"):
        WriterLock(path).acquire()
    writer.close()
    with hold(path):  # what the command line holds: its writers join it one at a time
        with SpectrumWriter(path, {}, overwrite=True):
            with pytest.raises(OutputPathError, match="already being written by this process"):
                SpectrumWriter(path, append=True)
        with SpectrumWriter(path, append=True):
            pass
        assert lock_path(path).exists()
    assert not lock_path(path).exists()


def test_without_file_system_locks_the_lock_file_itself_is_the_lock(tmp_path, monkeypatch):
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    path, sidecar = tmp_path / "run.h5", lock_path(tmp_path / "run.h5")
    with SpectrumWriter(path, {}) as writer:  # no lock file yet: this writer's record is it
        assert holder_of(path)["pid"] == os.getpid()
        with pytest.raises(OutputPathError, match="already being written by this process"):
            SpectrumWriter(path, append=True)
        writer.append_step("eigs", {"alpha": 1.0})
    assert not sidecar.exists()
    sidecar.write_text(json.dumps({"host": "elsewhere", "pid": 1}) + "\n")
    with pytest.raises(OutputPathError, match=r"process 1 on host elsewhere .*remove "
                       + re.escape(str(sidecar))):
        WriterLock(path).acquire()
    sidecar.write_text(json.dumps({"host": platform.node(), "pid": os.getppid()}) + "\n")
    with pytest.raises(OutputPathError, match=f"process {os.getppid()} on host"):
        WriterLock(path).acquire()  # alive on this host
    sidecar.write_text(json.dumps({"host": platform.node(), "pid": dead_pid()}) + "\n")
    lock = WriterLock(path).acquire()  # a dead process of this host: taken over
    assert holder_of(path)["pid"] == os.getpid()
    lock.release()
    assert not sidecar.exists()


# ---- point 2: readable after any kill ---------------------------------------------------------
def left_open_copy(tmp_path, name="killed.h5"):
    """What ``kill -9`` leaves of a writer outside SWMR mode: a copy of a file open for
    writing (its superblock says so), with one committed step."""
    live, killed = tmp_path / "live.h5", tmp_path / name
    writer = SpectrumWriter(live, {"seed": 1})
    writer.declare_steps("eigs", {"alpha": 0.0})
    writer.append_step("eigs", {"alpha": 1.0})
    shutil.copy(live, killed)
    writer.close()
    live.unlink()
    return killed


def test_a_file_left_open_by_a_killed_writer_is_read_and_resumed(tmp_path, monkeypatch):
    killed = left_open_copy(tmp_path)
    with pytest.raises(OSError, match="already open for write"):  # the bug: HDF5 refuses it
        h5py.File(killed, "r", locking=False)
    monkeypatch.setattr(recovery, "LEFT_OPEN_WAIT", 0.2)
    with foreign_holder(killed) as holder:  # a live writer holds it: never touched
        before = killed.read_bytes()
        with pytest.raises(SpectrumFileError, match=f"cannot be read at this moment: process "
                           f"{holder.pid}"):
            read_file(killed)
        assert killed.read_bytes() == before
    assert read_file(killed)["eigs"].steps["alpha"].tolist() == [1.0]  # writer gone
    resumed = left_open_copy(tmp_path, "resumed.h5")
    with SpectrumWriter(resumed, append=True) as writer:
        writer.append_step("eigs", {"alpha": 2.0})
    assert read_file(resumed)["eigs"].steps["alpha"].tolist() == [1.0, 2.0]
    assert main(["analyze", str(left_open_copy(tmp_path, "analyzed.h5"))]) == 0


def test_symbolic_links_and_virtual_file_systems_as_outputs(tmp_path, capsys):
    target = small_file(tmp_path / "target.h5")
    before = target.read_bytes()
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    with pytest.raises(OutputPathError, match="is a symbolic link .* refusing to write through"):
        SpectrumWriter(link, {}, overwrite=True)
    assert main(["eigs", "--problem", "clusters-mlp", "--out", str(link), "--overwrite",
                 "--no-progress"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert target.read_bytes() == before
    dangling = tmp_path / "dangling.h5"
    dangling.symlink_to(tmp_path / "nowhere.h5")
    with pytest.raises(OutputPathError, match="symbolic link"):
        check_output_path(dangling)
    lock = WriterLock(target).acquire()  # a resume through the link takes the target's lock
    with pytest.raises(OutputPathError, match="already being written by this process"):
        SpectrumWriter(link, append=True)
    lock.release()
    with SpectrumWriter(link, append=True) as writer:
        assert writer.path == target.resolve()
        writer.append_step("eigs", {"alpha": 2.0})
    assert read_file(target)["eigs"].steps["alpha"].tolist() == [1.0, 2.0]
    if sys.platform.startswith("linux") and os.statvfs("/proc").f_blocks == 0:
        with pytest.raises(OutputPathError, match=r"/proc is on a file system of size 0|"
                                                  r"/proc is not writable"):
            check_output_path("/proc/x.h5")
    assert format_bytes(0) == "0 bytes" and format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"


# ---- the command line, end to end (slow) -----------------------------------------------------
# The runs that must be killed are subprocesses (one intra-op thread, as this process runs:
# conftest.py); references, resumes and analyses run in this process, to spare the imports.
def env():
    return dict(problem_env(), OMP_NUM_THREADS="1")


def cli(args) -> tuple:
    """``lanczos-hessian ARGS`` in this process: ``(exit code, stdout + stderr)``."""
    import io

    if PROBLEMS not in sys.path:
        sys.path.insert(0, PROBLEMS)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


def analyze(path) -> str:
    code, shown = cli(["analyze", str(path)])
    assert code == 0, shown
    return shown


def resume(command, path, extra=()):
    code, shown = cli(command[3:] + list(extra) + ["--out", str(path), "--resume"])
    assert code == 0, shown


def wait_until_writing(path, process, resumed_from=None):
    """Until ``process`` holds ``path``'s lock and has committed two steps of its own: two
    more than ``resumed_from``, or two of a file it created (a file it overwrites is first
    seen with its old steps, then with none)."""
    deadline, fresh = time.monotonic() + TIMEOUT, resumed_from is not None
    while True:
        assert process.poll() is None, "the first writer ended: " + process.stderr.read()
        assert time.monotonic() < deadline
        steps = committed_steps(path)
        fresh = fresh or steps < 2
        if (holder_of(path) or {}).get("pid") == process.pid and fresh \
                and steps >= (resumed_from or 0) + 2:
            return
        time.sleep(0.05)


def start(args, environment=None):
    return subprocess.Popen(COMMAND + args, env=environment or env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process):
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def eigs_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    code, shown = cli(COMMAND[3:] + ["--save-vectors", "--out", str(path)])
    assert code == 0, shown
    return read_file(path)


def assert_same_eigs(path, reference):
    run = read_file(path)["eigs"]
    assert run.attrs["complete"]
    for key in ("eigenvalues", "residual_bounds", "residuals", "eigenvectors"):
        np.testing.assert_array_equal(run[key], reference["eigs"][key])
    np.testing.assert_array_equal(run.steps["alpha"], reference["eigs"].steps["alpha"])
    assert run.attrs["num_matvecs"] == reference["eigs"].attrs["num_matvecs"]


@pytest.mark.slow
def test_two_writers_on_one_file_end_with_one_writer_and_an_intact_file(eigs_reference,
                                                                        tmp_path):
    """Every combination of fresh, --resume and --overwrite for a running first writer and a
    second one: the second is refused at once naming the first, which goes on alone; two
    started together: one writes, the other is refused. Each first writer is then killed and
    the next one (or a resume) continues it: the file ends bit for bit as if never shared."""
    path = tmp_path / "run.h5"
    slow = dict(env(), SLOW_MLP_SLEEP="0.3")  # a pass takes ~1 s: the first outlives the rest
    args = ["--save-vectors", "--out", str(path)]

    def kill(process):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    for first_extra in ([], ["--resume"], ["--overwrite"]):
        before = committed_steps(path)
        first = start(args + first_extra, slow)
        wait_until_writing(path, first, before if first_extra == ["--resume"] else None)
        seconds = [start(args + extra) for extra in ([], ["--resume"], ["--overwrite"])]
        for second in seconds:
            code, _, err = finish(second)
            assert code == 2 and f"being written by process {first.pid}" in err, err
        assert first.poll() is None  # the second writers ended while the first ran on
        kill(first)
    resume(COMMAND, path, ["--save-vectors"])
    assert_same_eigs(path, eigs_reference)
    for extra in (["--overwrite"], []):
        if not extra:
            path.unlink()
        pair = [start(args + extra, slow) for _ in range(2)]
        deadline = time.monotonic() + TIMEOUT
        while all(p.poll() is None for p in pair):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = next(p for p in pair if p.poll() is not None)
        writer = next(p for p in pair if p is not refused)
        code, _, err = finish(refused)
        assert code == 2 and f"being written by process {writer.pid}" in err, err
        wait_until_writing(path, writer)
        kill(writer)
        resume(COMMAND, path, ["--save-vectors"])
        assert_same_eigs(path, eigs_reference)
    assert not lock_path(path).exists()


def kill_at(point, n, args):
    """The command line with ``args``, SIGKILLed at ``point`` (tests/_kill_at.py)."""
    done = subprocess.run([sys.executable, str(HERE / "_kill_at.py"), point, str(n), "--"]
                          + args, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


@pytest.mark.slow
def test_kill_at_creation_and_during_the_final_write_then_analyze_and_resume(eigs_reference,
                                                                            tmp_path):
    for point, shows in (("streaming", "eigs: no step committed yet"),
                         ("final-write", "eigs: CUT OFF")):
        path = tmp_path / f"{point}.h5"
        kill_at(point, 1, COMMAND[3:] + ["--save-vectors", "--out", str(path)])
        with pytest.raises(OSError, match="already open for write"):  # killed outside SWMR
            h5py.File(path, "r", locking=False)
        assert shows in analyze(path)
        resume(COMMAND, path, ["--save-vectors"])
        assert_same_eigs(path, eigs_reference)


@pytest.mark.slow
def test_an_slq_run_killed_in_every_phase_reads_and_resumes_bit_for_bit(tmp_path):
    ref_path = tmp_path / "ref.h5"
    code, shown = cli(SLQ_COMMAND[3:] + ["--out", str(ref_path)])
    assert code == 0, shown
    kills = [("final-write", 1, "eigs (the SLQ run's deflation): CUT OFF"),  # its results
             ("streaming", 2, "slq: no step committed yet (its deflation phase is complete)"),
             ("final-write", 2, "slq: CUT OFF, 20 lockstep steps committed")]  # SLQ results
    for i, (point, n, shows) in enumerate(kills):
        path = tmp_path / f"run{i}.h5"
        kill_at(point, n, SLQ_COMMAND[3:] + ["--out", str(path)])
        assert shows in analyze(path)
        resume(SLQ_COMMAND, path)
        assert_same_slq(path, ref_path)
    path = tmp_path / "streamed.h5"  # killed while the deflation streams
    _, code = run_until(path, ["--out", str(path)], 6, SLQ_COMMAND, "eigs")
    assert code == -signal.SIGKILL
    shown = analyze(path)
    assert re.search(r"eigs \(the SLQ run's deflation\): CUT OFF, \d+ operator applications "
                     r"committed", shown), shown
    assert "slq: no step committed yet (its deflation phase is running" in shown
    resume(SLQ_COMMAND, path)
    assert_same_slq(path, ref_path)


@pytest.mark.slow
def test_the_demo_streams_and_its_file_reads_after_a_kill(tmp_path):
    path = tmp_path / "demo.h5"
    command = [sys.executable, "-m", "lanczos_hessian", "demo", "--num-examples", "60",
               "--num-classes", "3", "--steps", "50", "--no-dense", "--no-progress"]
    seen, code = run_until(path, ["--out", str(path)], 10, command, "eigs")
    assert code == -signal.SIGKILL and max(seen) >= 10  # read while it ran
    assert "eigs (the SLQ run's deflation): CUT OFF" in analyze(path)


# ---- a full disk (slow) ----------------------------------------------------------------------
FILL_DRIVER = HERE / "_fill_disk.py"


def _can_mount_tmpfs() -> str | None:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux and unshare(1)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}"
    return None


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_a_clear_error_and_a_readable_file(tmp_path):
    reason = _can_mount_tmpfs()
    if reason:
        pytest.skip(reason)
    report = tmp_path / "report.json"
    done = subprocess.run(["unshare", "-rm", sys.executable, str(FILL_DRIVER), str(tmp_path),
                           str(report), "--"] + SLQ_COMMAND[3:], env=env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(report.read_text())
    assert seen["code"] == 2, seen  # a clear error, not a crash (the audit saw exit 139)
    assert "file system of" in seen["stderr"] and "is full" in seen["stderr"], seen["stderr"]
    assert "--resume" in seen["stderr"] and "Traceback" not in seen["stderr"]
    assert seen["analyze"] == 0 and "CUT OFF" in seen["analyzed"], seen
    assert seen["committed"] >= seen["filled_at"] >= 3
    copy, ref_path = tmp_path / "full.h5", tmp_path / "ref.h5"
    assert committed_steps(copy, "slq") == seen["committed"]  # readable here too
    resume(SLQ_COMMAND, copy)  # and what was committed resumes bit for bit
    code, shown = cli(SLQ_COMMAND[3:] + ["--out", str(ref_path)])
    assert code == 0, shown
    assert_same_slq(copy, ref_path)


def test_every_writer_checks_the_disk_space_before_writing(tmp_path, monkeypatch):
    """eigs had the check; SLQ, the tracker and the demo (and any SpectrumWriter) have it too,
    and it says what it needs in units that read (the audit saw '0.00 GiB needed')."""
    import torch

    from conftest import make_mlp, mlp_data
    from lanczos_hessian import HessianOperator, SpectrumTracker, run
    from lanczos_hessian.examples.demo import run_demo

    loss = torch.nn.CrossEntropyLoss()
    op = HessianOperator(make_mlp(), loss, mlp_data())
    usage = __import__("collections").namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    for call in (lambda: run.slq(op, tmp_path / "slq.h5", num_probes=2, num_steps=3, k_top=1),
                 lambda: run.eigs(op, tmp_path / "eigs.h5", k=2),
                 lambda: SpectrumTracker(make_mlp(), loss, mlp_data(), path=tmp_path / "t.h5"),
                 lambda: SpectrumWriter(tmp_path / "any.h5", {}),
                 lambda: run_demo(tmp_path / "demo.h5", num_classes=2, num_examples=20, steps=1,
                                  k_top=1, k_bottom=1, num_probes=1, num_steps=2, dense=False,
                                  progress=False, echo=lambda *args: None)):
        with pytest.raises(OutputPathError, match=r"not enough disk space for .*: \d+\.\d [KM]iB "
                                                  r"needed.*, 1000 bytes free"):
            call()
    assert sorted(os.listdir(tmp_path)) == []  # nothing created, no lock file left
    assert op.num_applications == 0


def test_a_disk_full_error_closes_the_file_and_gives_the_reserve_back(tmp_path):
    """The in-process part of the scenario above: an ENOSPC raised while streaming."""
    path = tmp_path / "run.h5"
    writer = SpectrumWriter(path, {}, reserve=1 << 16)
    assert os.path.getsize(lock_path(path)) >= 1 << 16  # the reserve, in the lock file
    writer.append_step("eigs", {"alpha": 1.0})
    writer.start_streaming()
    with pytest.raises(DiskFullError, match=r"file system of .* is full .*closed cleanly.*"
                                            r"--resume"):
        with writer:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not lock_path(path).exists()
    assert read_file(path)["eigs"].steps["alpha"].tolist() == [1.0]
