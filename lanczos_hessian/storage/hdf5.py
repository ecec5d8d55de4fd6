"""HDF5 spectrum files: an append-only writer with a committed counter, and a reader.

Layout (format ``lanczos_hessian.spectrum``, version :data:`FORMAT_VERSION`)::

    /                       attrs: format, format_version, package_version, torch_version,
                                   created, command, and the run's provenance (num_params,
                                   num_samples, loss, reduction, dtype, seed, world_size, ...)
    /<run>/                 one group per computation ("eigs", "slq", ...); attrs: its
                            settings and, once finished, its timings and "complete" = True
    /<run>/<name>           fixed arrays written once (e.g. eigenvalues, residual_bounds)
    /<run>/steps/<name>     growing records, one row per operator application; the group's
                            attr "committed" counts the rows that are complete

A record is appended by resizing every dataset of ``steps``, writing the row, then raising
the counter ``steps/committed`` (a one-element dataset) and flushing. Readers trust that
counter only, so a file cut off by a crash or ``kill -9`` is readable up to its last
committed step. Long runs stream in HDF5's SWMR mode, so another process can follow them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from ..errors import OutputPathError, SpectrumFileError
from .h5flags import clear_write_flags

FORMAT = "lanczos_hessian.spectrum"
FORMAT_VERSION = 1


def check_output_path(path, overwrite: bool = False) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be created (before any work)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputPathError(f"output file {path} exists; pass overwrite=True (--overwrite) "
                              "to replace it, or choose another path")
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write {path}: directory {parent} is not writable")
    return path


def _attr_value(value):
    if value is None:
        return "None"
    if isinstance(value, (dict, list, tuple)) and not _is_numeric_sequence(value):
        return json.dumps(value, default=str)
    if isinstance(value, (str, Path)):  # also str subclasses such as torch's version
        return str(value)
    return value


def _is_numeric_sequence(value):
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, np.number)) for v in value
    ) and len(value) > 0


class SpectrumWriter:
    """Writes one spectrum file; use as a context manager.

    Two phases. While *declaring*, groups, attributes and datasets may be created freely.
    :meth:`start_streaming` then switches the file to HDF5's single-writer/multiple-reader
    (SWMR) mode: from there on only declared datasets are written and grown, so that another
    process can read the file while the run goes on, and a killed run leaves a consistent
    file. :meth:`finish` leaves SWMR mode (it reopens the file) for the final arrays and
    attributes.

    Parameters
    ----------
    path : str or Path
        The file to create (refused if it exists unless ``overwrite``).
    attrs : dict
        Provenance written on the root group.
    overwrite : bool
        Replace an existing file.
    append : bool
        Open an existing file of ours to continue it (resume) instead of creating one.
    """

    def __init__(self, path, attrs: dict | None = None, overwrite: bool = False,
                 append: bool = False):
        self.path = Path(path)
        self.streaming = False
        if append:
            open_spectrum(self.path).close()  # ours, readable, compatible
            _refuse_if_locked(self.path)
            clear_write_flags(self.path)  # left set by the killed writer
            self.file = h5py.File(self.path, "r+", libver="latest")
            return
        self.path = check_output_path(path, overwrite)
        try:
            self.file = h5py.File(self.path, "w", libver="latest")
        except OSError as exc:
            raise OutputPathError(f"cannot create {self.path}: {exc}") from exc
        root = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "torch_version": _torch_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        root.update(attrs or {})
        self.set_attrs("/", root)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.file.id.valid:
            self.file.flush()
            self.file.close()

    def start_streaming(self) -> None:
        """Enter SWMR mode: readers may open the file while records are appended."""
        self.file.flush()
        self.file.swmr_mode = True
        self.streaming = True

    def finish(self) -> None:
        """Leave SWMR mode (close and reopen read-write) to write final arrays and attributes."""
        if self.streaming:
            self.file.close()
            self.file = h5py.File(self.path, "r+", libver="latest")
            self.streaming = False

    def _declaring(self, what):
        if self.streaming:
            raise RuntimeError(f"cannot {what} while streaming (SWMR); declare it first or "
                               "call finish()")

    def set_attrs(self, group: str, attrs: dict) -> None:
        self._declaring("set attributes")
        node = self.file.require_group(group)
        for key, value in attrs.items():
            node.attrs[key] = _attr_value(value)
        self.file.flush()

    def write_arrays(self, group: str, arrays: dict) -> None:
        """Write fixed arrays (``None`` values are skipped) and flush."""
        self._declaring("create datasets")
        node = self.file.require_group(group)
        for key, value in arrays.items():
            if value is None:
                continue
            if key in node:
                del node[key]
            value = np.asarray(value)
            chunks = (min(value.shape[0], 1 << 16),) + value.shape[1:] if value.ndim == 2 else None
            node.create_dataset(key, data=value, chunks=chunks)
        self.file.flush()

    def declare_steps(self, group: str, row: dict) -> None:
        """Create the growing datasets of ``group/steps`` from an example row (no record)."""
        steps = self.file.require_group(f"{group}/steps")
        for key, value in row.items():
            value = _record_value(value)
            if key not in steps:
                self._declaring("create datasets")
                steps.create_dataset(key, shape=(0,) + value.shape, maxshape=(None,) + value.shape,
                                     dtype=value.dtype, chunks=(64,) + value.shape)
        if COMMITTED not in steps:
            self._declaring("create datasets")
            steps.create_dataset(COMMITTED, data=np.zeros(1, dtype=np.int64))

    def committed(self, group: str) -> int:
        """Number of committed records of ``group/steps`` (0 if none)."""
        steps = self.file.get(f"{group}/steps")
        return 0 if steps is None or COMMITTED not in steps else int(steps[COMMITTED][0])

    def append_step(self, group: str, row: dict) -> int:
        """Append one record to ``group/steps`` and commit it; returns the committed count.

        Each value is a scalar or a fixed-shape array. Every dataset is grown and written
        first; the counter is raised last, then the file is flushed.
        """
        self.declare_steps(group, row)
        steps = self.file[f"{group}/steps"]
        count = int(steps[COMMITTED][0])
        for key, value in row.items():
            ds = steps[key]
            ds.resize(count + 1, axis=0)
            ds[count] = _record_value(value)
        steps[COMMITTED][0] = count + 1
        self.file.flush()
        return count + 1


COMMITTED = "committed"


def _refuse_if_locked(path) -> None:
    """Raise :class:`OutputPathError` if a live process holds ``path`` open for writing."""
    import fcntl

    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputPathError(f"{path} is open in another process (a running job?); "
                                  "resume only a run whose process has ended") from exc
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _record_value(value):
    value = np.asarray(value)
    return value.astype(np.float64) if value.dtype.kind == "f" else value


def _torch_version():
    try:
        import torch

        return torch.__version__
    except ImportError:  # the reader side needs no torch
        return "unknown"


def check_disk_space(out, dim: int, capacity: int) -> None:
    """Refuse to start when the output's file system cannot hold ``capacity`` basis vectors of
    ``dim`` float64 values, double-buffered, and two state vectors (before any pass)."""
    import shutil

    need = dim * 2 * capacity * 8 + 2 * dim * 8
    free = shutil.disk_usage(Path(out).resolve().parent).free
    if free < need:
        raise OutputPathError(
            f"not enough disk space for the Lanczos basis in {out}: {need / 2**30:.2f} GiB "
            f"needed ({capacity} columns of {dim} float64 values, double-buffered), "
            f"{free / 2**30:.2f} GiB free")


def shard_state_path(out, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` (> 0) of a run with sharded Lanczos vectors keeps its rows of the
    run's state: ``run.h5`` -> ``run.rank1-of-4.h5``, beside the run's own file (rank 0
    keeps its rows in the run's file)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")


# ---- reading --------------------------------------------------------------------------------
class SpectrumRecord(dict):
    """One group of a spectrum file: arrays by name, plus ``attrs`` and ``steps``."""

    def __init__(self, arrays, attrs, steps):
        super().__init__(arrays)
        self.attrs = attrs
        self.steps = steps

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value == "None":
        return None
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_spectrum(path) -> h5py.File:
    """Open ``path`` read-only (SWMR when possible) and check that it is one of ours."""
    path = Path(path)
    if not path.exists():
        raise SpectrumFileError(f"{path}: no such file")
    try:
        # a plain open first: HDF5 checks the stored end-of-file against the real size
        # only outside SWMR mode, so this is what detects a truncated file
        handle = h5py.File(path, "r", locking=False)  # never block a running writer
    except OSError as exc:
        if "truncated" in str(exc) or "signature" in str(exc):
            raise SpectrumFileError(f"{path} is truncated or not an HDF5 file ({exc})") from exc
        try:  # a file held open by a writer in SWMR mode
            handle = h5py.File(path, "r", libver="latest", swmr=True, locking=False)
        except OSError:
            raise SpectrumFileError(f"{path} is not a readable HDF5 file ({exc})") from exc
    fmt = _decode(handle.attrs.get("format", ""))
    if fmt != FORMAT:
        handle.close()
        raise SpectrumFileError(f"{path} is an HDF5 file but not a lanczos_hessian spectrum "
                                f"(format attribute {fmt!r})")
    version = int(handle.attrs.get("format_version", -1))
    if version > FORMAT_VERSION or version < 1:
        handle.close()
        raise SpectrumFileError(f"{path} has format version {version}; this package reads "
                                f"versions 1 to {FORMAT_VERSION} (upgrade lanczos_hessian)")
    return handle


def read_group(node: h5py.Group) -> SpectrumRecord:
    """Arrays, attributes and committed step records of one run group."""
    arrays, steps = {}, {}
    for key, item in node.items():
        if key == "steps":
            committed = int(item[COMMITTED][0]) if COMMITTED in item else 0
            steps = {k: ds[:committed] for k, ds in item.items() if k != COMMITTED}
        elif isinstance(item, h5py.Dataset):
            arrays[key] = item[()]
    attrs = {k: _decode(v) for k, v in node.attrs.items()}
    return SpectrumRecord(arrays, attrs, steps)


def read_file(path) -> dict:
    """All groups of a spectrum file: ``{"attrs": root attrs, "<run>": SpectrumRecord, ...}``."""
    with open_spectrum(path) as handle:
        try:
            out = {"attrs": {k: _decode(v) for k, v in handle.attrs.items()}}
            for key, item in handle.items():
                if isinstance(item, h5py.Group):
                    out[key] = read_group(item)
        except (OSError, KeyError, RuntimeError) as exc:
            raise SpectrumFileError(f"{path} is damaged or truncated: reading it failed "
                                    f"({exc})") from exc
    return out
