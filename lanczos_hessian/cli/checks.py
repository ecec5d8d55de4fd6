"""Checks made before any model is built or file created: option values, the output's
writer lock, contradictory flags."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

logger = logging.getLogger("lanczos_hessian")


#: Options that must be integers >= 1 (when given), and >= 0.
_POSITIVE = ("k", "k_bottom", "ncv", "max_matvecs", "batch_size", "num_probes", "num_steps",
             "num_examples", "num_classes", "probes_per_pass", "every", "slq_steps",
             "train_batch_size")
_NON_NEGATIVE = ("seed", "deflate_top", "deflate_bottom", "steps", "slq_probes")


def check_args(args) -> None:
    """Refuse an invalid option value before any model is built or file created, naming the
    option (the solvers check the rest, also before any file is created)."""
    for names, low, phrase in ((_POSITIVE, 1, "a positive integer"),
                               (_NON_NEGATIVE, 0, "a non-negative integer")):
        for name in names:
            value = getattr(args, name, None)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be {phrase}, got {value}")
    for name in ("tol", "lr"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise ValueError(f"--{name} must be positive, got {value}")


@contextlib.contextmanager
def writer_lock(args):
    """Rank 0 of a command that writes ``--out`` holds the file's lock from the start, so
    that a second writer, ``--resume`` or ``--overwrite`` on a file a live run writes is
    refused at once, before any model is built (every rank learns of the refusal); the
    command's writers join it (:mod:`lanczos_hessian.storage.lock`)."""
    from ..parallel.distributed import current_world, default_device, gather_rows
    from ..storage.hdf5 import check_output_location, check_resume_path, clear_left_open
    from ..storage.lock import hold

    out, resume = getattr(args, "out", None), getattr(args, "resume", False)
    if args.command == "analyze" or out is None or (resume and not Path(out).exists()):
        yield  # nothing to lock (a resume of a missing file is refused by the run itself)
        return
    world = current_world()
    with contextlib.ExitStack() as stack:
        error = None
        if world.is_main:
            try:
                if not resume:
                    check_output_location(out)
                else:  # a directory or a device, refused before any model is built
                    check_resume_path(out)
                stack.enter_context(hold(out))
                if resume:
                    clear_left_open(out)  # a killed writer's flags, before replicas read
            except Exception as exc:  # noqa: BLE001 (every rank learns of it)
                error = exc
        if world.size > 1:
            gather_rows([0.0], error, device=default_device(), what="locking --out")
        elif error is not None:
            raise error
        yield


def is_main() -> bool:
    """True on the rank that prints and writes (every process outside torchrun)."""
    from ..parallel.distributed import current_world

    return current_world().is_main


def keep_state(args) -> bool:
    """``--keep-state``; ``--drop-state`` (the default since the state is dropped unless kept)
    is accepted with a note, and refused beside ``--keep-state``."""
    if args.drop_state and args.keep_state:
        raise ValueError("--drop-state and --keep-state contradict each other (dropping the "
                         "resume state is the default: pass --keep-state alone to keep it)")
    if args.drop_state:
        logger.warning("--drop-state is the default now (a finished file keeps its resume "
                       "state only with --keep-state); the option will go")
    return args.keep_state


def check_new_output(args) -> None:
    """``--out`` can be created (rank 0, before any work); when it exists, the refusal says
    how to continue the run it holds (``--resume``) besides replacing it (``--overwrite``,
    which deletes what that run committed)."""
    from ..errors import OutputPathError
    from ..storage.hdf5 import check_output_path

    if args.out is None or getattr(args, "resume", False) or not is_main():
        return
    try:
        check_output_path(args.out, args.overwrite)
    except OutputPathError as exc:
        if not Path(args.out).is_file() or not hasattr(args, "resume"):
            raise
        raise OutputPathError(f"{exc}; to continue the run stopped in it, rerun the same "
                              "command with --resume (--overwrite deletes what it "
                              "committed)") from exc
