"""A sharded model's blocks gathered from the shards one at a time, in the forward and the backward.

Products taken on the shards (:mod:`lanczos_hessian.parallel.native`) never hold the full
model: each **unit** of the model (a module wrapped with ``fully_shard`` and the root; for
plain DTensor parameters the root and every element of an ``nn.ModuleList``) gathers the
parameters it holds, itself or through submodules that are not units, when it needs them:

* **forward**: a forward pre-hook on the unit all-gathers its parameters from the ranks'
  ``Shard(0)`` rows (one all-gather of one flat buffer per unit) and puts the full values in
  its modules; a forward hook puts the shards back. The all-gather is differentiable
  (``DTensor.full_tensor(grad_placements=[Partial()])``): its backward is a reduce-scatter,
  so rank ``r``'s leaves (its rows ``w_r``) receive their rows of the gradient summed over
  the ranks' batches.
* **saved tensors**: a saved-tensor pack hook replaces every tensor the autograd graph keeps
  that is a gathered parameter by a token, and the unpack hook gathers the unit again
  (not differentiably: autograd reattaches the saved tensor's history, so derivatives still
  flow through the forward's all-gather). The last unit gathered in a backward is kept while
  the backward visits it; the backward visits a unit's saved tensors together.
* **recomputation** (activation checkpointing, ``torch.utils.checkpoint`` with
  ``use_reentrant=False``, ``checkpoint_wrapper``, ``torch.distributed._composable.checkpoint``):
  a checkpointed block runs its forward again inside the backward, after its unit has put the
  shards back. A forward pre-hook on every module that holds a unit's parameters finds the
  shards in place and puts the unit's gathered values there (the same kept values as the
  unpack hook: one all-gather), requiring gradients as in the forward so that the
  recomputation saves the same tensors; a recomputation that calls the unit itself gathers
  through the unit's hooks as in the forward. Recomputed values carry the forward's history
  (autograd reattaches it), so the double backward through a checkpointed block is exact.

Every rank runs the same collectives in the same order: the ranks run the same model on
batches in lockstep, and every decision here (gather, keep, drop) depends only on the order in
which autograd visits the graph, the same on every rank. With ``s``-byte parameters, at most
about two or three copies of one unit's full parameters are alive at a time (the gathered
buffer, the parameters cut from it, and a recomputation's kept values).
"""

from __future__ import annotations

import math
import weakref

import torch

from .distributed import all_reduce_or_raise
from .layout import shard_rows

__all__ = ["BlockGather", "sync", "is_sharded_parameter", "parameter_owners", "gather_units"]


def sync(error, value: float = 0.0) -> float:
    """The one small all-reduce every rank joins before each gather and each step: the sum
    of ``value`` over the ranks, or every rank raises when one passes its ``error``
    (:func:`~lanczos_hessian.parallel.distributed.all_reduce_or_raise`: the failing rank its
    own exception, the others :class:`~lanczos_hessian.errors.RankFailedError` naming it)."""
    flags = torch.tensor([value, 0.0], dtype=torch.float64)
    all_reduce_or_raise(flags, error, flag_index=1, what="a sharded curvature pass")
    return float(flags[0])


def is_sharded_parameter(tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter spread over a device mesh)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed tensors
        return False
    return isinstance(tensor, DTensor)


def whole_values(tensor) -> torch.Tensor:
    """``tensor``'s full values, detached: a sharded parameter gathered alone (a collective:
    every rank must call it for the same parameter), any other tensor as it is."""
    with torch.no_grad():
        return tensor.full_tensor() if is_sharded_parameter(tensor) else tensor.detach()


def parameter_owners(model) -> dict:
    """Every parameter of ``model`` by its first name (``named_parameters()`` order): the
    ``(module, attribute)`` pairs that hold it (more than one when tied) and the parameter."""
    by_id, first = {}, {}
    modules = dict(model.named_modules(remove_duplicate=False))
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in by_id:
            by_id[id(p)] = ([], p)
            first[name] = id(p)
        prefix, _, leaf = name.rpartition(".")
        by_id[id(p)][0].append((modules[prefix], leaf))
    return {name: by_id[key] for name, key in first.items()}


def gather_units(model) -> list:
    """The modules that gather their parameters in products taken on the shards
    (:mod:`lanczos_hessian.parallel.native`), the root first: the modules wrapped with
    ``fully_shard``, else every element of an ``nn.ModuleList`` (a model's blocks)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch without FSDP2
        FSDPModule = ()
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        units = [item for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                 for item in m]
    return [model] + [u for u in units if u is not model]


class BlockGather:
    """The units of a sharded model and their parameters gathered from this rank's rows.

    Parameters
    ----------
    model : torch.nn.Module
        The sharded model.
    mesh : DeviceMesh
        The one-dimensional mesh of the whole world the sharded parameters are ``Shard(0)`` on.

    Raises ``ValueError`` (the model then takes the gather-everything path) when a parameter
    is a scalar, is tied across two units, a unit holds parameters of several dtypes, or a
    rank's shard is not DTensor's ``Shard(0)`` chunk. Needs no collective.
    """

    def __init__(self, model, mesh):
        self.model, self.mesh = model, mesh
        self.world_size, self.rank = mesh.size(), mesh.get_local_rank()
        self.units = gather_units(model)
        unit_ids = {id(u) for u in self.units}
        self.owners = parameter_owners(model)  # name -> ([(module, leaf)], parameter)
        where = {}
        for unit in self.units:  # the parameters a unit holds itself or via non-units
            stack = [unit]
            while stack:
                module = stack.pop()
                for leaf in module._parameters:
                    where.setdefault((id(module), leaf), unit)
                stack += [c for c in module._modules.values()
                          if c is not None and id(c) not in unit_ids]
        self.held = {id(u): [] for u in self.units}
        self.holders = {}  # module -> unit id, every module that holds a unit's parameter
        for name, (places, _) in self.owners.items():
            units = {id(where[(id(m), leaf)]) for m, leaf in places}
            if len(units) > 1:
                raise ValueError(f"parameter {name!r} is tied across two gathered blocks")
            unit_id = units.pop()
            self.held[unit_id].append(name)
            self.holders.update({m: unit_id for m, _ in places})
        dtypes = {key: {self.owners[n][1].dtype for n in names}
                  for key, names in self.held.items()}
        if any(len(d) > 1 for d in dtypes.values()):
            raise ValueError("a gathered block holds parameters of several dtypes")
        self.plans = {key: self._pieces(key) for key in self.held}
        for name, (_, p) in self.owners.items():
            if p.dim() == 0:
                raise ValueError(f"parameter {name!r} is a scalar")
            a, b = shard_rows(p.shape[0], self.world_size, self.rank)
            if self.local_shard(name).shape[0] != b - a:
                raise ValueError(f"rank {self.rank}'s shard of {name!r} has "
                                 f"{self.local_shard(name).shape[0]} rows, not DTensor's "
                                 f"Shard(0) chunk of {b - a}")
        self._storages, self._local, self._in_place = {}, {}, set()
        self._cache = (None, {})  # the last unit gathered again in a backward

    # ---- the values ------------------------------------------------------------------------
    def local_shard(self, name: str) -> torch.Tensor:
        """This rank's ``Shard(0)`` rows of parameter ``name`` (detached)."""
        p = self.owners[name][1]
        if is_sharded_parameter(p):
            return p.to_local().detach()
        a, b = shard_rows(p.shape[0], self.world_size, self.rank)
        return p.detach()[a:b]  # a plain parameter: cut as DTensor would

    def _pieces(self, unit_id) -> tuple:
        """Of a unit's flat buffer: the padded length ``L`` per rank and, per rank, each
        held parameter's ``(start, numel)`` in it (from the layout: no collective)."""
        world, names = self.world_size, self.held[unit_id]
        pieces = []
        for rank in range(world):
            start, row = 0, []
            for name in names:
                shape = tuple(self.owners[name][1].shape)
                a, b = shard_rows(shape[0] if shape else 1, world, rank)
                numel = (b - a) * (math.prod(shape[1:]) if shape else 1)
                row.append((start, numel))
                start += numel
            pieces.append(row)
        return max((sum(n for _, n in row) for row in pieces), default=0), pieces

    def gather(self, unit_id, differentiable: bool = True) -> dict:
        """The full values of a unit's parameters from the shards, by name: one all-gather
        of the ranks' flat buffers (each padded to ``L``), cut into the parameters. With
        ``differentiable`` the all-gather's backward is a reduce-scatter
        (``grad_placements=[Partial()]``): rank ``r``'s leaves receive their rows of the
        gradient summed over the ranks."""
        from torch.distributed.tensor import DTensor, Partial, Shard

        names, (width, pieces) = self.held[unit_id], self.plans[unit_id]
        world = self.world_size
        local = [self._local[n] if differentiable else self._local[n].detach() for n in names]
        mine = sum(t.numel() for t in local)
        flat = torch.cat([t.reshape(-1) for t in local]
                         + [local[0].new_zeros(width - mine)])
        full = DTensor.from_local(flat, self.mesh, [Shard(0)], run_check=False,
                                  shape=(world * width,), stride=(1,)
                                  ).full_tensor(grad_placements=[Partial()])
        values = {}
        for i, name in enumerate(names):
            parts = [full[r * width + pieces[r][i][0]: r * width + sum(pieces[r][i])]
                     for r in range(world)]
            value = torch.cat(parts).view(self.owners[name][1].shape)
            storage = value.untyped_storage()
            self._storages[id(storage)] = (unit_id, name, weakref.ref(storage))
            values[name] = value
        return values

    def _kept(self, unit_id) -> dict:
        """A unit's values gathered again (not differentiably), kept until another unit's
        are needed; those of the unit before are dropped first, with any recomputation's
        use of them (:meth:`_recompute`)."""
        if self._cache[0] != unit_id:
            self._put_back(self._in_place)
            self._cache = (None, {})  # free the previous unit first
            with torch.no_grad():
                self._cache = (unit_id, self.gather(unit_id, differentiable=False))
        return self._cache[1]

    def _install(self, unit_id, values) -> None:
        for name in self.held[unit_id]:
            for module, leaf in self.owners[name][0]:
                module._parameters[leaf] = values[name]

    def _put_back(self, unit_ids) -> None:
        """The original (sharded) parameters back in the modules of ``unit_ids``."""
        for unit_id in list(unit_ids):
            for name in self.held[unit_id]:
                for module, leaf in self.owners[name][0]:
                    module._parameters[leaf] = self.owners[name][1]
        self._in_place = set()

    # ---- hooks -------------------------------------------------------------------------------
    def _gather_unit(self, unit, args):
        if not self.held[id(unit)]:
            return
        sync(None)  # a rank that failed before this gather joins here instead
        self._install(id(unit), self.gather(id(unit)))

    def _drop_unit(self, unit, args, output):
        for name in self.held[id(unit)]:
            for module, leaf in self.owners[name][0]:
                module._parameters[leaf] = self.owners[name][1]

    def _recompute(self, module, args):
        """Before a module that holds a unit's parameters runs with the shards in place (a
        checkpointed block recomputed in the backward): the unit's kept values there."""
        unit_id = self.holders[module]
        name = self.held[unit_id][0]
        holder, leaf = self.owners[name][0][0]
        if holder._parameters[leaf] is not self.owners[name][1]:
            return  # gathered: the unit's forward (or its recomputation) runs
        grad = any(self._local[n].requires_grad for n in self.held[unit_id])
        values = self._kept(unit_id)
        self._install(unit_id, {n: v.detach().requires_grad_(grad) for n, v in values.items()})
        self._in_place.add(unit_id)

    def pack(self, tensor):
        """A saved tensor, or a token when it is a gathered parameter's values."""
        entry = self._storages.get(id(tensor.untyped_storage()))
        if entry is None or entry[2]() is not tensor.untyped_storage():
            return tensor
        return (entry[0], entry[1], tuple(tensor.shape), tensor.stride(),
                tensor.storage_offset())

    def unpack(self, packed):
        """A saved gathered parameter, gathered again (:meth:`_kept`)."""
        if not isinstance(packed, tuple):
            return packed
        unit_id, name, size, stride, offset = packed
        return self._kept(unit_id)[name].as_strided(size, stride, offset)

    # ---- the context of a pass ---------------------------------------------------------------
    def attach(self, local: dict) -> list:
        """Start gathering from ``local`` (this rank's rows of every parameter, by name,
        leaves where differentiated): the hooks on the units and holders, whose handles are
        returned for :meth:`detach`."""
        self._local = local
        handles = [h for u in self.units for h in (u.register_forward_pre_hook(self._gather_unit),
                                                   u.register_forward_hook(self._drop_unit))]
        return handles + [m.register_forward_pre_hook(self._recompute) for m in self.holders]

    def after_backward(self) -> None:
        """Drop the kept values and every recomputation's parameters; forget storages that
        are gone. Called after each backward of a step."""
        self._put_back(self._in_place)
        self._cache = (None, {})
        self._storages = {k: e for k, e in self._storages.items() if e[2]() is not None}

    def detach(self, handles) -> None:
        """Remove the hooks, put every original parameter back, drop all gathered values."""
        for h in handles:
            h.remove()
        self._put_back(self.held)
        self._local, self._storages, self._cache = {}, {}, (None, {})
