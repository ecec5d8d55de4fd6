"""Run the command line, and SIGKILL this process at a named point of its file's life.

    python tests/_kill_at.py POINT N -- <lanczos-hessian arguments>

POINT is where the N-th occurrence kills the process (what a preemption can hit):

* ``streaming``: the N-th ``SpectrumWriter.start_streaming`` (the file created and declared,
  not yet in SWMR mode: N=1 is right after creation; N=2 in an SLQ run is between the
  deflation's results and the SLQ phase);
* ``creation``: inside the N-th ``SpectrumWriter.set_attrs`` of the root group, the file
  just created and flushed, its header not yet written;
* ``final-write``: inside the N-th ``SpectrumWriter.write_arrays``, after one dataset is
  created and before anything is flushed (the results of a phase being written).
"""

import os
import signal
import sys

from lanczos_hessian.storage.hdf5 import SpectrumWriter


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def patch(point: str, n: int) -> None:
    calls = {"count": 0}
    if point == "streaming":
        original = SpectrumWriter.start_streaming

        def start_streaming(self):
            calls["count"] += 1
            if calls["count"] == n:
                self.file.flush()  # the declared file as it stands, write flags set
                die()
            return original(self)

        SpectrumWriter.start_streaming = start_streaming
    elif point == "creation":
        original = SpectrumWriter.set_attrs

        def set_attrs(self, group, attrs):
            if group == "/":
                calls["count"] += 1
                if calls["count"] == n:
                    self.file.flush()
                    die()
            return original(self, group, attrs)

        SpectrumWriter.set_attrs = set_attrs
    elif point == "final-write":
        original = SpectrumWriter.write_arrays

        def write_arrays(self, group, arrays):
            calls["count"] += 1
            if calls["count"] == n:
                node = self.file.require_group(group)
                key, value = next((k, v) for k, v in arrays.items() if v is not None)
                if key in node:
                    del node[key]
                node.create_dataset(key, data=value)
                die()
            return original(self, group, arrays)

        SpectrumWriter.write_arrays = write_arrays
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    point, n, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: _kill_at.py POINT N -- ARGS"
    patch(point, int(n))
    from lanczos_hessian.cli import main

    sys.exit(main(args))
