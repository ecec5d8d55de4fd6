"""Worker for tests/parallel/test_sharded_params.py: one rank of a W-process gloo group.

Usage: python _sharded_params_worker.py OUT_DIR  (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
set). Everything the test checks is computed in this one launch (process start-up and the
torch import cost seconds per launch): products of models sharded with FSDP2's
``fully_shard``, with plain DTensor parameters, partly sharded, with checkpointed blocks and
(W = 4) on a 2-D mesh; eigenvalues at both ends and an SLQ run with sharded Lanczos vectors;
and (W = 2) blockwise spectra, a run stopped by a failing rank and resumed, a resume of a file
written with another world size, bad inputs.
Each rank saves ``rank<r>.npz`` and ``rank<r>.json`` (the error messages).
"""

import json
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).parent))

from test_sharded_params import BATCH, EIGS, RESUME, SLQ, make_data, make_model, probe_block  # noqa: E402

from lanczos_hessian import GGNOperator, HessianOperator, ResidualOperator, run  # noqa: E402
from lanczos_hessian.blocks import block_spectra  # noqa: E402

LOSS = torch.nn.CrossEntropyLoss()


def fsdp_model(mesh):
    """``fully_shard`` per block and at the root, as training code wraps a model."""
    model = make_model()
    for block in model:
        if any(True for _ in block.parameters()):
            fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


class Checkpointed(torch.nn.Module):
    """A block whose activations are recomputed in the backward (activation checkpointing)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return checkpoint(self.inner, x, use_reentrant=False)


def checkpointed_model(mesh, wrap=Checkpointed):
    """``fully_shard`` blocks under activation checkpointing, and at the root; ``wrap``:
    :class:`Checkpointed` (``torch.utils.checkpoint`` in the block's forward) or
    ``checkpoint_wrapper`` (as training code checkpoints FSDP2 blocks)."""
    model = make_model()
    blocks = [wrap(torch.nn.Sequential(model[0], model[1])),
              wrap(torch.nn.Sequential(model[2], model[3])), wrap(model[4])]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(torch.nn.Sequential(*blocks), mesh=mesh)


class CallCount:
    """A forward pre-hook that counts the calls of the checkpointed layers (a recomputed
    layer runs more than once per step)."""

    def __init__(self, model):
        self.calls = 0
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1


def dtensor_model(mesh, skip=(), dtype_on_rank=None):
    """Every parameter (but those in ``skip``) a ``Shard(0)`` DTensor over ``mesh``;
    ``dtype_on_rank=(rank, name)``: that rank's shard of that parameter in float32."""
    model = make_model()
    for module_name, module in model.named_modules():
        for leaf, p in list(module.named_parameters(recurse=False)):
            name = f"{module_name}.{leaf}" if module_name else leaf
            if name in skip:
                continue
            shard = distribute_tensor(p.detach(), mesh, [Shard(0)] * mesh.ndim)
            if dtype_on_rank is not None and dtype_on_rank == (dist.get_rank(), name):
                shard = DTensor.from_local(shard.to_local().float(), mesh, shard.placements,
                                           run_check=False, shape=shard.shape,
                                           stride=shard.stride())
            setattr(module, leaf, torch.nn.Parameter(shard))
    return model


def parameter_product(op, V):
    """``op @ V`` for ``V`` in parameter order, the product in parameter order."""
    return op.layout.to_parameters(op @ op.layout.from_parameters(V))


def local_counts(model):
    """(numbers this rank holds, whether every parameter is still a DTensor)."""
    params = list(model.parameters())
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    return held, all(isinstance(p, DTensor) for p in params)


class FailAt:
    """A forward pre-hook that raises at the ``at``-th forward call on rank 0."""

    def __init__(self, at):
        self.calls, self.at = 0, at

    def __call__(self, module, args):
        self.calls += 1
        if dist.get_rank() == 0 and self.calls == self.at:
            raise RuntimeError("simulated failure of rank 0")


def message_of(call):
    try:
        call()
    except Exception as exc:  # the message is what the test checks
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def resume_and_bad_input(op, fsdp, mesh, data, V, out, saved) -> dict:
    """A stopped run resumed with the same W (bit for bit), a file of another W, and bad
    input refused on every rank before any pass: the messages."""
    rank, world = dist.get_rank(), dist.get_world_size()
    messages = {}
    reference = run.eigs(op, out / "ref.h5", shard_vectors=True, progress=False, **RESUME)
    path = out / "stopped.h5"
    hook = fsdp.register_forward_pre_hook(FailAt(at=10))
    messages["stopped"] = message_of(lambda: run.eigs(op, path, shard_vectors=True,
                                                      progress=False, **RESUME))
    hook.remove()
    dist.barrier()  # rank 0 closes its file before any rank resumes (a new launch would)
    resumed = run.eigs(op, path, shard_vectors=True, resume=True, progress=False, **RESUME)
    saved["resume_matvecs"] = reference.num_matvecs
    saved["resume_equal"] = bool(np.array_equal(resumed.eigenvalues, reference.eigenvalues)
                                 and resumed.num_matvecs == reference.num_matvecs)
    # another world size: the single-process file of the test
    other = out / "other.h5"
    if rank == 0:
        shutil.copy(out / "single.h5", other)
    dist.barrier()
    messages["other_world"] = message_of(lambda: run.eigs(op, other, resume=True,
                                                          progress=False, **RESUME))

    # bad input, refused on every rank before any pass
    messages["dtype"] = message_of(lambda: HessianOperator(
        dtensor_model(mesh, dtype_on_rank=(world - 1, "0.weight")), LOSS, data))
    half = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "shard"))["shard"]
    messages["mesh"] = message_of(lambda: HessianOperator(dtensor_model(half), LOSS, data))
    shuffled = (data[0].flip(0), data[1].flip(0)) if rank == world - 1 else data
    messages["data_order"] = message_of(
        lambda: HessianOperator(fsdp, LOSS, shuffled, batch_size=BATCH) @ V[:, 0])
    poisoned = (data[0].clone(), data[1])
    poisoned[0][-10] = float("nan")  # in the last rank's first batch (checked on the shards)
    messages["first_batch"] = message_of(lambda: HessianOperator(fsdp, LOSS, poisoned,
                                                                 batch_size=BATCH))
    messages["compile"] = message_of(lambda: HessianOperator(fsdp, LOSS, data, compile=True))
    grouped = make_model()
    fully_shard([grouped[0], grouped[2]], mesh=mesh)  # one FSDP2 state for two modules
    messages["grouped"] = message_of(lambda: HessianOperator(
        fully_shard(grouped, mesh=mesh), LOSS, data))
    differing = dtensor_model(mesh, skip=("2.bias",))
    if rank == world - 1:
        with torch.no_grad():
            differing[2].bias.add_(1.0)
    messages["replica"] = message_of(lambda: HessianOperator(differing, LOSS, data))

    return messages



def main(out_dir):
    out = Path(out_dir)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    data, V = make_data(), probe_block()
    saved, messages = {}, {}

    models = {"fsdp": fsdp_model(mesh), "dtensor": dtensor_model(mesh),
              "checkpointed": checkpointed_model(mesh),
              "wrapped": checkpointed_model(mesh, wrap=checkpoint_wrapper),
              "mixed": dtensor_model(mesh, skip=("2.weight", "2.bias"))}
    if world == 4:  # HSDP: 2 replicas x 2 shards
        models["hsdp"] = fully_shard(make_model(), mesh=init_device_mesh(
            "cpu", (2, 2), mesh_dim_names=("replicate", "shard")))
    for label, model in models.items():
        op = HessianOperator(model, LOSS, data, batch_size=BATCH)
        # a full-length numpy block on every rank (scipy), in the operator's (shard-major)
        # coordinates: mapped from and back to parameter order
        saved[f"{label}_hv"] = parameter_product(op, V)
        # the run files' model digest, one parameter gathered at a time (collective)
        messages[f"{label}_digest"] = op.identity()["fingerprints"]["model"]
        product = op.rows_product(op.partition(world))  # None: products gather
        saved[f"{label}_native"] = product is not None
        if product is not None:  # each rank's rows of H V from its rows of V alone
            lo, hi = op.partition(world)[rank:rank + 2]
            counter = CallCount(model)
            saved[f"{label}_rows"] = product(
                torch.from_numpy(op.layout.from_parameters(V)[lo:hi])).numpy()
            saved[f"{label}_calls"] = counter.calls  # layer calls in one pass
    fsdp = models["fsdp"]
    saved["forward_hv"] = parameter_product(HessianOperator(
        fsdp, LOSS, data, batch_size=BATCH, strategy="forward-over-reverse"), V)
    saved["ggn_hv"] = parameter_product(GGNOperator(fsdp, LOSS, data, batch_size=BATCH), V)
    saved["residual_hv"] = parameter_product(
        ResidualOperator(fsdp, LOSS, data, batch_size=BATCH), V)
    # the GGN and the residual on the shards (the residual through checkpointed blocks)
    for kind, cls, label in (("ggn", GGNOperator, "fsdp"),
                             ("residual", ResidualOperator, "checkpointed")):
        op = cls(models[label], LOSS, data, batch_size=BATCH)
        product = op.rows_product(op.partition(world))
        saved[f"{kind}_native"] = product is not None
        if product is not None:
            lo, hi = op.partition(world)[rank:rank + 2]
            saved[f"{kind}_rows"] = product(
                torch.from_numpy(op.layout.from_parameters(V)[lo:hi])).numpy()

    for label in ("fsdp", "dtensor", "checkpointed"):  # products on the shards in runs
        op = HessianOperator(models[label], LOSS, data, batch_size=BATCH)
        _, density = run.slq(op, shard_vectors=True, progress=False, **SLQ)
        saved[f"{label}_slq_nodes"], saved[f"{label}_slq_weights"] = (density.nodes,
                                                                      density.weights)
        if label == "fsdp":  # (the others: the same products, SLQ)
            top = run.eigs(op, out / f"{label}_eigs.h5", shard_vectors=True, progress=False,
                           overwrite=True, **EIGS)
            saved[f"{label}_eigs_values"] = top.eigenvalues
            saved[f"{label}_eigs_residuals"] = top.residuals
            if rank == 0:
                with h5py.File(out / f"{label}_eigs.h5", "r") as f:
                    messages[f"{label}_order"] = str(f.attrs["vector_order"])
        saved[f"{label}_native_passes"] = op.native.num_passes
        saved[f"{label}_all_passes"] = op.num_applications
    saved["slq_nodes"], saved["slq_weights"] = saved["fsdp_slq_nodes"], saved["fsdp_slq_weights"]
    saved["eigs_values"] = saved["fsdp_eigs_values"]
    saved["eigs_residuals"] = saved["fsdp_eigs_residuals"]
    op = HessianOperator(fsdp, LOSS, data, batch_size=BATCH)
    if world == 2:  # blockwise spectra, resume and bad input: once
        blocks = block_spectra(op, {"first": "0", "last": "4"}, k=2, tol=1e-10,
                               num_probes=0, seed=0)
        for block in blocks.blocks:
            saved[f"block_{block.name}"] = block.eigs.eigenvalues
        messages.update(resume_and_bad_input(op, fsdp, mesh, data, V, out, saved))
    for label, model in models.items():  # left sharded: about M / W numbers per rank
        saved[f"{label}_held"], saved[f"{label}_all_dtensor"] = local_counts(model)
    np.savez(out / f"rank{rank}.npz", **saved)
    (out / f"rank{rank}.json").write_text(json.dumps(messages))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it (distributed.py)

if __name__ == "__main__":
    main(sys.argv[1])
