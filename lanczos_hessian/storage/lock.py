"""One writer per spectrum file: an advisory lock on a sidecar file, held for the whole run.

HDF5's own file lock cannot serve: it is released while a file streams in SWMR mode, which is
most of a run, and a second writer that opens the file then corrupts it. So every writer of
``run.h5`` first locks ``run.h5.lock`` beside it (:class:`WriterLock`), and holds the lock
until it has closed the file:

* the lock is a POSIX record lock (``fcntl.lockf``) on the sidecar. The kernel (or the NFS
  lock manager) releases it when the holding process ends in any way, ``kill -9`` included,
  and it is not inherited by forked children (data-loader workers), so a lock that cannot be
  taken belongs to a live process. A second writer, ``--resume`` or ``--overwrite`` on a file
  that a live process writes is refused at once, with the holder's host, pid, start time and
  command, which the holder writes into the sidecar;
* a sidecar left by a killed writer (its record names a process that is gone) is taken over
  by the next writer: the lock itself is free, and the takeover is logged. Before trusting
  the lock it has taken, a writer checks that the sidecar it locked is still the one at the
  path (a releasing holder removes it), so two writers never both hold it;
* POSIX locks never conflict within one process, so the process also keeps a table of the
  locks it holds: a second writer of the same file in the same process is refused too. The
  command line takes the lock as soon as it starts (:func:`hold`), before building the model,
  and the writers of that command join it (:meth:`WriterLock.join`);
* where the file system does not support locks (``ENOLCK``), the sidecar's existence is the
  lock: a record of a live process, or of another host, refuses; one of a dead process on
  this host is removed and taken over;
* readers never wait for the lock. A reader (or a resume) that finds a file whose HDF5 write
  flags are still set takes the lock for a moment (:func:`no_live_writer`): if it gets it, no
  writer is alive and the flags can be cleared (:mod:`~lanczos_hessian.storage.h5flags`). Its
  record says ``"role": "reader"``, and a writer that meets it waits for it
  (:data:`READER_WAIT`) instead of being refused.

A writer may also keep a *reserve* in its sidecar (:meth:`WriterLock.reserve`): bytes
allocated on the output's file system, released when the disk fills, so that HDF5 can still
flush and close the file cleanly and what was committed stays readable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from ..errors import OutputPathError

try:
    import fcntl
except ImportError:  # not POSIX: the lock file's existence is the lock
    fcntl = None

logger = logging.getLogger(__name__)

SUFFIX = ".lock"
#: Seconds a writer waits for a lock that a reader holds (to clear a killed writer's flags).
READER_WAIT = 2.0
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_HELD: dict = {}  # sidecar path -> WriterLock held by this process


class LockHeldError(OutputPathError):
    """A live process (``holder``: its record, or None) holds the lock of a spectrum file."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


def lock_path(path) -> Path:
    """The sidecar of ``path``: ``run.h5.lock`` beside the file (symbolic links resolved, so
    that two names of one file share one lock)."""
    return Path(os.path.realpath(path) + SUFFIX)


def holder_of(path) -> dict | None:
    """The record of the process that holds (or last held) the lock of ``path``, or None.

    Never opens the lock file in the process that holds it: closing any descriptor of a
    file releases the process's POSIX locks on it."""
    lock = held_here(path)
    if lock is not None:
        return lock.record
    return _read_record(lock_path(path))


def _read_record(sidecar: Path) -> dict | None:
    """The record in ``sidecar``; only for a process that does not hold its lock."""
    try:
        with open(sidecar, "rb") as handle:
            text = handle.read(4096).split(b"\0", 1)[0].split(b"\n", 1)[0]
    except OSError:
        return None
    try:
        record = json.loads(text.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe(record: dict | None) -> str:
    """``process 123 on host node7 (since ..., command: ...)``, or a plain phrase."""
    if not record:
        return "another process (it has not written its name into the lock yet)"
    text = f"process {record.get('pid', '?')} on host {record.get('host', '?')}"
    if record.get("started"):
        text += f" (since {record['started']}"
        text += f", command: {record['command']})" if record.get("command") else ")"
    return text


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists (another user's) or unknown: assume alive
    return True


def _dead_here(record: dict | None) -> bool:
    """The record names a process of this host that no longer exists."""
    return bool(record) and record.get("host") == platform.node() and not _alive(
        record.get("pid"))


class WriterLock:
    """The exclusive lock of one spectrum file (see the module docstring).

    ``acquire()`` raises :class:`~lanczos_hessian.errors.OutputPathError` naming the holder
    when a live process (or, in this process, another writer) holds it; ``release()`` removes
    the sidecar and frees the lock. ``shared=True`` lets the writers this process opens on
    the file join the lock one at a time (:meth:`join`) instead of being refused;
    ``quiet=True`` is a reader's brief hold (no takeover warning, ``"role": "reader"``).
    """

    def __init__(self, path, shared: bool = False, quiet: bool = False):
        self.path = Path(path)
        self.sidecar = lock_path(path)
        self.shared, self.quiet = shared, quiet
        self.writers = 0  # writers of this process using the lock now
        self.reserved = 0
        self._fd = None
        self._fallback = False
        self._record_size = 0
        self.record = None

    # ---- taking and leaving ---------------------------------------------------------------
    def acquire(self) -> "WriterLock":
        key = str(self.sidecar)
        if key in _HELD:
            raise LockHeldError(f"{self.path} is already being written by this process; "
                                "a second writer would corrupt it", _HELD[key].record)
        deadline = time.monotonic() + READER_WAIT
        for _ in range(1000):
            try:
                fd = os.open(self.sidecar, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputPathError(f"cannot create the lock file {self.sidecar} of "
                                      f"{self.path}: {exc.strerror or exc}") from exc
            try:
                if fcntl is None:  # no POSIX locks on this platform
                    raise OSError(errno.ENOSYS, "no fcntl")
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                empty = os.fstat(fd).st_size == 0
                os.close(fd)  # holds no lock: closing it releases nothing of anyone's
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    holder = holder_of(self.path)
                    if (holder is None or holder.get("role") == "reader") and \
                            time.monotonic() < deadline:
                        time.sleep(0.02)  # a reader recovering the file holds it a moment
                        continue
                    raise LockHeldError(
                        f"{self.path} is being written by {describe(holder)}; refusing to "
                        "open it for writing (a second writer, --resume or --overwrite would "
                        "corrupt it): wait for that run to end or stop it", holder) from None
                if exc.errno in _UNSUPPORTED:
                    if empty:  # the file the open above created: not a holder's
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.sidecar)
                    return self._acquire_without_locks()
                raise OutputPathError(f"cannot lock {self.sidecar}: {exc}") from exc
            if not self._still_at_path(fd):  # a releasing holder removed it meanwhile
                os.close(fd)
                continue
            self._fd = fd
            self._take_over(_read_record_fd(fd))
            _HELD[key] = self
            return self
        raise OutputPathError(f"cannot lock {self.sidecar}: it was replaced 1000 times in a row")

    def _still_at_path(self, fd) -> bool:
        try:
            here, mine = os.stat(self.sidecar), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _take_over(self, previous: dict | None) -> None:
        """Write this process's record; log when it replaces a killed holder's."""
        if previous and not self.quiet:
            state = "is gone" if _dead_here(previous) else "holds it no more"
            logger.warning("taking over the lock of %s: its last holder, %s, %s",
                           self.path, describe(previous), state)
        record = {"host": platform.node(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:300], "file": str(self.path),
                  "role": "reader" if self.quiet else "writer"}
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        self._record_size = len(data)
        self.record = record
        self.reserved = 0

    def _acquire_without_locks(self) -> "WriterLock":
        """A file system without locks: the sidecar's existence is the lock."""
        stale = None
        for _ in range(3):
            try:
                fd = os.open(self.sidecar, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644)
            except FileExistsError:
                record = _read_record(self.sidecar)
                if not _dead_here(record):
                    where = ("" if record and record.get("host") == platform.node() else
                             f"; if that process is gone, remove {self.sidecar}")
                    raise LockHeldError(
                        f"{self.path} is being written by {describe(record)} (this file system "
                        f"has no locks: the lock file {self.sidecar} says so){where}",
                        record) from None
                stale = record
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.sidecar)
                continue
            self._fd, self._fallback = fd, True
            self._take_over(stale)
            _HELD[str(self.sidecar)] = self
            return self
        raise OutputPathError(f"cannot create the lock file {self.sidecar}")

    def release(self) -> None:
        """Remove the sidecar and free the lock (the file must be closed first)."""
        if self._fd is None:
            return
        _HELD.pop(str(self.sidecar), None)
        with contextlib.suppress(OSError):
            if self._fallback or self._still_at_path(self._fd):
                os.unlink(self.sidecar)
        os.close(self._fd)  # frees the lock
        self._fd = None
        self.writers = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    # ---- writers of this process ------------------------------------------------------------
    def join(self) -> "WriterLock":
        """One more writer of this process uses the (shared) lock; refused while another does."""
        if not self.shared or self.writers:
            raise LockHeldError(f"{self.path} is already being written by this process; "
                                "a second writer would corrupt it", self.record)
        self.writers += 1
        return self

    def leave(self) -> None:
        self.writers = max(self.writers - 1, 0)

    # ---- the disk-full reserve ------------------------------------------------------------------
    def reserve(self, nbytes: int) -> None:
        """Keep ``nbytes`` allocated in the sidecar (after the holder's record), on the output's
        file system, until :meth:`free_reserve`. Raises ``OSError`` when they do not fit."""
        if self._fd is None or nbytes <= self.reserved:
            return
        try:
            os.posix_fallocate(self._fd, self._record_size, int(nbytes))
        except OSError:
            self.free_reserve()
            raise
        self.reserved = int(nbytes)

    def free_reserve(self) -> bool:
        """Give the reserve back to the file system; True if there was one."""
        if self._fd is None or not self.reserved:
            return False
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._record_size)
        self.reserved = 0
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _read_record_fd(fd) -> dict | None:
    text = os.pread(fd, 4096, 0).split(b"\0", 1)[0].split(b"\n", 1)[0]
    try:
        record = json.loads(text.decode()) if text else None
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def held_here(path) -> WriterLock | None:
    """The lock of ``path`` if this process holds it."""
    return _HELD.get(str(lock_path(path)))


@contextlib.contextmanager
def hold(path, shared: bool = True):
    """Hold the lock of ``path`` for the block (the command line's whole run): the writers
    this process opens on ``path`` meanwhile join it. A lock already held here is reused."""
    lock = held_here(path)
    if lock is not None:
        yield lock
        return
    lock = WriterLock(path, shared=shared).acquire()
    try:
        yield lock
    finally:
        lock.release()


def for_writer(path) -> tuple:
    """``(lock, owned)`` for a writer of ``path``: the shared lock this process holds (joined),
    or a new lock owned by the writer. Raises when a live writer holds it."""
    lock = held_here(path)
    if lock is not None:
        return lock.join(), False
    lock = WriterLock(path).acquire()
    lock.writers = 1
    return lock, True


@contextlib.contextmanager
def no_live_writer(path):
    """Hold the lock of ``path`` for the block, so that no writer can start meanwhile, and
    yield None: the file's writer, if any, is gone. Raise :class:`LockHeldError` when a live
    writer holds it, :class:`OutputPathError` when it cannot be taken."""
    lock = held_here(path)
    if lock is not None:  # this process's own: free unless one of its writers is open
        if lock.writers:
            raise LockHeldError(f"{path} is being written by this process", lock.record)
        yield None
        return
    lock = WriterLock(path, quiet=True).acquire()
    try:
        yield None
    finally:
        lock.release()
