"""Prototype and benchmark: Hessian-vector products taken natively on parameter shards.

The package's products of a sharded model (:mod:`lanczos_hessian.parallel.dtensor`) gather
every parameter for the length of a pass, so the peak memory per rank does not fall with the
number of ranks ``W``. This script takes the same exact product with nothing of full length
held per rank but one block's parameters at a time:

* the leaves of differentiation are each rank's local shards ``w_r`` (``Shard(0)`` of every
  parameter, ``torch.distributed.tensor.distribute_tensor``);
* a forward pre-hook on each block (the layers, and the root for the parameters outside
  them) gathers the block's parameters with
  ``DTensor.from_local(w_r).full_tensor(grad_placements=[Partial()])`` and a forward hook
  drops them: the all-gather's backward is a reduce-scatter, so ``d l / d w_r`` is the
  rank's shard of the gradient of the loss summed over all ranks' data, and reverse over
  reverse (``g_r = d l / d w_r`` with ``create_graph``, then ``d (sum_r g_r . v_r) / d w_r``)
  gives the rank's shard of ``H v`` from the rank's shard ``v_r`` of ``v``;
* ``torch.autograd.graph.saved_tensors_hooks`` keep gathered parameters out of the graph:
  the pack hook replaces a saved tensor whose storage is a gathered parameter's (recognised
  by the storage object, alive, so never by a reused address) by a token, and the unpack
  hook gathers the parameter again. Unpacking is then a collective: every rank unpacks the
  same saved tensors in the same order, which holds when every rank runs the same model on
  the same number of batches (ragged data would need padding with empty batches).

Memory per rank is then about (parameters + ``v`` + ``g`` + ``H v``) / ``W`` plus one
block's full parameters plus one batch's activations and graph. The script checks the
product against the unsharded full-data product (``--check``, float64 by default: relative
difference of the rank's shard) and measures per rank the peak resident memory of the
product alone (``VmHWM`` reset by ``/proc/self/clear_refs`` after the model is built and
sharded, glibc told to return large blocks at once: ``MALLOC_MMAP_THRESHOLD_``), for each
``W`` and for two modes: ``native`` (the hooks above) and ``kept`` (the same per-block
gathers without saved-tensor hooks: every gathered parameter stays in the graph until the
second backward, as in the package's present path).

    python scripts/bench_native_shards.py --quick --check          # seconds, exactness
    python scripts/bench_native_shards.py --quick --check --fsdp   # the same under FSDP2
    python scripts/bench_native_shards.py --json out/native.json   # 12.9M GPT, W = 1, 2, 4
    python scripts/bench_native_shards.py --large --dtype float32 --modes native  # 101.4M
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_sharded import free_port, peak_rss_mib  # noqa: E402

FULL = dict(width=512, layers=6, heads=4, context=16, sequences=8)
LARGE = dict(width=1024, layers=12, heads=16, context=64, sequences=8)  # bench_sharded.py's
QUICK = dict(width=16, layers=2, heads=4, context=8, sequences=8)


class NativeShards:
    """A model's parameters as local ``Shard(0)`` leaves, gathered block by block.

    ``units``: the modules whose forward gathers the parameters they hold (directly or in
    submodules that are not units themselves); the first one should be the root. Plain
    parameters are sharded here; a model wrapped with ``fully_shard`` (its forward hooks
    suspended by the caller) gives its own local shards. The model's parameters are taken
    out of its modules for good (a prototype: it is not given back).
    """

    def __init__(self, model, units, mesh, keep_gathered=False):
        from torch.distributed.tensor import Shard, distribute_tensor

        self.model, self.mesh, self.keep = model, mesh, keep_gathered
        self.names, self.shape, self.local, self.owner = [], {}, {}, {}
        for module_name, module in model.named_modules():
            for leaf, p in list(module._parameters.items()):
                if p is None:
                    continue
                name = f"{module_name}.{leaf}".lstrip(".")
                self.names.append(name)
                self.shape[name] = (p.shape, p.stride())
                if hasattr(p, "to_local"):  # already sharded (FSDP2): its own shard
                    self.local[name] = p.to_local().detach().requires_grad_()
                else:
                    shard = distribute_tensor(p.detach(), mesh, [Shard(0)]).to_local()
                    self.local[name] = shard.clone().requires_grad_()
                self.owner[(module, leaf)] = name
                module._parameters[leaf] = None  # the full value is dropped
        self._storages = {}  # id(storage) -> (name, weak reference to the storage)
        ids = {id(u) for u in units}
        for unit in units:
            unit._native_held = self._held_by(unit, ids)
            unit.register_forward_pre_hook(self._gather_block)
            unit.register_forward_hook(self._drop_block)

    def _held_by(self, unit, unit_ids):
        held, stack = [], [unit]
        while stack:
            module = stack.pop()
            held += [(module, leaf) for leaf in module._parameters
                     if (module, leaf) in self.owner]
            stack += [c for c in module._modules.values()
                      if c is not None and id(c) not in unit_ids]
        return held

    def gather(self, name, local):
        """The full value of parameter ``name`` from this rank's shard ``local`` (a
        collective); differentiable, its backward a reduce-scatter of the gradient."""
        from torch.distributed.tensor import DTensor, Partial, Shard

        shape, stride = self.shape[name]
        full = DTensor.from_local(local, self.mesh, [Shard(0)], run_check=False, shape=shape,
                                  stride=stride).full_tensor(grad_placements=[Partial()])
        storage = full.untyped_storage()
        self._storages[id(storage)] = (name, weakref.ref(storage))
        return full

    def _gather_block(self, unit, args):
        for module, leaf in unit._native_held:
            name = self.owner[(module, leaf)]
            module._parameters[leaf] = self.gather(name, self.local[name])

    def _drop_block(self, unit, args, output):
        for module, leaf in unit._native_held:
            module._parameters[leaf] = None

    def _pack(self, tensor):
        if self.keep:
            return tensor
        storage = tensor.untyped_storage()
        entry = self._storages.get(id(storage))
        if entry is None or entry[1]() is not storage:
            return tensor
        return (entry[0], tuple(tensor.shape), tensor.stride(), tensor.storage_offset())

    def _unpack(self, packed):
        if not isinstance(packed, tuple):
            return packed
        name, size, stride, offset = packed
        with torch.no_grad():
            full = self.gather(name, self.local[name].detach())
        return full.as_strided(size, stride, offset)

    def hvp(self, batches, loss_fn, v_local):
        """``(H v)_r`` by name: this rank's shards of the product of the Hessian of
        ``sum_B loss_fn(model(x_B), y_B)`` summed over every rank's batches, with ``v_r``
        (``v_local``, by name) this rank's shards of ``v``. Every rank must call it with the
        same number of batches."""
        leaves = [self.local[n] for n in self.names]
        total = torch.zeros((), dtype=torch.float64)
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            products = [torch.zeros_like(t) for t in leaves]
            for x, y in batches:
                loss = loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, leaves, create_graph=True)
                inner = sum((g * v_local[n]).sum() for g, n in zip(grads, self.names))
                for acc, h in zip(products, torch.autograd.grad(inner, leaves)):
                    acc.add_(h)
                total += loss.detach()
                self._storages = {k: e for k, e in self._storages.items() if e[1]() is not None}
        return dict(zip(self.names, products)), total


def build(config, dtype):
    from lanczos_hessian.examples.small_gpt import SmallGPT

    torch.manual_seed(0)  # the same random weights on every rank
    model = SmallGPT(width=config["width"], layers=config["layers"], heads=config["heads"],
                     context=config["context"]).to(dtype).eval()
    tokens = torch.randint(0, 256, (config["sequences"], config["context"] + 1),
                           generator=torch.Generator().manual_seed(1))
    count = tokens[:, 1:].numel()

    def loss_fn(logits, targets):  # token mean over the whole data set: sum / count
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum") / count

    v = {n: torch.randn(p.shape, dtype=dtype, generator=torch.Generator().manual_seed(7 + i))
         for i, (n, p) in enumerate(model.named_parameters())}
    return model, tokens[:, :-1], tokens[:, 1:], loss_fn, v


def reference(model, x, y, loss_fn, v):
    """The unsharded full-data ``H v`` by name (plain double backward, one batch)."""
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), list(params.values()), create_graph=True)
    inner = sum((g * v[n]).sum() for g, n in zip(grads, params))
    return dict(zip(params, torch.autograd.grad(inner, list(params.values()))))


def worker(args) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from lanczos_hessian.curvature.kernels import twice_differentiable

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    config = dict(QUICK if args.quick else LARGE if args.large else FULL)
    config["sequences"] = args.sequences or config["sequences"]
    model, x, y, loss_fn, v = build(config, getattr(torch, args.dtype))
    num_params = sum(p.numel() for p in model.parameters())
    with twice_differentiable():
        ref = reference(model, x, y, loss_fn, v) if args.check else None
        mesh = init_device_mesh("cpu", (size,))
        if args.fsdp:  # fully_shard per layer and at the root, its hooks suspended
            from torch.distributed.fsdp import fully_shard

            from lanczos_hessian.parallel.dtensor import suspend_fsdp_hooks

            for layer in model.layers:
                fully_shard(layer, mesh=mesh)
            suspend_fsdp_hooks(fully_shard(model, mesh=mesh))
        shards = NativeShards(model, [model, *model.layers], mesh, args.mode == "kept")
        v_local = {n: distribute_tensor(v[n], mesh, [Shard(0)]).to_local().clone() for n in v}
        if ref is not None:
            ref = {n: distribute_tensor(ref[n], mesh, [Shard(0)]).to_local() for n in ref}
        del v
        mine = slice(rank * len(x) // size, (rank + 1) * len(x) // size)
        batches = [(x[mine][i:i + args.batch_size], y[mine][i:i + args.batch_size])
                   for i in range(0, mine.stop - mine.start, args.batch_size)]
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = peak_rss_mib()
        start = time.perf_counter()
        hv, _ = shards.hvp(batches, loss_fn, v_local)
        seconds = time.perf_counter() - start
        peak = peak_rss_mib()
    diff = None
    if ref is not None:
        top = max(float(r.abs().max()) for r in ref.values() if r.numel())
        diff = max(float((hv[n] - ref[n]).abs().max()) for n in ref if ref[n].numel()) / top
    held = sum(t.numel() * t.element_size() for t in shards.local.values()) / 2**20
    row = dict(world_size=size, rank=rank, mode=args.mode, num_params=num_params,
               rest_mib=held, before_mib=before, peak_mib=peak, rise_mib=peak - before,
               seconds=seconds, rel_diff=diff)
    Path(args.worker, f"rank{rank}.json").write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it


def launch(world_size, mode, args) -> list:
    import subprocess

    with tempfile.TemporaryDirectory() as out:
        port, procs = free_port(), []
        for rank in range(world_size):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="65536")
            command = [sys.executable, __file__, "--worker", out, "--mode", mode,
                       "--dtype", args.dtype, "--threads", str(args.threads),
                       "--batch-size", str(args.batch_size),
                       "--sequences", str(args.sequences or 0)]
            command += [flag for flag, on in (("--quick", args.quick), ("--large", args.large),
                                              ("--check", args.check), ("--fsdp", args.fsdp))
                        if on]
            procs.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE))
        errors = [p.communicate()[1].decode() for p in procs]
        for rank, (p, err) in enumerate(zip(procs, errors)):
            if p.returncode:
                raise SystemExit(f"W={world_size} {mode}, rank {rank} failed:\n{err[-3000:]}")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]


def summarize(rows) -> dict:
    first = rows[0]
    diffs = [r["rel_diff"] for r in rows if r["rel_diff"] is not None]
    return dict(world_size=first["world_size"], mode=first["mode"],
                num_params=first["num_params"],
                rest_mib_per_rank=max(r["rest_mib"] for r in rows),
                peak_mib_per_rank=max(r["peak_mib"] for r in rows),
                rise_mib_per_rank=max(r["rise_mib"] for r in rows),
                seconds=max(r["seconds"] for r in rows),
                rel_diff=max(diffs) if diffs else None)


def format_table(results) -> str:
    lines = ["| W | mode | params | shards MiB / rank | peak MiB / rank | product's rise MiB / "
             "rank | s / HVP | rel. diff |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = "-" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
        lines.append(f"| {r['world_size']} | {r['mode']} | {r['num_params'] / 1e6:.2f}M | "
                     f"{r['rest_mib_per_rank']:.1f} | {r['peak_mib_per_rank']:.0f} | "
                     f"{r['rise_mib_per_rank']:.0f} | {r['seconds']:.2f} | {diff} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-sizes", default="1,2,4")
    parser.add_argument("--modes", default="native,kept")
    parser.add_argument("--quick", action="store_true", help="a tiny model, seconds")
    parser.add_argument("--large", action="store_true",
                        help="the 101.4M-parameter GPT of bench_sharded.py (use --dtype float32)")
    parser.add_argument("--fsdp", action="store_true",
                        help="the model wrapped with fully_shard (per layer, root) first")
    parser.add_argument("--check", action="store_true",
                        help="compare with the unsharded product (memory then not comparable)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--sequences", type=int, help="sequences in the data (default 8); "
                        "every rank must get the same number of batches")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    results = []
    for world_size in (int(w) for w in args.world_sizes.split(",")):
        for mode in args.modes.split(","):
            results.append(summarize(launch(world_size, mode, args)))
            print(format_table(results[-1:]).splitlines()[-1], flush=True)
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
