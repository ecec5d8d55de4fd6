"""Write reference runs with fixed seeds, or compare two folders of them bit for bit.

A refactoring that claims to preserve behaviour must leave saved results unchanged. This
script runs the command line's ``eigs`` (both ends, with eigenvectors), ``slq`` (deflated by
the top and bottom eigenpairs) and ``demo`` (reduced size) with fixed seeds and a fixed
differentiation strategy, and compares every numeric dataset and attribute of two such folders,
ignoring only what differs between any two runs (times, dates, host names, the command).

    python scripts/same_results.py write  /tmp/before     # on the old code
    python scripts/same_results.py write  /tmp/after      # on the new code
    python scripts/same_results.py compare /tmp/before /tmp/after

Exit status 0 when every result, record and provenance attribute agrees bit for bit, 1 otherwise
(each difference is named). The resume state (``*/state/*``: committed vectors, bases, blobs)
is an internal format; its differences are counted apart and do not fail the comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: The runs: file name -> command-line arguments (after ``lanczos-hessian``).
RUNS = {
    "eigs.h5": ["eigs", "--problem", "clusters-mlp", "--k", "8", "--which", "BE",
                "--k-bottom", "3", "--save-vectors", "--strategy", "forward-over-reverse",
                "--seed", "3"],
    "slq.h5": ["slq", "--problem", "clusters-mlp", "--deflate-top", "4", "--deflate-bottom",
               "2", "--num-probes", "4", "--num-steps", "20", "--strategy",
               "forward-over-reverse", "--seed", "5"],
    "demo.h5": ["demo", "--num-examples", "200", "--steps", "300", "--seed", "1"],
}

#: Attributes that differ between two runs of the same code.
VOLATILE = {"created", "command", "hostname", "timings", "package_version", "elapsed"}
VOLATILE_STATE = ("timing_", "elapsed")  # keys of a committed state blob that are times


def _volatile(key: str) -> bool:
    """Attributes that differ between two runs of one command: times, hosts, versions."""
    return key in VOLATILE or key.startswith("seconds_")


def write(folder: Path) -> None:
    from lanczos_hessian.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    for name, args in RUNS.items():
        code = main(args + ["--out", str(folder / name), "--overwrite", "--no-progress"])
        if code:
            raise SystemExit(f"{name}: the command exited with {code}")


def _items(path: Path) -> dict:
    """Every dataset and attribute of the file, by path (``group/name`` or ``group@attr``)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, node):
            for key, value in node.attrs.items():
                if not _volatile(key):
                    out[f"{name}@{key}"] = value
            if isinstance(node, h5py.Dataset) and name.split("/")[-1].startswith("blob_"):
                out.update(_blob_items(name, node[()]))
            elif isinstance(node, h5py.Dataset):
                out[name] = node[()]

        for key, value in f.attrs.items():
            if not _volatile(key):
                out[f"@{key}"] = value
        f.visititems(visit)
    return out


def _blob_items(name: str, blob) -> dict:
    """The arrays of a committed state blob (an ``.npz`` archive), times left out."""
    import io

    with np.load(io.BytesIO(np.asarray(blob).tobytes()), allow_pickle=False) as data:
        return {f"{name}:{key}": data[key] for key in data.files
                if not key.startswith(VOLATILE_STATE)}


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return a.shape == b.shape and a.tobytes() == b.tobytes()
    return a.shape == b.shape and bool(np.all(a == b))


def compare(before: Path, after: Path) -> int:
    failures = 0
    for name in RUNS:
        a, b = _items(before / name), _items(after / name)
        keys = sorted(set(a) | set(b))
        differ = [k for k in keys if k not in a or k not in b or not _same(a[k], b[k])]
        state = [k for k in differ if "/state" in k]  # a resumable run's internal state
        results = [k for k in differ if "/state" not in k]
        numeric = [k for k in keys if k in a and np.asarray(a[k]).dtype.kind == "f"]
        print(f"{name}: {len(keys)} items ({len(numeric)} float); results and records: "
              f"{len(results)} differ; resume state: {len(state)} differ")
        for k in results:
            print(f"  {k}: {a.get(k, '<missing>')!r:.80} | {b.get(k, '<missing>')!r:.80}")
        failures += len(results)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write").add_argument("folder", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.folder)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
