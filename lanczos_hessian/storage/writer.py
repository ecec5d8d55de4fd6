"""Writing a spectrum file: :class:`SpectrumWriter`, append-only with a committed counter,
streaming in SWMR mode, holding the file's lock, closing cleanly when the disk fills."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from ..errors import DiskFullError, LanczosHessianError, OutputPathError, SpectrumFileError
from .lock import for_writer
from .paths import check_free_space, check_output_location, check_output_path, format_bytes
from .reader import COMMITTED
from .recovery import FORMAT, FORMAT_VERSION, clear_left_open, first_line, open_spectrum
from .schema import annotate

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RESERVE", "SpectrumWriter", "attr_items", "timing_attrs", "is_disk_full"]

#: Bytes every writer keeps in reserve on its output's file system (in its lock file, see
#: :mod:`~lanczos_hessian.storage.lock`), given back when the disk fills so that HDF5 can
#: still write what it holds in its caches and close the file cleanly.
DEFAULT_RESERVE = 1 << 18


def attr_items(key: str, value):
    """``(name, value)`` pairs to store for the attribute ``key``: numbers stay numbers.

    ``None`` stores nothing (an absent attribute means "not set": no cap, no seed, ...); a
    dict is flattened into ``key_<sub>`` attributes (recursively); a sequence of numbers is a
    numeric array, a sequence of strings an array of strings, any other sequence an array of
    its items' ``str``; a path or ``str`` subclass is a plain string.
    """
    if value is None:
        return []
    if isinstance(value, dict):
        return [pair for sub, item in value.items() for pair in attr_items(f"{key}_{sub}", item)]
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return [(key, np.zeros(0))]
        if is_numeric_sequence(value):
            return [(key, np.asarray(value))]
        if all(isinstance(v, str) for v in value):
            return [(key, np.asarray(value, dtype=h5py.string_dtype()))]
        return [(key, np.asarray([str(v) for v in value], dtype=h5py.string_dtype()))]
    if isinstance(value, (str, Path)):  # also str subclasses such as torch's version
        return [(key, str(value))]
    return [(key, value)]


def timing_attrs(timings: dict) -> dict:
    """A result's ``timings`` (seconds by phase) as numeric attributes ``seconds_<phase>``."""
    return {f"seconds_{phase}": float(value) for phase, value in (timings or {}).items()}


class WriterMisuse(RuntimeError):
    """A writer used against its protocol (a bug of the caller, not of the file)."""


def guard_disk(method):
    """Turn a full disk inside ``method`` into :class:`DiskFullError` with the file closed,
    and another failure of HDF5 into :class:`SpectrumFileError`."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (LanczosHessianError, WriterMisuse):
            raise
        except Exception as exc:
            if is_disk_full(exc):
                self._disk_full(exc)
            if isinstance(exc, (OSError, RuntimeError, KeyError)):  # HDF5 could not do it
                raise SpectrumFileError(
                    f"{self.path}: {method.__name__.replace('_', ' ')} failed "
                    f"({first_line(exc)}); the file may be damaged") from exc
            raise

    return guarded


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large",
                   "errno = 28,", "errno = 122,", "errno = 27,")


def is_disk_full(exc) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_numeric_sequence(value):
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
    reserve : int
        Bytes kept free on the file's file system for a clean close when the disk fills.
    space : int
        Bytes the caller expects to write, checked free (with ``reserve``) before opening.

    Every writer holds the file's exclusive lock (:mod:`~lanczos_hessian.storage.lock`)
    from before it opens the file until it has closed it: a file that a live process writes
    is refused. When the disk fills, the writer gives its reserve back, closes the file (what
    was committed stays readable) and raises :class:`~lanczos_hessian.errors.DiskFullError`.
    """

    def __init__(self, path, attrs: dict | None = None, overwrite: bool = False,
                 append: bool = False, reserve: int = DEFAULT_RESERVE, space: int = 0):
        self.path = Path(os.path.realpath(path)) if append else Path(path)
        self.streaming = False
        self.file = None
        if not append:
            check_output_location(self.path)  # the lock file goes beside it
        self.lock, self._owns_lock = for_writer(self.path)
        try:
            self._open(attrs, overwrite, append, reserve, space)
        except BaseException:
            self._release_lock()
            raise

    def _open(self, attrs, overwrite, append, reserve, space):
        if append:
            if not self.path.exists():
                raise SpectrumFileError(f"{self.path}: no such file")
            clear_left_open(self.path)  # this process holds the lock: no writer is alive
            open_spectrum(self.path).close()  # ours, readable, compatible
            self._keep_reserve(reserve, space)
            try:
                self.file = h5py.File(self.path, "r+", libver="latest")
            except OSError as exc:
                raise SpectrumFileError(f"{self.path} cannot be opened to continue it: "
                                        f"{first_line(exc)}") from exc
            return
        check_output_path(self.path, overwrite)
        self._keep_reserve(reserve, space)
        partial = creating_path(self.path)
        try:
            self.file = h5py.File(partial, "w", libver="latest")
        except OSError as exc:
            raise OutputPathError(f"cannot create {self.path}: {exc}") from exc
        try:
            self._write_root(attrs)
            self.file.close()
            os.replace(partial, self.path)  # whole, with its header, or not there at all
            self.file = h5py.File(self.path, "r+", libver="latest")
        except BaseException:
            if self.file is not None and self.file.id.valid:
                self.file.close()
            partial.unlink(missing_ok=True)
            raise

    def _write_root(self, attrs) -> None:
        """The root group's format, versions, creation and the caller's provenance."""
        root = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "torch_version": torch_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        root.update(attrs or {})
        self.set_attrs("/", root)

    def _keep_reserve(self, reserve: int, space: int) -> None:
        check_free_space(self.path, reserve + space, "the file and its reserve")
        try:
            self.lock.reserve(reserve)
        except OSError as exc:
            raise DiskFullError(f"cannot reserve {format_bytes(reserve)} beside {self.path} "
                                f"({exc.strerror or exc}): the disk is full") from exc

    def _release_lock(self) -> None:
        lock, self.lock = self.lock, None  # once, however often the writer is closed
        if lock is None:
            return
        if self._owns_lock:
            lock.release()
        else:
            lock.leave()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            self._disk_full(exc)
        self.close()

    def close(self):
        try:
            if self.file is not None and self.file.id.valid:
                try:
                    self.file.flush()
                    self.file.close()
                except Exception as exc:
                    if is_disk_full(exc):
                        self._disk_full(exc)
                    raise
        finally:
            self._release_lock()

    def _disk_full(self, exc):
        """The disk filled: give the reserve back so that HDF5 can write what its caches hold
        and close the file cleanly; raise :class:`DiskFullError`."""
        freed = self.lock.free_reserve() if self.lock is not None else False
        state = "closed cleanly"
        try:
            if self.file is not None and self.file.id.valid:
                self.file.close()
        except Exception as second:  # noqa: BLE001 (reported in the message)
            state = f"could not be closed cleanly ({second})"
        finally:
            self._release_lock()
        reason = first_line(exc)
        raise DiskFullError(
            f"the file system of {self.path} is full ({reason}); the run stopped and the file "
            f"was {state}{'' if freed else ' without a reserve'}: everything committed before "
            "stays readable (lanczos-hessian analyze); free some space, then continue the run "
            "with --resume (resume=True)") from exc

    @guard_disk
    def start_streaming(self) -> None:
        """Enter SWMR mode: readers may open the file while records are appended."""
        self.file.flush()
        self.file.swmr_mode = True
        self.streaming = True

    @guard_disk
    def finish(self) -> None:
        """Leave SWMR mode (close and reopen read-write) to write final arrays and attributes."""
        if self.streaming:
            self.file.close()
            self.file = h5py.File(self.path, "r+", libver="latest")
            self.streaming = False

    def _declaring(self, what):
        if self.streaming:
            raise WriterMisuse(f"cannot {what} while streaming (SWMR); declare it first or "
                          "call finish()")

    @guard_disk
    def set_attrs(self, group: str, attrs: dict) -> None:
        self._declaring("set attributes")
        node = self._group(group)
        for key, value in attrs.items():
            pairs = attr_items(key, value)
            if not pairs and key in node.attrs:
                del node.attrs[key]  # None: the attribute is absent
            for name, item in pairs:
                node.attrs[name] = item
        self.file.flush()

    def _group(self, path: str):
        """The group at ``path``, created with its declared description when new."""
        node = self.file.require_group(path)
        annotate(node)
        return node

    @guard_disk
    def write_arrays(self, group: str, arrays: dict, meta: dict | None = None) -> None:
        """Write fixed arrays (``None`` values are skipped) and flush. Each dataset gets its
        ``description``, ``units`` and ``order`` from ``meta[name]`` (a
        :class:`~lanczos_hessian.storage.schema.Declared` or a dict), else from the
        declarations of :mod:`~lanczos_hessian.storage.schema`."""
        self._declaring("create datasets")
        node = self._group(group)
        for key, value in arrays.items():
            if value is None:
                continue
            if key in node:
                del node[key]
            value = np.asarray(value)
            chunks = (min(value.shape[0], 1 << 16),) + value.shape[1:] if value.ndim == 2 else None
            annotate(node.create_dataset(key, data=value, chunks=chunks),
                     (meta or {}).get(key))
        self.file.flush()

    def declare_steps(self, group: str, row: dict) -> None:
        """Create the growing datasets of ``group/steps`` from an example row (no record)."""
        steps = self.file.get(f"{group}/steps")
        if steps is None:
            self._declaring("create datasets")
            self._group(group)
            steps = self._group(f"{group}/steps")
        for key, value in row.items():
            value = record_value(value)
            if key not in steps:
                self._declaring("create datasets")
                annotate(steps.create_dataset(key, shape=(0,) + value.shape,
                                              maxshape=(None,) + value.shape, dtype=value.dtype,
                                              chunks=(64,) + value.shape))
        if COMMITTED not in steps:
            self._declaring("create datasets")
            annotate(steps.create_dataset(COMMITTED, data=np.zeros(1, dtype=np.int64)))

    def committed(self, group: str) -> int:
        """Number of committed records of ``group/steps`` (0 if none)."""
        steps = self.file.get(f"{group}/steps")
        return 0 if steps is None or COMMITTED not in steps else int(steps[COMMITTED][0])

    @guard_disk
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
            ds[count] = record_value(value)
        steps[COMMITTED][0] = count + 1
        self.file.flush()
        return count + 1


def creating_path(path) -> Path:
    """Where a new file is written until its header is complete, then renamed to ``path``
    (``run.h5`` -> ``.run.h5.creating``): a kill at creation leaves no file at ``path`` that
    would lock the rerun out, only this hidden one, which the rerun overwrites."""
    path = Path(path)
    return path.with_name(f".{path.name}.creating")


def record_value(value):
    value = np.asarray(value)
    return value.astype(np.float64) if value.dtype.kind == "f" else value


def torch_version():
    try:
        import torch

        return torch.__version__
    except ImportError:  # the reader side needs no torch
        return "unknown"
