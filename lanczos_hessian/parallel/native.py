"""Hessian-vector products taken on parameter shards: no vector or model of full length per rank.

The math. Let the ``W`` ranks hold the parameters ``w`` as ``Shard(0)`` chunks ``w_r``
(:mod:`lanczos_hessian.parallel.layout`) and the data as exact shards ``D_r``; the full-data
objective is ``L(w) = c sum_r sum_{B in D_r} |B| l_B(w)`` (``c = 1/N`` for ``mean``, and
``1`` in place of ``|B|`` for ``sum``). Each block of the model (a unit: below) gathers its
parameters in a forward pre-hook, ``w = all_gather_r(w_r)``, written
``DTensor.from_local(w_r).full_tensor(grad_placements=[Partial()])``: its backward is a
reduce-scatter, so differentiating a rank's batch loss with respect to its own leaves
``w_r`` gives the rank's rows of the gradient **summed over the ranks' batches** taken in
the same step. Hence, with every rank in step ``k`` on its batch ``B_{r,k}`` with weight
``a_{r,k}`` (``|B|``, ``1``, or ``0`` for padding):

    g_r = d/dw_r sum_s a_{s,k} l_{B_{s,k}}(w)                (rank r's rows of the gradient)
    (H v)_r += d/dw_r (sum_s g_s . v_s)                         (reverse over reverse)

and the sum over steps, times ``c``, is rank ``r``'s rows of ``H v`` for the full data set,
computed from rank ``r``'s rows ``v_r`` of ``v`` alone; the inner product ``sum_s g_s . v_s``
is assembled by the same reduce-scatter, never formed. Every rank must run the same
collectives in the same order: ranks run the same number of steps, a rank out of batches
repeats its first batch with weight 0 (one two-number all-reduce per step says whether any
rank has a batch left, or failed: then every rank raises, naming the failing one).

Memory. A block's gathered parameters are dropped after its forward; a saved-tensor hook
replaces every tensor the autograd graph would keep that is a gathered parameter by a token
and gathers it again when the backward needs it (one all-gather per block, the last block's
values kept while the backward visits it). With ``M`` parameters of ``s`` bytes, the peak
per rank is therefore about

    (4 s + 16) M / W      the shards, v (float64 and in the model's dtype), the gradient
                          and a product in the model's dtype, the float64 sum
    + 2-3 x one block's full parameters (the gathered buffer and the parameters cut from it)
    + one micro-batch's activations and double-backward graph,

against the full model plus that graph on the gather-everything path
(:mod:`lanczos_hessian.parallel.dtensor`, ``scripts/bench_sharded.py`` measures both).

Units: the modules wrapped with ``fully_shard`` (and the root); for plain DTensor
parameters, the root and every element of an ``nn.ModuleList``. A unit gathers the
parameters it holds itself or through submodules that are not units. Only the Hessian is
taken this way, for models whose sharded parameters are all ``Shard(0)`` on one
one-dimensional mesh of the whole world; a model that recomputes activations in the backward
(activation checkpointing inside a unit) cannot regather there and is found by a trial step
(:meth:`NativeShards.trial`). Everything else takes the gather-everything path.
"""

from __future__ import annotations

import logging
import time

import torch

from ..curvature.checks import check_first_loss, evaluation_mode
from ..curvature.inputs import batch_length, call_model
from ..curvature.precision import tf32_mode
from ..curvature.kernels import twice_differentiable
from ..curvature.fingerprint import PassFingerprint
from ..errors import DistributedError, NonFiniteError
from .dtensor import common_mesh, restore_fsdp_hooks, suspend_fsdp_hooks
from .gathering import sync
from .layout import ShardLayout

logger = logging.getLogger(__name__)

__all__ = ["NativeShards", "shard_plan"]


def shard_plan(op) -> tuple:
    """``(layout, native)`` of an operator, decided once after its construction: the
    shard-major :class:`~lanczos_hessian.parallel.layout.ShardLayout` and a
    :class:`NativeShards` when the model is sharded as ``Shard(0)`` on one mesh of the whole
    world and gathers by block (``native`` None for the GGN and residual: they take the
    gather path on the same coordinates); else parameter order and None. The same decision
    on every rank (:meth:`~lanczos_hessian.parallel.dtensor.ShardedModel.gathers_by_block`);
    with ``native``, the first batch's loss is checked on the shards (a collective)."""
    if not op.sharded.is_sharded:  # (sharded: a process group, maybe of one rank)
        return ShardLayout(op.space.shapes, 1), None
    mesh, reason = common_mesh(op.model)
    if mesh is not None and any(len(s) == 0 for s in op.space.shapes):
        mesh, reason = None, "a selected parameter is a scalar"
    if mesh is None:
        logger.info("sharded %s products gather every parameter: %s", op.kind, reason)
        return ShardLayout(op.space.shapes, 1), None
    layout = ShardLayout(op.space.shapes, op.world.size)
    if not op.sharded.gathers_by_block(op.kind):
        reason = op.sharded.whole_reason
        logger.info("%s products of the sharded model gather every parameter%s", op.kind,
                    f": {reason}" if reason else "")
        return layout, None
    native = NativeShards(op, layout)
    native.check_first_batch()
    return layout, native


class NativeShards:
    """Rank ``r``'s rows of ``H V`` from its rows of ``V``, for an operator's sharded model.

    Parameters
    ----------
    op : CurvatureOperator
        The operator (its model, loss, data, parameter space and world); its model gathers
        by block (``op.sharded.blocks``, a :class:`BlockGather`).
    layout : ShardLayout
        The shard-major layout of ``op``'s parameter space over the world.
    """

    def __init__(self, op, layout):
        self.op, self.layout, self.blocks = op, layout, op.sharded.blocks
        self.rank = op.world.rank
        self.selected = list(op.space.names)
        self._trial = None
        self.num_passes = 0  # passes taken on the shards

    def check_first_batch(self) -> None:
        """The loss on each rank's first batch, with the blocks gathered one at a time (no
        graph): a finite scalar, or every rank raises (the failing rank its error, e.g.
        :class:`~lanczos_hessian.errors.InvalidLossError`, the others naming it)."""
        op, error = self.op, None
        fsdp = suspend_fsdp_hooks(op.model)
        handles = self.blocks.attach({n: self.blocks.local_shard(n) for n in self.blocks.owners})
        try:
            try:
                x, y = op.to_device(*op.data.first_batch())
                with evaluation_mode(op.model):
                    check_first_loss(op.model, op.loss_fn, x, y, op.world)
            except DistributedError:
                raise  # the ranks already know
            except Exception as exc:  # the others wait at their next gather: join them
                if isinstance(exc.__cause__, DistributedError):
                    raise exc.__cause__ from None
                error = exc
            sync(error)
        finally:
            self.blocks.detach(handles)
            restore_fsdp_hooks(fsdp)

    def rows_product(self, offsets):
        """:meth:`apply_rows` when ``offsets`` are the layout's rows and a trial step runs
        on every rank (:meth:`trial`, once), else None (then products gather)."""
        if list(offsets) != list(self.layout.offsets):
            return None
        if self._trial is None:
            self._trial = self.trial()
            if self._trial:
                logger.info("%s products on shards are not available (%s): gathering",
                            self.op.kind, self._trial)
        return None if self._trial else self.apply_rows

    # ---- the pass ----------------------------------------------------------------------
    def _leaves(self) -> dict:
        """Fresh leaves: this rank's shards of every parameter by name, differentiable where
        selected."""
        local = {n: self.blocks.local_shard(n) for n in self.blocks.owners}
        for n in self.selected:
            local[n] = local[n].requires_grad_()
        return local

    def _run(self, steps, V):
        """Sum over ``steps`` (``(inputs, targets, weight)``) of rank ``r``'s rows of
        ``d/dw_r (g . v)``, float64 ``(b, rows)``; also the sum of the batch losses."""
        local = self._leaves()
        leaves = [local[n] for n in self.selected]
        sizes = [t.numel() for t in leaves]
        columns = [list(torch.split(V[:, j], sizes)) for j in range(V.shape[1])]
        sums = torch.zeros(V.shape[1], sum(sizes), dtype=torch.float64, device=V.device)
        losses = torch.zeros((), dtype=torch.float64, device=V.device)
        fsdp = suspend_fsdp_hooks(self.op.model)
        handles = self.blocks.attach(local)
        try:
            with twice_differentiable(), torch.autograd.graph.saved_tensors_hooks(
                    self.blocks.pack, self.blocks.unpack):
                for x, y, weight in steps:
                    try:
                        loss = self._step(x, y, weight, leaves, columns, sums)
                    except DistributedError:
                        raise  # the ranks already know
                    except Exception as exc:  # the others wait at their next gather
                        sync(exc)
                    losses += loss
        finally:
            self.blocks.detach(handles)
            restore_fsdp_hooks(fsdp)
        return sums, losses

    def _step(self, x, y, weight, leaves, columns, sums):
        """One step: the weighted batch loss, its gradient on the leaves with its graph, and
        one more backward per column of the block, added into ``sums``; the loss."""
        loss = self.op.loss_fn(call_model(self.op.model, None, x), y)
        grads = torch.autograd.grad(loss * weight, leaves, create_graph=True)
        self.blocks.after_backward()
        for j, v in enumerate(columns):
            inner = sum((g * u.reshape(g.shape)).sum() for g, u in zip(grads, v))
            hv = torch.autograd.grad(inner, leaves, retain_graph=j + 1 < len(columns))
            self.blocks.after_backward()
            start = 0
            for h in hv:  # into the float64 sum in place: no full-length temporary
                sums[j, start:start + h.numel()].add_(h.reshape(-1))
                start += h.numel()
            del hv
        return loss.detach().to(torch.float64)

    def _steps(self, state):
        """This rank's batches in lockstep with the other ranks': ``(x, y, weight)`` until
        no rank has one left (the first batch again, weight 0, once this rank has none)."""
        op = self.op
        batches = iter(op.data)
        weighted = op.reduction == "mean"
        while True:
            item, error = None, None
            try:
                item = next(batches, None)
            except Exception as exc:  # every rank learns of it at the next sync
                error = exc
            if sync(error, 0.0 if item is None else 1.0) == 0:
                return
            weight = 0.0
            if item is None:
                item = op.data.first_batch()
            else:
                samples = batch_length(item[0])
                weight = float(samples) if weighted else 1.0
                state["count"] += samples
                if state["fingerprint"] is not None:
                    state["fingerprint"].add(*item)
            x, y = op.to_device(*item)
            yield x, y, weight

    def trial(self) -> str:
        """One step on the first batch with weight 0 on every rank; ``""`` when it runs,
        else the reason on any rank (the same answer on all: one all-reduce)."""
        x, y = self.op.to_device(*self.op.data.first_batch())
        reason = ""
        try:
            width = self.layout.offsets[self.rank + 1] - self.layout.offsets[self.rank]
            V = torch.zeros(width, 1, dtype=self.op.model_dtype, device=self.op.device)
            with evaluation_mode(self.op.model), tf32_mode(self.op.allow_tf32):
                self._run([(x, y, 0.0)], V)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        flags = torch.tensor([1.0 if reason else 0.0], dtype=torch.float64)
        torch.distributed.all_reduce(flags)
        if flags[0] and not reason:
            reason = "another rank could not take products on its shards"
        return reason

    def apply_rows(self, V: torch.Tensor) -> torch.Tensor:
        """Rank ``r``'s rows of ``H V`` (float64 ``(rows, b)``) from its rows ``V``: one
        lockstep pass over the data in eval mode, normalized exactly (``c = 1/N`` for
        ``mean``); counted in the operator's ``num_applications`` and time."""
        op, start = self.op, time.perf_counter()
        with evaluation_mode(op.model), tf32_mode(op.allow_tf32):
            rows = self._pass(V)
        op.time_in_products += time.perf_counter() - start
        op.num_applications += 1
        op.num_vectors += V.shape[1]
        self.num_passes += 1
        return rows

    def _pass(self, V: torch.Tensor) -> torch.Tensor:
        op = self.op
        stamp = op.data.stamp() if op.check_data else None
        known = op.fingerprints.known(stamp) if op.check_data else None
        state = {"count": 0,
                 "fingerprint": PassFingerprint() if op.check_data and known is None else None}
        block = V.to(op.device, op.model_dtype)
        sums, losses = self._run(self._steps(state), block)
        error = None
        try:
            if op.check_data:
                fingerprint = state["fingerprint"]
                op.fingerprints.check(known if fingerprint is None else fingerprint, stamp)
            if not bool(torch.isfinite(sums.sum() + losses)):
                raise NonFiniteError(f"the sharded {op.kind}-vector product or a batch loss on "
                                     f"rank {self.rank} is not finite (NaN or Inf)")
        except Exception as exc:
            error = exc
        count = int(sync(error, float(state["count"])))
        if op.num_samples is None:
            op.record_num_samples(count)
        if op.reduction == "mean":
            sums.div_(count)
        return sums.T if sums.shape[0] == 1 else sums.T.contiguous()  # (rows, b)
