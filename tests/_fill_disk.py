"""Inside ``unshare -rm`` (a mount namespace of its own): run the command line on a small
tmpfs, fill the tmpfs while the run streams, and report what happened (test_writers.py).

    unshare -rm python tests/_fill_disk.py WORKDIR REPORT.json -- <lanczos-hessian arguments>

The tmpfs is mounted at WORKDIR/mnt (gone with the namespace); the run's file is copied to
WORKDIR/full.h5 after the run and ``analyze`` ended, for the test to resume it.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from lanczos_hessian.storage.hdf5 import read_file


def committed(path) -> int:
    try:
        return len(read_file(path)["slq"].steps.get("alpha", []))
    except Exception:  # noqa: BLE001 (not created yet, or between phases)
        return 0


def main():
    workdir, report, separator, *args = sys.argv[1:]
    assert separator == "--"
    mount = os.path.join(workdir, "mnt")
    os.makedirs(mount, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mount], check=True)
    out = os.path.join(mount, "run.h5")
    run = subprocess.Popen([sys.executable, "-m", "lanczos_hessian"] + args + ["--out", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    filled_at, deadline = 0, time.monotonic() + 240
    while run.poll() is None and time.monotonic() < deadline:
        filled_at = committed(out)
        if filled_at >= 3:
            break
        time.sleep(0.05)
    try:  # another process takes every free byte
        with open(os.path.join(mount, "filler"), "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
    except OSError:
        pass
    stderr = run.communicate(timeout=240)[1]
    analyzed = subprocess.run([sys.executable, "-m", "lanczos_hessian", "analyze", out],
                              capture_output=True, text=True, timeout=240)
    if os.path.exists(out):
        shutil.copy(out, os.path.join(workdir, "full.h5"))
    with open(report, "w") as handle:
        json.dump({"code": run.returncode, "stderr": stderr, "filled_at": filled_at,
                   "committed": committed(out), "analyze": analyzed.returncode,
                   "analyzed": analyzed.stdout + analyzed.stderr,
                   "left": sorted(os.listdir(mount))}, handle)


if __name__ == "__main__":
    main()
