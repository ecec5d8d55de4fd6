"""Curvature-vector products taken on parameter shards: no vector or model of full length per rank.

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
is assembled by the same reduce-scatter, never formed. The GGN ``sum_s J_s^T H_s J_s`` is
taken the same way (:meth:`NativeShards._ggn`: ``J_s v`` by the double-vjp trick, whose
backward all-gathers ``v``), the residual as the Hessian less the GGN of the same step. Every
rank must run the same collectives in the same order: ranks run the same number of steps, a
rank out of batches repeats its first batch with weight 0 (one two-number all-reduce per step
says whether any rank has a batch left, or failed: then every rank raises, naming the failing
one).

Memory. The blocks are gathered one at a time, in the forward, for the backward's saved
tensors and for a checkpointed block's recomputation
(:mod:`lanczos_hessian.parallel.gathering`). With ``M`` parameters of ``s`` bytes, the
peak per rank is therefore about

    (4 s + 16) M / W      the shards, v (float64 and in the model's dtype), the gradient
                          and a product in the model's dtype, the float64 sum
    + 2-3 x one block's full parameters (the gathered buffer and the parameters cut from it)
    + one micro-batch's activations and the graph of its first backward,

against the full model plus that graph on the gather-everything path
(:mod:`lanczos_hessian.parallel.dtensor`, ``scripts/bench_sharded.py`` measures both). The
operator's construction gathers one block at a time too (the first batch's loss,
:meth:`NativeShards.check_first_batch`). Activation checkpointing of the blocks
(``checkpoint_wrapper``, ``torch.utils.checkpoint`` without reentry) is honoured and exact,
but saves little here: the first backward is taken with its graph (``create_graph``), and that
graph keeps the recomputed activations of every block for the second.

Units: the modules wrapped with ``fully_shard`` (and the root); for plain DTensor
parameters, the root and every element of an ``nn.ModuleList``. A unit gathers the
parameters it holds itself or through submodules that are not units. Products are taken this
way for models whose sharded parameters are all ``Shard(0)`` on one one-dimensional mesh of
the whole world (:meth:`~lanczos_hessian.parallel.dtensor.ShardedModel.gathers_by_block`);
a model whose products cannot run so (e.g. a checkpointed function that reads a parameter
without calling the module that holds it) is found by a trial step (:meth:`NativeShards.trial`)
and gathers. Everything else takes the gather-everything path.
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
    world and gathers by block (else ``native`` None: products gather, on the same
    coordinates); else parameter order and None. The same decision
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
    if not op.sharded.gathers_by_block():
        reason = op.sharded.whole_reason
        logger.info("%s products of the sharded model gather every parameter%s", op.kind,
                    f": {reason}" if reason else "")
        return layout, None
    native = NativeShards(op, layout)
    native.check_first_batch()
    return layout, native


class NativeShards:
    """Rank ``r``'s rows of ``C V`` from its rows of ``V``, for an operator's sharded model
    (``C`` the Hessian, the GGN or the residual: ``op.kind``).

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
        """One step: the weighted batch loss and, per column ``v`` of the block, rank ``r``'s
        rows of the step's product added into ``sums`` (:meth:`_hessian`, :meth:`_ggn`, or
        their difference for the residual, the GGN first: the Hessian's last backward frees
        the graph); the loss."""
        kind = self.op.kind
        z = call_model(self.op.model, None, x)
        loss = self.op.loss_fn(z, y)
        if kind != "hessian":
            sign = -1.0 if kind == "residual" else 1.0
            self._ggn(z, y, weight, leaves, columns, sums, sign, release=kind == "ggn")
        if kind != "ggn":
            self._hessian(loss * weight, leaves, columns, sums)
        return loss.detach().to(torch.float64)

    @staticmethod
    def _add(sums, j, pieces, alpha=1.0) -> None:
        """``alpha`` times rank ``r``'s rows of a product (per leaf) into row ``j`` of the
        float64 ``sums``, in place (no full-length temporary)."""
        start = 0
        for h in pieces:
            sums[j, start:start + h.numel()].add_(h.reshape(-1), alpha=alpha)
            start += h.numel()

    def _hessian(self, loss, leaves, columns, sums) -> None:
        """Per column ``v``: rank ``r``'s rows of ``d/dw_r (g . v)``, ``g`` the gradient of
        the step's weighted loss (reverse over reverse, module docstring)."""
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        self.blocks.after_backward()
        for j, v in enumerate(columns):
            inner = sum((g * u.reshape(g.shape)).sum() for g, u in zip(grads, v))
            hv = torch.autograd.grad(inner, leaves, retain_graph=j + 1 < len(columns))
            self.blocks.after_backward()
            self._add(sums, j, hv)
            del hv

    def _ggn(self, z, y, weight, leaves, columns, sums, sign, release) -> None:
        """Per column ``v``: rank ``r``'s rows of ``sum_s J_s^T H_s J_s v`` over the ranks'
        batches of the step (``z_s`` rank ``s``'s outputs, ``J_s = dz_s/dw``, ``H_s`` the
        Hessian of its weighted loss in ``z_s``). ``J_s v`` by the double-vjp trick: with
        ``u_s`` a zero tangent of ``z_s``, rank ``r``'s rows ``t_r`` of ``sum_s J_s^T u_s``
        come from the reduce-scatter, and ``d/du_s`` of this rank's ``t_r . v_r`` alone is
        ``J_s v`` (the backward's all-gather brings the other ranks' rows of ``v``); then
        ``H_s J_s v`` on this rank, and ``J^T`` of it by one more reduce-scatter; added to
        ``sums`` times ``sign``. With ``release`` the last backward frees the graph."""
        u = torch.zeros_like(z, requires_grad=True)
        JTu = torch.autograd.grad(z, leaves, u, create_graph=True)
        self.blocks.after_backward()
        zd = z.detach().requires_grad_(True)
        loss_grad = torch.autograd.grad(self.op.loss_fn(zd, y) * weight, zd,
                                        create_graph=True)[0]
        for j, v in enumerate(columns):
            inner = sum((t * w.reshape(t.shape)).sum() for t, w in zip(JTu, v))
            Jv = torch.autograd.grad(inner, u, retain_graph=True)[0]
            self.blocks.after_backward()
            HJv = torch.autograd.grad(loss_grad, zd, Jv, retain_graph=True)[0]
            last = release and j + 1 == len(columns)
            self._add(sums, j, torch.autograd.grad(z, leaves, HJv, retain_graph=not last),
                      sign)
            self.blocks.after_backward()

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
            with evaluation_mode(self.op.model), tf32_mode(self.op.allow_tf32, self.op.device):
                self._run([(x, y, 0.0)], V)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        flags = torch.tensor([1.0 if reason else 0.0], dtype=torch.float64)
        torch.distributed.all_reduce(flags)
        if flags[0] and not reason:
            reason = "another rank could not take products on its shards"
        return reason

    def apply_rows(self, V: torch.Tensor) -> torch.Tensor:
        """Rank ``r``'s rows of ``C V`` (float64 ``(rows, b)``) from its rows ``V``: one
        lockstep pass over the data in eval mode, normalized exactly (``c = 1/N`` for
        ``mean``); counted in the operator's ``num_applications`` and time."""
        op, start = self.op, time.perf_counter()
        with evaluation_mode(op.model), tf32_mode(op.allow_tf32, op.device):
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
