"""Models whose parameters are sharded across ranks: ``DTensor`` parameters and FSDP2.

A model wrapped with ``torch.distributed.fsdp.fully_shard`` (per block and at the root), or
one whose parameters are ``torch.distributed.tensor.DTensor`` objects, holds on rank ``r``
only its shard of each parameter (``Shard(0)``: about ``M / W`` numbers). The curvature of
such a model is still the curvature of the full parameter vector ``w`` (``M`` numbers, in
``model.named_parameters()`` order, each parameter at its global shape), and the operators
act on full-length vectors exactly as for a model held whole.

How a product is taken
----------------------
For the length of one pass over the data (and once at construction for a model that does not
gather by block: below), :meth:`ShardedModel.gathered`
replaces every sharded parameter by a plain parameter holding its full value
(``DTensor.full_tensor()``: one all-gather per parameter, in the same order on every rank)
and suspends FSDP2's forward hooks (which would otherwise gather the parameters again and
swap their own tensors in). Inside, the model is an ordinary module: every rank computes
products on its exact shard of the data with either differentiation strategy, and the
operator's one all-reduce per pass sums the shards, so the product is the full-data product
``C v`` with ``C`` of the unsharded model, to rounding. On leaving, the very same sharded
parameter objects are put back and FSDP2's hooks restored, so the model is left as it came:
sharded, ``~M / W`` numbers per rank, FSDP2 state untouched.

Peak memory per rank during a pass is therefore the full parameters (``M`` numbers in the
model's dtype) plus the double-backward graph of one batch plus the operator's float64
working vectors (a gathered block and its product, ``M`` each); between passes only the
shards remain. This path serves full-length vectors (``op @ v``, scipy), 2-D meshes (HSDP),
and models that cannot gather one block at a time. A model that can
(:meth:`ShardedModel.gathers_by_block`: every sharded parameter ``Shard(0)`` on one
one-dimensional mesh of the whole world) is built without gathering it, and its operators
(Hessian, GGN, residual) take their products on the shards for vectors laid out as the
parameters' shards (a run with ``shard_vectors=True``), with a peak that falls with ``W``
(:mod:`lanczos_hessian.parallel.native`, :mod:`lanczos_hessian.parallel.gathering`, the
coordinates :mod:`lanczos_hessian.parallel.layout`).

Layouts checked before any pass (:func:`check_layouts`)
------------------------------------------------------
One ``all_gather_object`` at construction compares what every rank holds, parameter by
parameter: the same names in the same order, sharded on all ranks or on none, the same
global shape, the same dtype of the local shard, the same placements; a mesh that spans the
whole process group (``mesh.size() == W``; a 2-D mesh, HSDP's replicas x shards, is
accepted: gathering it is the same ``full_tensor``); no ``Partial`` placement (a pending sum
is not a parameter value). Plain parameters beside sharded ones are accepted as replicated:
the operators' agreement check compares them across ranks (with the full gathered
parameters when the construction gathers; the shards' values, which differ by design, are
left out when it does not: :mod:`lanczos_hessian.curvature.agreement`), so a plain parameter
that differs between ranks is refused there. A module under
``torch.distributed._composable.checkpoint`` is refused (:func:`refuse_single_recomputation`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import DistributedError, InvalidModelError
from .distributed import current_world, is_distributed
from .gathering import BlockGather, gather_units, is_sharded_parameter, parameter_owners

__all__ = ["ShardedModel", "is_sharded_parameter", "describe_parameters", "check_layouts",
           "suspend_fsdp_hooks", "restore_fsdp_hooks", "parameter_owners", "common_mesh",
           "gather_units", "refuse_single_recomputation"]


def describe_parameters(model: torch.nn.Module) -> list:
    """Per parameter, what every rank must agree on: ``(name, sharded, global shape, dtype
    of the local values, placements, mesh shape)``; plain parameters have empty
    placements and mesh. Never raises (it runs before a collective)."""
    rows = []
    for name, p in model.named_parameters():
        if is_sharded_parameter(p):
            local = p.to_local()
            rows.append((name, True, tuple(p.shape), str(local.dtype),
                         tuple(str(x) for x in p.placements), tuple(p.device_mesh.shape)))
        else:
            rows.append((name, False, tuple(p.shape), str(p.dtype), (), ()))
    return rows


def check_layouts(layouts: list, world_size: int) -> None:
    """Refuse, naming the parameter and the ranks, parameter layouts (one
    :func:`describe_parameters` list per rank) that the ranks do not share or that cannot be
    gathered into the full model (module docstring)."""
    first = layouts[0]
    for rank, rows in enumerate(layouts[1:], start=1):
        if [r[0] for r in rows] != [r[0] for r in first]:
            missing = sorted(set(r[0] for r in first) ^ set(r[0] for r in rows))
            raise InvalidModelError(
                f"ranks 0 and {rank} hold models with other parameters (differing: "
                f"{missing[:3] or 'their order'}); build the same model on every rank")
        for mine, theirs in zip(first, rows):
            for index, what in ((1, "sharded (a DTensor) or not"), (2, "global shape"),
                                (3, "dtype"), (4, "placements"), (5, "device mesh")):
                if mine[index] != theirs[index]:
                    raise InvalidModelError(
                        f"parameter {mine[0]!r} differs between ranks 0 and {rank} in its "
                        f"{what} ({mine[index]} against {theirs[index]}); shard every "
                        "parameter alike on every rank (fully_shard or distribute_tensor "
                        "with one mesh, one dtype)")
    for name, sharded, _, _, placements, mesh in first:
        if not sharded:
            continue
        size = 1
        for extent in mesh:
            size *= extent
        if size != world_size:
            raise InvalidModelError(
                f"parameter {name!r} is sharded over a device mesh of {size} ranks "
                f"(shape {mesh}) but the process group has {world_size}: the data are split "
                "over every rank, so the mesh must span them all")
        if any(p.startswith("Partial") for p in placements):
            raise InvalidModelError(
                f"parameter {name!r} has a Partial placement {placements}: its value is a "
                "pending sum over ranks, not a parameter; redistribute it to Shard or "
                "Replicate first")


class ShardedModel:
    """The sharded parameters of a model and the context in which they are gathered.

    ``ShardedModel.of(model)`` checks the layouts across ranks (one collective under a
    process group of more than one rank) and returns the object; for a model without
    sharded parameters :attr:`is_sharded` is False and :meth:`gathered` does nothing.
    """

    def __init__(self, model: torch.nn.Module, names: tuple):
        self.model, self.names = model, names
        self._depth = 0  # gathered() is re-entrant: nested uses gather once
        self._cache = {}
        self.blocks, self.whole_reason = None, ""  # see gathers_by_block
        if names:
            mesh, self.whole_reason = common_mesh(model)
            if mesh is not None:
                try:
                    self.blocks = BlockGather(model, mesh)
                except ValueError as exc:
                    self.whole_reason = str(exc)

    def gathers_by_block(self) -> bool:
        """Whether the operators of this model gather its parameters one block at a time, at
        construction and in products on the shards
        (:class:`~lanczos_hessian.parallel.gathering.BlockGather`): a model whose sharded
        parameters are all ``Shard(0)`` on one one-dimensional mesh of the whole world, no
        scalar, none tied across blocks, one dtype per block. Otherwise the operator gathers
        every parameter (:meth:`gathered`). The same answer on every rank."""
        return self.blocks is not None

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ShardedModel":
        refuse_single_recomputation(model)
        layouts = [describe_parameters(model)]
        world = current_world()
        if is_distributed():
            import torch.distributed as dist

            gathered = [None] * world.size
            dist.all_gather_object(gathered, layouts[0])
            layouts = gathered
        check_layouts(layouts, world.size)
        names = tuple(row[0] for row in layouts[0] if row[1])
        if names and not torch.distributed.is_initialized():
            raise DistributedError(f"parameter {names[0]!r} is a DTensor but no process group "
                                   "is initialized")
        sharded = cls(model, names)
        if names:  # one decision for every rank (a shard's rows are checked on each rank)
            flags = torch.tensor([0.0 if sharded.blocks is not None else 1.0])
            torch.distributed.all_reduce(flags)
            if flags[0] and sharded.blocks is not None:
                sharded.blocks, sharded.whole_reason = None, ("another rank's shards are not "
                                                              "DTensor's Shard(0) chunks")
        return sharded

    @property
    def is_sharded(self) -> bool:
        """Whether the model holds any sharded parameter."""
        return bool(self.names)

    def refuse_compile(self) -> None:
        """Raise :class:`InvalidModelError` when the model is sharded: compiled products
        (``compile=True``) are not available for sharded parameters."""
        if self.names:
            raise InvalidModelError(
                f"compile=True is not available for a model with sharded parameters (such as "
                f"{self.names[0]!r}): its products are taken on parameters gathered anew for "
                "each pass, which a compiled graph would not follow; build the operator "
                "without compile")

    @contextmanager
    def gathered(self):
        """Within: the model's sharded parameters are plain parameters holding their full
        values and FSDP2's forward hooks are suspended; on exit the sharded parameters and
        hooks are restored (also after an exception). A collective on entry (one
        all-gather per sharded parameter): every rank must enter together."""
        if not self.names or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        hooks = suspend_fsdp_hooks(self.model)
        swapped = []
        try:
            with torch.no_grad():
                for owners, original in _owners(self.model, self.names):
                    full = torch.nn.Parameter(original.full_tensor(),
                                              requires_grad=original.requires_grad)
                    for module, leaf in owners:
                        setattr(module, leaf, full)
                    swapped.append((owners, original))
            self._depth += 1
            yield
        finally:
            self._depth = 0
            for owners, original in swapped:
                for module, leaf in owners:
                    setattr(module, leaf, original)
            restore_fsdp_hooks(hooks)

    def stamp(self) -> tuple:
        """Identity and version counter of every sharded parameter's local values: changes
        whenever the model is trained or reloaded."""
        params = dict(self.model.named_parameters())
        local = {n: params[n].to_local() if is_sharded_parameter(params[n]) else params[n]
                 for n in self.names if n in params}  # plain while gathered
        return tuple((id(params[n]), t._version) for n, t in local.items())

    def cached(self, key: str, compute):
        """``compute()``, computed once per :meth:`stamp` of the model (a ``compute`` that
        gathers is collective on the first call after a change; later calls, e.g. on rank 0
        only, are not). Without sharded parameters: ``compute()`` every time."""
        if not self.names:
            return compute()
        stamp = self.stamp()
        hit = self._cache.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, compute())
            self._cache[key] = hit
        return hit[1]


def refuse_single_recomputation(model) -> None:
    """Raise :class:`InvalidModelError` naming the module when ``model`` has a module under
    ``torch.distributed._composable.checkpoint``: its recomputation enters one context made
    once per forward, so the second backward pass through that forward (every Hessian
    product takes two) fails inside PyTorch. Never raises before a collective on one rank
    only: every rank holds the same model."""
    try:
        from torch.distributed._composable import checkpoint
    except ImportError:  # pragma: no cover - a torch without composable APIs
        return
    for name, module in model.named_modules():
        if checkpoint.state(module) is not None:
            raise InvalidModelError(
                f"module {name or type(module).__name__!r} is checkpointed with "
                "torch.distributed._composable.checkpoint, which recomputes a block only once "
                "per forward; a Hessian-vector product takes two backward passes through it. "
                "Checkpoint the block with torch.distributed.algorithms._checkpoint."
                "checkpoint_wrapper.checkpoint_wrapper or torch.utils.checkpoint.checkpoint("
                "..., use_reentrant=False) instead")


def _owners(model, names):
    """For each sharded parameter (in ``names`` order): the ``(module, attribute)`` pairs
    that hold it (more than one when tied) and the parameter itself."""
    wanted = set(names)
    return [entry for name, entry in parameter_owners(model).items() if name in wanted]


def suspend_fsdp_hooks(model) -> list:
    """Remove the forward hooks FSDP2 registered on ``model``'s modules; return what
    :func:`restore_fsdp_hooks` needs to put them back in their order."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        return []
    saved = []
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        state, found = fully_shard.state(module), False
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            owned = [k for k, h in hooks.items() if getattr(h, "__self__", None) is state]
            if not owned:
                continue
            found = True
            saved.append((hooks, dict(hooks)))
            for key in owned:
                del hooks[key]
        if not found:  # e.g. fully_shard([a, b]) on a group: hooks of another form
            restore_fsdp_hooks(saved)
            raise InvalidModelError(
                f"module {name or type(module).__name__!r} is an FSDP2 module whose forward "
                "hooks are not its own (fully_shard on a group of modules?); wrap each "
                "module with its own fully_shard call")
    return saved


def restore_fsdp_hooks(saved) -> None:
    """Put back the hooks :func:`suspend_fsdp_hooks` removed."""
    for hooks, items in saved:
        hooks.clear()
        hooks.update(items)


def common_mesh(model):
    """The one-dimensional device mesh every sharded parameter of ``model`` is ``Shard(0)``
    on, or None with the reason (a string) when there is no such mesh."""
    from torch.distributed.tensor import Shard

    mesh = None
    for name, p in model.named_parameters():
        if not is_sharded_parameter(p):
            continue
        if p.device_mesh.ndim != 1 or not (isinstance(p.placements[0], Shard)
                                           and p.placements[0].dim == 0):
            return None, f"parameter {name!r} is placed {tuple(p.placements)} on a mesh of " \
                         f"shape {tuple(p.device_mesh.shape)}, not Shard(0) on one dimension"
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            return None, f"parameter {name!r} is on another device mesh than the others"
    return mesh, ""
