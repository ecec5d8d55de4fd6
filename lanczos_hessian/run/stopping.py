"""Stopping a run on a signal at its next safe point.

A run with a file commits its state after every pass over the data, so the pass after a
signal need not be lost or damaged: :func:`stop_on_signals` makes SIGINT (Ctrl-C), SIGTERM
and SIGUSR1 (a scheduler's warning before its time limit, e.g. SLURM's ``--signal``) ask
the run to stop, and :func:`at_safe_point` (called after every commit) raises
:class:`~lanczos_hessian.errors.RunInterrupted` there. The exception unwinds the run: its
file is closed and its lock released, and ``--resume`` continues it bit for bit. A second
SIGINT stops at once (what was committed stays). Outside a run's passes (the model being
built, the results being written) a signal stops at once as well.

Handlers are installed only in the main thread of a single process: under
``torchrun`` the ranks would stop at different commits, so there the default handling
(the launcher ends every rank) stays.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from ..errors import RunInterrupted

logger = logging.getLogger(__name__)

__all__ = ["STOP_SIGNALS", "stop_on_signals", "passes", "at_safe_point", "signal_name"]

#: The signals that stop a run at its next safe point.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))


class _Requests:
    """What the handlers saw: the pending signal, and whether a run is between commits."""

    signum: int | None = None
    depth = 0  # nested stop_on_signals
    passes = 0  # > 0 while a run commits after every pass


_requests = _Requests()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handle(signum, frame) -> None:
    """First signal during passes: stop at the next commit. Otherwise (a second SIGINT, or
    no pass running): stop now."""
    if _requests.passes and (_requests.signum is None or signum != signal.SIGINT):
        first = _requests.signum is None
        _requests.signum = _requests.signum or signum
        if first:
            logger.warning("%s received: stopping after the pass under way is committed%s",
                           signal_name(signum),
                           " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
        return
    raise RunInterrupted(f"stopped by {signal_name(signum)}", signum, committed=False)


@contextlib.contextmanager
def stop_on_signals():
    """While inside, :data:`STOP_SIGNALS` stop the run (module docstring); the former
    handlers come back after. Nested uses share the outer one's handlers; a thread other
    than the main one, or a process of a group of several, installs nothing."""
    from ..parallel.distributed import current_world

    usable = (threading.current_thread() is threading.main_thread()
              and current_world().size == 1)
    if not usable or _requests.depth:
        _requests.depth += usable
        try:
            yield
        finally:
            _requests.depth -= usable
        return
    former = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _requests.signum, _requests.depth = None, 1
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _handle)
        yield
    finally:
        for signum, handler in former.items():
            signal.signal(signum, handler)
        _requests.signum, _requests.depth = None, 0


@contextlib.contextmanager
def passes():
    """Marks a run's passes: a signal inside waits for :func:`at_safe_point`."""
    _requests.passes += 1
    try:
        yield
    finally:
        _requests.passes -= 1


def at_safe_point(finished: bool = False) -> None:
    """Called after every commit: raise :class:`RunInterrupted` when a stop was asked for
    (not after the last commit: the run then writes its results and ends)."""
    if _requests.signum is not None and not finished:
        signum = _requests.signum
        raise RunInterrupted(f"stopped by {signal_name(signum)} after a committed pass", signum)
