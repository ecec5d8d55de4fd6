"""Diagonal blocks ``H_bb`` of one operator, all served by one pass over the data per step.

For disjoint coordinate sets ``I_1 .. I_K`` (:mod:`lanczos_hessian.blocks.spec`) and vectors
``v_b`` in block ``b``'s space, the products ``H_bb v_b = (H E_b v_b)[I_b]`` (``E_b`` the
embedding of block ``b``'s coordinates into the full space, zeros elsewhere) come from one
application of ``H`` to the ``(M, sum_b c_b)`` block ``[E_1 V_1 | ... | E_K V_K]``: one pass
over the data for every block and every probe.

Each block's solver (the package's Lanczos eigensolver, its SLQ) runs unchanged in its own
thread on a :class:`BlockView`, a torch-native operator of size ``|I_b|``; a view's product
waits until every solver still running has asked for its own, and the last to ask applies the
shared operator once for all of them (:class:`Lockstep`). A solver that finishes leaves the
lockstep, so the pass count is the largest number of steps any block's solver takes: with a
fixed number of steps, exactly the passes of one unblocked run of that many steps.
"""

from __future__ import annotations

import threading

import torch
from scipy.sparse.linalg import LinearOperator


class Lockstep:
    """One shared application of ``op`` for the pending products of all running solvers."""

    def __init__(self, op, blocks):
        self.op, self.blocks = op, list(blocks)
        self.num_passes = 0
        self._cond = threading.Condition()
        self._members = set()
        self._order = {}  # member -> when it joined
        self._pending = {}  # member -> (block index, V)
        self._results = {}
        self._error = None

    def join(self, member) -> None:
        with self._cond:
            self._members.add(member)
            self._order.setdefault(member, len(self._order))

    def leave(self, member) -> None:
        with self._cond:
            self._members.discard(member)
            self._maybe_apply()

    def product(self, member, block: int, V: torch.Tensor) -> torch.Tensor:
        """``H_bb V`` for block ``block``, computed in the next shared pass."""
        with self._cond:
            if self._error is not None:
                raise self._error
            self._pending[member] = (block, V)
            self._maybe_apply()
            while member not in self._results and self._error is None:
                self._cond.wait()
            if member not in self._results:
                raise self._error
            return self._results.pop(member)

    def _maybe_apply(self) -> None:
        """Apply the operator once when every member still running is waiting (under the
        lock: the other threads wait for its result anyway)."""
        if not self._pending or set(self._pending) != self._members:
            return
        # in the order the members joined, not the threads' order of arrival: under
        # torch.distributed every rank must apply the same block
        pending = {m: self._pending[m] for m in sorted(self._pending, key=self._order.get)}
        self._pending = {}
        try:
            self._results.update(self._apply(pending))
        except BaseException as exc:  # every waiting solver fails with it
            self._error = exc
        self._cond.notify_all()

    def _apply(self, pending: dict) -> dict:
        # columns in the order of the solvers, not of their threads' arrival: the same
        # block product in every run, resumed or not
        pending = dict(sorted(pending.items(), key=lambda item: item[0].order))
        M, device = self.op.shape[0], self.op.device
        widths = [V.shape[1] for _, V in pending.values()]
        full = torch.zeros(M, sum(widths), dtype=torch.float64, device=device)
        start = 0
        for (block, V), width in zip(pending.values(), widths):
            rows = self.blocks[block].indices.to(device)
            full[rows, start:start + width] = V.to(device, torch.float64)
            start += width
        out = self.op.apply(full)
        self.num_passes += 1
        results, start = {}, 0
        for member, (block, V), width in zip(pending, pending.values(), widths):
            rows = self.blocks[block].indices.to(device)
            results[member] = out[rows, start:start + width]
            start += width
        return results


class BlockView(LinearOperator):
    """``H_bb`` of one block as a torch-native operator (``apply``, ``shape``, ``device``),
    its products taken through a :class:`Lockstep`; one view per solver, ``order`` its
    columns' place in the shared block product."""

    def __init__(self, lockstep: Lockstep, block: int, order: int = 0):
        self.lockstep, self.block, self.order = lockstep, block, order
        self.device = lockstep.op.device
        self.model_dtype = getattr(lockstep.op, "model_dtype", torch.float64)
        dim = lockstep.blocks[block].dim
        super().__init__(dtype=float, shape=(dim, dim))

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        single = V.ndim == 1
        out = self.lockstep.product(self, self.block, V.reshape(V.shape[0], -1))
        return out.reshape(-1) if single else out

    def _matmat(self, X):
        return self.apply(torch.from_numpy(X).to(torch.float64)).cpu().numpy()

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).reshape(-1)

    def _adjoint(self):
        return self


def run_in_lockstep(op, blocks, tasks) -> list:
    """Run ``tasks`` (``(block index, fn)`` pairs, ``fn(view) -> result``) each in its own
    thread on its own :class:`BlockView`, their products sharing passes; results in order.
    The first exception of any task is raised after every thread has stopped."""
    lockstep = Lockstep(op, blocks)
    views = [BlockView(lockstep, b, order) for order, (b, _) in enumerate(tasks)]
    for view in views:
        lockstep.join(view)
    results, errors = [None] * len(tasks), [None] * len(tasks)

    def work(i, fn):
        try:
            results[i] = fn(views[i])
        except BaseException as exc:
            errors[i] = exc
        finally:
            lockstep.leave(views[i])

    threads = [threading.Thread(target=work, args=(i, fn), daemon=True)
               for i, (_, fn) in enumerate(tasks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results, lockstep.num_passes
