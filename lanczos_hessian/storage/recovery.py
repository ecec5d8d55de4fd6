"""Opening a spectrum file for reading, and the files a killed writer leaves behind.

A writer killed outside SWMR mode leaves HDF5's "open for write" flags set; readers and
resumes clear them (:func:`recover_left_open`) once the file's lock shows that no writer is
alive. A finished run's resume state is dropped by rewriting the file without it
(:func:`drop_resume_state`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import OutputPathError, SpectrumFileError
from .h5flags import clear_write_flags
from .lock import LockHeldError, describe, no_live_writer
from .paths import empty_shell_hint

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "FORMAT_VERSION", "LEFT_OPEN_WAIT", "open_spectrum", "clear_left_open",
           "recover_left_open", "drop_resume_state", "first_line", "refuse_if_locked",
           "decode_value"]

FORMAT = "lanczos_hessian.spectrum"
FORMAT_VERSION = 1

#: Seconds a reader retries a file that a live writer holds outside streaming mode.
LEFT_OPEN_WAIT = 2.0


class LeftOpen(Exception):
    """The file's superblock says it is open for writing, not in SWMR mode."""


class WriterBusy(SpectrumFileError):
    """A live writer holds the file outside streaming mode."""


def first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def decode_value(value):
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


def refuse_if_locked(path) -> None:
    """Raise :class:`OutputPathError` if a live process holds ``path`` open for writing."""
    import fcntl

    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputPathError(f"{path} is open in another process (a running job?); "
                                  "resume only a run whose process has ended") from exc
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_for_reading(path: Path) -> h5py.File:
    try:
        # a plain open first: HDF5 checks the stored end-of-file against the real size
        # only outside SWMR mode, so this is what detects a truncated file
        return h5py.File(path, "r", locking=False)  # never block a running writer
    except OSError as exc:
        if "truncated" in str(exc) or "signature" in str(exc):
            raise SpectrumFileError(f"{path} is truncated or not an HDF5 file ({exc})"
                                    + empty_shell_hint(path)) from exc
        if "already open for write" not in str(exc):  # damaged: SWMR would retry for minutes
            raise SpectrumFileError(f"{path} is not a readable HDF5 file ({exc})"
                                    + empty_shell_hint(path)) from exc
        try:  # a file held open by a writer in SWMR mode
            return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
        except OSError:
            raise LeftOpen() from exc


def clear_left_open(path) -> None:
    """Clear the write flags a killed writer left in ``path``; for the holder of its lock
    (no other writer can be alive). Refuses a file that a writer of an older version, which
    takes no lock of ours, holds open; leaves a file whose superblock it does not know."""
    refuse_if_locked(path)
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
            raise WriterBusy(
                f"{path} cannot be read at this moment: {describe(exc.holder)} is writing it "
                "outside streaming mode (creating it, or writing the results of a phase); try "
                "again in a moment") from exc
        except OutputPathError as exc:
            raise SpectrumFileError(f"{path} was left open for writing, and whether its writer "
                                    f"is gone cannot be told: {exc}") from exc
        try:
            refuse_if_locked(path)  # a writer of an older version, without our lock
            cleared = clear_write_flags(path)
        except OutputPathError as exc:
            raise WriterBusy(f"{path} cannot be read at this moment: {exc}") from exc
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
            handle = open_for_reading(path)
            break
        except LeftOpen as exc:
            if recovered:
                raise SpectrumFileError(f"{path} is still marked open for writing after its "
                                        "write flags were cleared") from exc
            try:
                recover_left_open(path)
                recovered = True
            except WriterBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a writer between two phases, or another reader recovering
    try:
        fmt = decode_value(handle.attrs.get("format", ""))
        version = int(handle.attrs.get("format_version", -1)) if fmt == FORMAT else None
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        handle.close()
        raise SpectrumFileError(f"{path} is damaged: its attributes cannot be read "
                                f"({first_line(exc)})") from exc
    if fmt != FORMAT:
        handle.close()
        raise SpectrumFileError(f"{path} is an HDF5 file but not a lanczos_hessian spectrum "
                                f"(format attribute {fmt!r})")
    if version > FORMAT_VERSION or version < 1:
        handle.close()
        raise SpectrumFileError(f"{path} has format version {version}; this package reads "
                                f"versions 1 to {FORMAT_VERSION} (upgrade lanczos_hessian)")
    return handle


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
        copy_without_state(src, dst)
    os.replace(tmp, path)


def copy_without_state(src, dst) -> None:
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name, item in src.items():
        if isinstance(item, h5py.Group):
            if name != "state":
                copy_without_state(item, dst.create_group(name))
        else:
            src.copy(item, dst, name=name)
