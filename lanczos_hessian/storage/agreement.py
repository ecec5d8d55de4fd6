"""How the ranks of a resumed run agree on the state they continue from.

Every rank of a data-parallel run runs the same recurrence, so after a kill every rank must
restore the same committed state. Two cases:

* replicated vectors: rank 0 writes the run's file; the other ranks read the committed state
  from it before rank 0 reopens it for writing (:func:`read_before_main_reopens`);
* sharded vectors: every rank commits its rows to a file of its own, and a kill can fall
  between two ranks' commits; they continue from the last state all of them committed, the
  minimum over ranks (:func:`agree_on_states`).

Both end in one collective with the error protocol of
:func:`~lanczos_hessian.parallel.distributed.gather_rows`: a rank that fails makes every rank
fail with its message instead of hanging.
"""

from __future__ import annotations

from ..parallel.distributed import current_world, gather_rows
from .checkpoint import ResumeError


def agree_on_states(counts, error, writer, device) -> list:
    """For each of ``counts`` (this rank's committed state counts, or 0/1 flags), the minimum
    over ranks. Ranks a kill caught between two commits differ by one; more is not one run."""
    try:
        table = gather_rows(counts, error, device=device, what="opening the run's files")
    except Exception:
        if writer is not None:
            writer.close()
        raise
    low, high = table.min(dim=0).values, table.max(dim=0).values
    if bool((high - low > 1).any()):
        writer.close()
        raise ResumeError(f"the ranks' files hold states {table.int().tolist()}: more than "
                          "one commit apart, not one run")
    return [int(v) for v in low]


def read_before_main_reopens(read, device=None, default=None):
    """Called by every rank before rank 0 reopens the run's file: the ranks that do not write
    call ``read()`` (they read the committed state) and return its value, rank 0 returns
    ``default``. A barrier opens the reading, one all-reduce with the error protocol closes
    it (a rank that fails fails every rank)."""
    world = current_world()
    if world.size == 1:
        return default
    import torch.distributed as dist

    dist.barrier()
    value, error = default, None
    if not world.is_main:
        try:
            value = read()
        except Exception as exc:  # every rank learns of it, then each raises
            error = exc
    gather_rows([0.0], error, device=device, what="reading the committed state")
    return value
