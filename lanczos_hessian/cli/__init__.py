"""Command line: ``lanczos-hessian <command>`` (also ``python -m lanczos_hessian``).

Commands: ``demo`` (the embedded default), ``eigs`` (eigenpairs of a problem's curvature),
``slq`` (its spectral density by stochastic Lanczos quadrature, optionally deflated) and
``analyze`` (summaries and figures of saved files, offline).
Runs unchanged under ``torchrun --nproc-per-node N -m lanczos_hessian ...``: the process
group is started from the environment, the data is sharded exactly across ranks, and only
rank 0 prints and writes.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from ..errors import LanczosHessianError, RunInterrupted
from .checks import check_args, writer_lock
from .commands import COMMANDS
from .options import build_parser
from ..run.stopping import stop_on_signals

__all__ = ["build_parser", "main", "run"]

logger = logging.getLogger("lanczos_hessian")


def configure_logging(verbose: bool) -> None:
    """Warnings (with ``-v``: information) of the package's loggers to stderr."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def run() -> None:
    """The ``lanczos-hessian`` command: :func:`main`, then exit with its code (see
    :func:`~lanczos_hessian.parallel.distributed.exit_process` for runs under ``torchrun``)."""
    from ..parallel.distributed import exit_process

    exit_process(main())


def closing_line_only(echo):
    """``--quiet``: of what a command prints, only its closing line ("written to ...: headline
    numbers", or "result: ..." without ``--out``)."""

    def quiet(*args, **kwargs):
        text = " ".join(str(a) for a in args)
        if text.startswith(("written to", "figures written to", "result:")):
            echo(*args, **kwargs)

    return quiet


def stopped_line(exc: RunInterrupted, args, argv) -> str:
    """The one line a run stopped by a signal prints: what stopped it and how to continue
    (the same command with ``--resume``, without ``--overwrite``)."""
    out = getattr(args, "out", None)
    if out is None or not hasattr(args, "resume"):
        return f"{exc} (nothing to resume: rerun the command)"
    if not os.path.exists(out):
        return f"{exc} before {out} was created: rerun the command"
    again = [a for a in argv if a != "--overwrite"] + ([] if args.resume else ["--resume"])
    return (f"{exc}; {out} keeps every committed pass and is unlocked; continue with: "
            f"{shlex.join(['lanczos-hessian', *again])}")


def main(argv=None) -> int:
    from ..parallel.distributed import current_world, group_running, init_from_env, shutdown

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    ours = not group_running()  # a group started here is ended here
    try:
        init_from_env(timeout_s=args.timeout)
    except ValueError as exc:
        print(f"lanczos-hessian: error: {exc}", file=sys.stderr)
        return 2
    echo = print if current_world().is_main else (lambda *a, **k: None)
    if getattr(args, "quiet", False):
        args.no_progress = True
        echo = closing_line_only(echo)
    if getattr(args, "log_every", None) is not None:
        if not args.log_every > 0:
            print(f"lanczos-hessian: error: --log-every must be a positive number of seconds, "
                  f"got {args.log_every}", file=sys.stderr)
            return 2
        os.environ["LANCZOS_HESSIAN_LOG_EVERY"] = str(args.log_every)
    orderly = False
    try:
        check_args(args)
        with stop_on_signals(), writer_lock(args):
            COMMANDS[args.command](args, echo)
        orderly = True
    except RunInterrupted as exc:
        print(f"lanczos-hessian {args.command}: {stopped_line(exc, args, argv)}",
              file=sys.stderr)
        return exc.exit_status
    except (LanczosHessianError, ValueError, FileNotFoundError, ImportError, MemoryError) as exc:
        print(f"lanczos-hessian {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if ours:
            shutdown(orderly)
    return 0
