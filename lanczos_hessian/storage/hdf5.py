"""HDF5 spectrum files: an append-only writer with a committed counter, and a reader.

Layout (format ``lanczos_hessian.spectrum``, version :data:`FORMAT_VERSION`)::

    /                       attrs: format, format_version, package_version, torch_version,
                                   created, command, and the run's provenance (num_params,
                                   num_samples, loss, reduction, dtype, seed, world_size, ...)
    /<run>/                 one group per computation ("eigs", "slq", ...); attrs: its
                            settings and, once finished, its timings and "complete" = True
    /<run>/<name>           fixed arrays written once (e.g. eigenvalues, residual_bounds)
    /<run>/steps/<name>     growing records, one row per operator application; the
                            one-element dataset steps/committed counts the complete rows
    /<run>/state/...        the resume state of a run (checkpoint.py): present while it
                            runs, dropped when it finishes unless kept (keep_state=True)

Every dataset carries the attributes ``description``, ``units`` and ``order``
(:mod:`~lanczos_hessian.storage.schema`); attributes hold numbers as numbers (an absent
attribute means "not set", e.g. no ``max_matvecs`` cap), and ``docs/FORMAT.md`` is the
written specification of every group, dataset and attribute.

A record is appended by resizing every dataset of ``steps``, writing the row, then raising
the counter ``steps/committed`` (a one-element dataset) and flushing. Readers trust that
counter only, so a file cut off by a crash or ``kill -9`` is readable up to its last
committed step. Long runs stream in HDF5's SWMR mode, so another process can follow them.

One process writes a file: every :class:`SpectrumWriter` holds the file's lock
(:mod:`~lanczos_hessian.storage.lock`) while it is open. A writer killed outside SWMR mode
(creating the file, between two phases, writing results) leaves HDF5's "open for write" flags
set, which makes HDF5 refuse the file; readers and resumes clear them
(:func:`recover_left_open`) once the lock shows that no writer is alive. A full disk ends a
writer with :class:`~lanczos_hessian.errors.DiskFullError` after a clean close (its reserve
given back), and a write that HDF5 cannot do otherwise is a :class:`SpectrumFileError`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from .._version import __version__
from ..errors import DiskFullError, LanczosHessianError, OutputPathError, SpectrumFileError
from .h5flags import clear_write_flags
from .lock import LockHeldError, describe, for_writer, no_live_writer
from .schema import annotate

logger = logging.getLogger(__name__)

FORMAT = "lanczos_hessian.spectrum"
FORMAT_VERSION = 1

#: Bytes every writer keeps in reserve on its output's file system (in its lock file, see
#: :mod:`~lanczos_hessian.storage.lock`), given back when the disk fills so that HDF5 can
#: still write what it holds in its caches and close the file cleanly.
DEFAULT_RESERVE = 1 << 18


def check_output_path(path, overwrite: bool = False) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be created (before any work)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputPathError(f"output file {path} exists; pass overwrite=True (--overwrite) "
                              "to replace it, or choose another path")
    return check_output_location(path)


def check_output_location(path) -> Path:
    """The checks of :func:`check_output_path` but whether the file exists: not a directory,
    not a symbolic link, in a writable directory of a file system that holds files."""
    path = Path(path)
    if path.is_symlink():
        raise OutputPathError(f"output path {path} is a symbolic link (to "
                              f"{os.readlink(path)}); refusing to write through it: pass the "
                              "target's own path, or remove the link")
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write {path}: directory {parent} is not writable")
    try:
        blocks = os.statvfs(parent).f_blocks
    except OSError:
        blocks = 1
    if blocks == 0:
        raise OutputPathError(f"cannot write {path}: directory {parent} is on a file system of "
                              "size 0 (a virtual file system such as /proc or /sys holds no "
                              "files); choose another path")
    return path


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
        if _is_numeric_sequence(value):
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


class _Misuse(RuntimeError):
    """A writer used against its protocol (a bug of the caller, not of the file)."""


def _guard_disk(method):
    """Turn a full disk inside ``method`` into :class:`DiskFullError` with the file closed,
    and another failure of HDF5 into :class:`SpectrumFileError`."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (LanczosHessianError, _Misuse):
            raise
        except Exception as exc:
            if is_disk_full(exc):
                self._disk_full(exc)
            if isinstance(exc, (OSError, RuntimeError, KeyError)):  # HDF5 could not do it
                raise SpectrumFileError(
                    f"{self.path}: {method.__name__.replace('_', ' ')} failed "
                    f"({_first_line(exc)}); the file may be damaged") from exc
            raise

    return guarded


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large",
                   "errno = 28,", "errno = 122,", "errno = 27,")


def is_disk_full(exc) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
                                        f"{_first_line(exc)}") from exc
            return
        check_output_path(self.path, overwrite)
        self._keep_reserve(reserve, space)
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
        reason = _first_line(exc)
        raise DiskFullError(
            f"the file system of {self.path} is full ({reason}); the run stopped and the file "
            f"was {state}{'' if freed else ' without a reserve'}: everything committed before "
            "stays readable (lanczos-hessian analyze); free some space, then continue the run "
            "with --resume (resume=True)") from exc

    @_guard_disk
    def start_streaming(self) -> None:
        """Enter SWMR mode: readers may open the file while records are appended."""
        self.file.flush()
        self.file.swmr_mode = True
        self.streaming = True

    @_guard_disk
    def finish(self) -> None:
        """Leave SWMR mode (close and reopen read-write) to write final arrays and attributes."""
        if self.streaming:
            self.file.close()
            self.file = h5py.File(self.path, "r+", libver="latest")
            self.streaming = False

    def _declaring(self, what):
        if self.streaming:
            raise _Misuse(f"cannot {what} while streaming (SWMR); declare it first or "
                          "call finish()")

    @_guard_disk
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

    @_guard_disk
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
            value = _record_value(value)
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

    @_guard_disk
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


def drop_resume_state(path) -> None:
    """Rewrite the finished file at ``path`` without the resume state of its runs.

    A resumable run commits its bases and vectors under ``<group>/state`` (for SLQ ``P``
    bases of ``m`` vectors of ``M`` numbers, far more than its results). Once the run is
    complete they serve nothing, so the file keeps results, records and provenance only. HDF5
    does not give back the space of deleted objects, hence a copy without them, which then
    replaces the file in one ``os.replace`` (the file is whole at every moment).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.without-state")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver="latest") as dst:
        _copy_without_state(src, dst)
    os.replace(tmp, path)


def _copy_without_state(src, dst) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name, item in src.items():
        if isinstance(item, h5py.Group):
            if name != "state":
                _copy_without_state(item, dst.create_group(name))
        else:
            src.copy(item, dst, name=name)


def check_disk_space(out, dim: int, capacity: int, reserve: int = 0) -> None:
    """Refuse to start when the output's file system cannot hold ``capacity`` basis vectors of
    ``dim`` float64 values, double-buffered, and two state vectors (before any pass), plus
    the writer's ``reserve``."""
    import shutil

    need = dim * 2 * capacity * 8 + 2 * dim * 8 + reserve
    free = shutil.disk_usage(Path(out).resolve().parent).free
    if free < need:
        raise OutputPathError(
            f"not enough disk space for the Lanczos basis in {out}: {format_bytes(need)} "
            f"needed ({capacity} columns of {dim} float64 values, double-buffered, and a "
            f"reserve of {format_bytes(reserve)}), {format_bytes(free)} free")


def check_free_space(out, need: int, what: str) -> None:
    """Refuse to write ``out`` when its file system has fewer than ``need`` bytes free."""
    import shutil

    try:
        free = shutil.disk_usage(Path(out).resolve().parent).free
    except OSError:
        return  # cannot tell; the reserve and the disk-full handling still hold
    if free < need:
        raise OutputPathError(f"not enough disk space for {what} of {out}: "
                              f"{format_bytes(need)} needed, {format_bytes(free)} free")


def format_bytes(n: float) -> str:
    """``123 bytes``, ``4.0 KiB``, ``12.5 MiB``, ``3.20 GiB``."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)):
        if n < 1024 * scale or unit == "TiB":
            return f"{n / scale:.{2 if unit in ('GiB', 'TiB') else 1}f} {unit}"
    return f"{n} bytes"


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
    """An attribute as a Python value: numbers, strings, lists of strings. Files written
    before numbers were stored as numbers hold "None" and JSON strings: decoded too."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
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


#: Seconds a reader retries a file that a live writer holds outside streaming mode.
LEFT_OPEN_WAIT = 2.0


class _LeftOpen(Exception):
    """The file's superblock says it is open for writing, not in SWMR mode."""


class _WriterBusy(SpectrumFileError):
    """A live writer holds the file outside streaming mode."""


def _open_for_reading(path: Path) -> h5py.File:
    try:
        # a plain open first: HDF5 checks the stored end-of-file against the real size
        # only outside SWMR mode, so this is what detects a truncated file
        return h5py.File(path, "r", locking=False)  # never block a running writer
    except OSError as exc:
        if "truncated" in str(exc) or "signature" in str(exc):
            raise SpectrumFileError(f"{path} is truncated or not an HDF5 file ({exc})") from exc
        if "already open for write" not in str(exc):  # damaged: SWMR would retry for minutes
            raise SpectrumFileError(f"{path} is not a readable HDF5 file ({exc})") from exc
        try:  # a file held open by a writer in SWMR mode
            return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
        except OSError:
            raise _LeftOpen() from exc


def clear_left_open(path) -> None:
    """Clear the write flags a killed writer left in ``path``; for the holder of its lock
    (no other writer can be alive). Refuses a file that a writer of an older version, which
    takes no lock of ours, holds open; leaves a file whose superblock it does not know."""
    _refuse_if_locked(path)
    try:
        clear_write_flags(path)
    except (ValueError, OSError):
        pass  # not a superblock this package writes: open_spectrum says what it is


def recover_left_open(path) -> None:
    """Clear the write flags of ``path``, left set by a writer outside SWMR mode (killed while
    creating the file, between two phases or while writing its results), once the file's
    lock shows that no writer is alive (and holding it meanwhile); else raise
    :class:`SpectrumFileError` naming the writer."""
    path = Path(path)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(no_live_writer(path))
        except LockHeldError as exc:
            raise _WriterBusy(
                f"{path} cannot be read at this moment: {describe(exc.holder)} is writing it "
                "outside streaming mode (creating it, or writing the results of a phase); try "
                "again in a moment") from exc
        except OutputPathError as exc:
            raise SpectrumFileError(f"{path} was left open for writing, and whether its writer "
                                    f"is gone cannot be told: {exc}") from exc
        try:
            _refuse_if_locked(path)  # a writer of an older version, without our lock
            cleared = clear_write_flags(path)
        except OutputPathError as exc:
            raise _WriterBusy(f"{path} cannot be read at this moment: {exc}") from exc
        except ValueError as exc:
            raise SpectrumFileError(f"{path} is damaged: {exc}") from exc
        except OSError as exc:
            raise SpectrumFileError(
                f"{path} was left open for writing by a writer that is gone; clearing its "
                f"write flags needs write access to it ({exc.strerror or exc})") from exc
    if cleared:
        logger.info("%s: cleared the write flags left by a writer that is gone", path)


def open_spectrum(path) -> h5py.File:
    """Open ``path`` read-only (SWMR when possible) and check that it is one of ours.

    A file left open for writing by a writer that is gone (killed outside SWMR mode) is
    recovered first (:func:`recover_left_open`)."""
    path = Path(path)
    if not path.exists():
        raise SpectrumFileError(f"{path}: no such file")
    deadline, recovered = time.monotonic() + LEFT_OPEN_WAIT, False
    while True:
        try:
            handle = _open_for_reading(path)
            break
        except _LeftOpen as exc:
            if recovered:
                raise SpectrumFileError(f"{path} is still marked open for writing after its "
                                        "write flags were cleared") from exc
            try:
                recover_left_open(path)
                recovered = True
            except _WriterBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a writer between two phases, or another reader recovering
    try:
        fmt = _decode(handle.attrs.get("format", ""))
        version = int(handle.attrs.get("format_version", -1)) if fmt == FORMAT else None
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        handle.close()
        raise SpectrumFileError(f"{path} is damaged: its attributes cannot be read "
                                f"({_first_line(exc)})") from exc
    if fmt != FORMAT:
        handle.close()
        raise SpectrumFileError(f"{path} is an HDF5 file but not a lanczos_hessian spectrum "
                                f"(format attribute {fmt!r})")
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
    return SpectrumRecord(arrays, decode_attrs(node.attrs), steps)


def decode_attrs(attrs) -> dict:
    """A group's attributes as Python values (:func:`_decode`), with the ``seconds_<phase>``
    attributes also gathered into a ``timings`` dict, as results hold them (a file written
    before they were numbers holds ``timings`` as a JSON string: decoded alike)."""
    out = {k: _decode(v) for k, v in attrs.items()}
    seconds = {k[len("seconds_"):]: v for k, v in out.items() if k.startswith("seconds_")}
    if seconds and "timings" not in out:
        out["timings"] = seconds
    return out


def read_file(path) -> dict:
    """All groups of a spectrum file: ``{"attrs": root attrs, "<run>": SpectrumRecord, ...}``."""
    with open_spectrum(path) as handle:
        try:
            out = {"attrs": decode_attrs(handle.attrs)}
            for key, item in handle.items():
                if isinstance(item, h5py.Group):
                    out[key] = read_group(item)
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise SpectrumFileError(f"{path} is damaged or truncated: reading it failed "
                                    f"({_first_line(exc)})") from exc
    return out
