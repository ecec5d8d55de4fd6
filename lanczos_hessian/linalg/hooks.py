"""What a solver run is plugged into: where its bases live, where it commits, which rows it holds.

A plain call of :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh` or
:func:`~lanczos_hessian.linalg.slq.slq` needs none of this: the bases live in memory on the
operator's device, nothing is committed, and every vector is whole. The run layer
(:mod:`lanczos_hessian.run`) decides these once per run (a file to commit to, a basis on disk,
vectors sharded across ranks) and hands them to the solver as one :class:`Hooks`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hooks:
    """The plumbing of one solver run.

    Attributes
    ----------
    bases : callable, optional
        ``bases(i, dim, capacity)`` returns the solver's ``i``-th basis store
        (:class:`~lanczos_hessian.linalg.basis.Basis`): the eigensolver's one (``i = 0``) or
        SLQ probe ``i``'s; ``dim`` is this process's rows. Default: in memory.
    checkpoint : object, optional
        ``restore(solver)`` before the first step and ``commit(solver, progress, finished)``
        after every step (:class:`~lanczos_hessian.storage.checkpoint.Checkpointer`).
    shard : Whole, optional
        The rows of every vector this process holds
        (:class:`~lanczos_hessian.parallel.sharding.Shard` splits them across ranks).
    """

    bases: object = None
    checkpoint: object = None
    shard: object = None


NO_HOOKS = Hooks()
