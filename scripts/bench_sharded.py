"""Benchmark: Hessian-vector products of a language model sharded with FSDP2 on W ranks.

A byte-level GPT (:class:`lanczos_hessian.examples.small_gpt.SmallGPT`, random weights, the
full size 101.4M parameters: width 1024, 12 layers, 16 heads, context 64) is built on the
``meta`` device, wrapped with ``fully_shard`` per layer and at the root on ``W`` gloo CPU
processes (a process group of one rank for ``W = 1``), and its shards filled one parameter at
a time (no rank ever holds the full model); the same full-data Hessian-vector product is then
taken on every ``W`` in one of three modes:

* ``native`` (default): the products on the shards
  (:mod:`lanczos_hessian.parallel.native`): rank ``r`` gives its rows ``v_r`` of ``v`` (the
  operator's shard-major coordinates) and gets its rows of ``H v``
  (``op.rows_product(op.partition(W))``, what a run with ``shard_vectors=True`` uses);
* ``checkpointed``: the same with every layer under activation checkpointing
  (``checkpoint_wrapper`` before ``fully_shard``, as training code applies it): each layer's
  forward runs again in each backward, its parameters gathered again for it;
* ``gather``: ``op.apply(v)`` with the full-length ``v`` on every rank (scipy's way:
  every parameter gathered for the pass, :mod:`lanczos_hessian.parallel.dtensor`).

Per rank it measures:

* ``rest MiB``: the parameters the rank holds between passes (its shards);
* ``build peak MiB``: the peak resident memory (``VmHWM``) up to the operator constructed:
  building and sharding the model and the operator's construction (with products on the
  shards it gathers one block at a time; else every parameter once);
* ``product peak MiB``: the peak resident memory from there on (``VmHWM`` reset through
  ``/proc/self/clear_refs`` after the build, glibc told to give large blocks back at once:
  ``MALLOC_MMAP_THRESHOLD_``): the products, and for products on the shards the trial step
  on the first batch that precedes the first (one step of a product); including the
  interpreter and torch (about 300-400 MiB on their own) and the shards; the largest over
  ranks;
* ``device_peak_mib_per_rank`` (JSON, ``--device cuda``): ``torch.cuda.max_memory_allocated``;
* ``s / HVP``: the median wall time of one product over ``--repeats`` products (after one
  untimed product);
* ``rel. diff``: exactness against the first row (``W = 1``):
  ``max |Hv_W - Hv_1| / max |Hv_1|`` over ``--sample`` entries at fixed parameter
  positions, and ``v^T H v`` compared the same way (the data are split over the ranks, so
  float sums are added in another order).

Prints a markdown table and writes JSON (``--json``). Each ``W`` and mode is one launch of
``W`` processes of this script (``--worker``), one after the other.

    python scripts/bench_sharded.py --json out/bench_sharded.json           # the full size
    python scripts/bench_sharded.py --quick --modes native,checkpointed,gather  # seconds
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FULL = dict(width=1024, layers=12, heads=16, context=64, sequences=8, batch_size=2)
QUICK = dict(width=64, layers=2, heads=4, context=16, sequences=8, batch_size=2)


def peak_rss_mib() -> float:
    """The process's peak resident set size (``VmHWM``), MiB; NaN where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def build_model(config, dtype, device, world_size, checkpointed=False):
    """The GPT sharded over ``world_size`` ranks without its full values on any rank: built on
    the ``meta`` device, its layers (under ``checkpoint_wrapper`` when ``checkpointed``) and
    root wrapped with ``fully_shard``, then each rank's rows filled from random weights made
    one parameter at a time (:func:`initial_value`: the same numbers for every ``W``)."""
    from lanczos_hessian.examples.small_gpt import SmallGPT

    with torch.device("meta"):
        model = SmallGPT(width=config["width"], layers=config["layers"], heads=config["heads"],
                         context=config["context"]).to(dtype)
    model = shard(model, world_size, device.type, checkpointed)
    model.to_empty(device=device)
    with torch.no_grad():
        for index, (name, p) in enumerate(model.named_parameters()):
            local = p.to_local()
            rows = p.shape[0]
            chunk = -(-rows // world_size)
            start = min(dist_rank() * chunk, rows)
            local.copy_(initial_value(index, name, tuple(p.shape), dtype)[
                start:start + local.shape[0]].to(device))
    return model.eval()


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def initial_value(index, name, shape, dtype) -> torch.Tensor:
    """Parameter ``index``'s random value: weights ``N(0, 1 / fan_in)``, layer-norm scales 1,
    biases 0 (seeded by ``index``)."""
    if len(shape) >= 2:
        g = torch.Generator().manual_seed(1000 + index)
        return (torch.randn(shape, generator=g) / shape[-1] ** 0.5).to(dtype)
    fill = 1.0 if "norm" in name and name.endswith("weight") else 0.0
    return torch.full(shape, fill, dtype=dtype)


def configuration(args) -> dict:
    """The sizes: ``QUICK`` or ``FULL`` with the ``--set KEY=INT`` overrides."""
    config = dict(QUICK if args.quick else FULL)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in config:
            raise SystemExit(f"--set {item}: no size {key!r} (one of {sorted(config)})")
        config[key] = int(value)
    return config


def token_data(config):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (config["sequences"], config["context"] + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def next_token_loss(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))


def shard(model, world_size, device_type, checkpointed=False):
    """``fully_shard`` per layer and at the root over all ranks (a one-rank mesh for W = 1);
    with ``checkpointed`` each layer under ``checkpoint_wrapper`` first (activation
    checkpointing as training code applies it to FSDP2 blocks)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world_size,))
    for i, layer in enumerate(model.layers):
        if checkpointed:
            model.layers[i] = layer = checkpoint_wrapper(layer)
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def held_mib(model) -> float:
    """MiB of parameter values this rank holds (its shards)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total / 2**20


def parameter_vector(op, dtype):
    """A fixed random ``v`` in parameter order (the same numbers on every ``W``)."""
    return torch.randn(op.shape[0], generator=torch.Generator().manual_seed(2), dtype=dtype)


def worker(args) -> None:
    """One rank: build, shard, take ``1 + repeats`` products, save times and a sample."""
    import torch.distributed as dist

    from lanczos_hessian import HessianOperator
    from lanczos_hessian.parallel.distributed import default_device, init_from_env

    torch.set_num_threads(args.threads)
    world = init_from_env(timeout_s=3600)  # NCCL for CUDA tensors when CUDA is there
    if not dist.is_initialized():  # W = 1: a group of one rank, so that FSDP2 shards
        dist.init_process_group("cpu:gloo,cuda:nccl" if args.device == "cuda" else "gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu") if args.device == "cpu" else default_device(world)
    config = configuration(args)
    dtype = getattr(torch, args.dtype)
    model = build_model(config, dtype, device, size, checkpointed=args.mode == "checkpointed")
    op = HessianOperator(model, next_token_loss, token_data(config), reduction="mean",
                         batch_size=config["batch_size"], check_data=False)
    build_peak = peak_rss_mib()  # the model built and sharded, the operator constructed
    dim, layout = op.shape[0], op.layout
    positions = np.sort(np.random.default_rng(3).choice(dim, min(args.sample, dim),
                                                        replace=False))
    v = parameter_vector(op, dtype)  # full length (the benchmark's, not the operator's)
    if args.mode in ("native", "checkpointed"):
        offsets = op.partition(size)
        lo, hi = offsets[rank], offsets[rank + 1]
        v = layout.from_parameters(v)[lo:hi].clone().to(device)  # this rank's rows only
    else:
        lo, hi = 0, dim
        v = layout.from_parameters(v).to(device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    if args.mode in ("native", "checkpointed"):
        product = op.rows_product(offsets)  # its trial step on the first batch
        if product is None:
            raise SystemExit("the operator offers no products on its shards")
    else:
        product = op.apply
    product(v[:, None])  # untimed
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        hv = product(v[:, None])[:, 0]
        times.append(time.perf_counter() - start)
    peak = peak_rss_mib()
    where = layout.locate(positions)  # the sample's places in the operator's order
    mine = (where >= lo) & (where < hi)
    row = {"world_size": size, "rank": rank, "mode": args.mode, "num_params": dim,
           "rest_mib": held_mib(model), "build_peak_mib": build_peak, "peak_mib": peak,
           "times": times,
           "device_peak_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                               if device.type == "cuda" else None),
           "sample": dict(zip(positions[mine].tolist(),
                              hv[torch.from_numpy(where[mine] - lo)].tolist())),
           "vHv": float(v.double() @ hv.double()) if args.mode != "gather" or rank == 0 else 0.0,
           "still_sharded": all(hasattr(p, "to_local") for p in model.parameters())}
    Path(args.worker, f"rank{rank}.json").write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalization: gloo's threads can abort it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size, mode, args) -> list:
    """Run ``world_size`` worker processes; their rows."""
    with tempfile.TemporaryDirectory() as out:
        port, procs = free_port(), []
        for rank in range(world_size):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size),
                       LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="65536")
            command = [sys.executable, __file__, "--worker", out, "--device", args.device,
                       "--mode", mode,
                       "--repeats",
                       str(args.repeats), "--dtype", args.dtype, "--sample", str(args.sample),
                       "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            command += [f"--set={item}" for item in args.set]
            procs.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE))
        errors = [p.communicate()[1].decode() for p in procs]
        for rank, (p, err) in enumerate(zip(procs, errors)):
            if p.returncode:
                raise SystemExit(f"W={world_size} {mode}, rank {rank} failed:\n{err[-3000:]}")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world_size)]


def relative(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def summarize(world_size, rows, base) -> dict:
    """One table row from every rank's numbers, compared with ``base`` (the first row's
    merged sample and ``v^T H v``)."""
    first = rows[0]
    sample = merged(rows)
    keys = sorted(base["sample"], key=int)
    return {"world_size": world_size, "mode": first["mode"], "num_params": first["num_params"],
            "rest_mib_per_rank": max(r["rest_mib"] for r in rows),
            "build_peak_mib_per_rank": max(r["build_peak_mib"] for r in rows),
            "peak_mib_per_rank": max(r["peak_mib"] for r in rows),
            "device_peak_mib_per_rank": first["device_peak_mib"] and max(
                r["device_peak_mib"] for r in rows),
            "seconds_per_hvp": max(statistics.median(r["times"]) for r in rows),
            "rel_diff_sample": relative([sample[k] for k in keys],
                                        [base["sample"][k] for k in keys]),
            "rel_diff_vHv": relative([sum(r["vHv"] for r in rows)], [base["vHv"]]),
            "still_sharded": all(r["still_sharded"] for r in rows),
            "sample": sample, "vHv": sum(r["vHv"] for r in rows)}


def merged(rows) -> dict:
    """The sampled entries of ``H v`` by parameter position, from every rank's rows
    (``native``) or from rank 0 (``gather``: every rank has them all)."""
    if rows[0]["mode"] == "gather":
        return rows[0]["sample"]
    sample = {}
    for r in rows:
        sample.update(r["sample"])
    return sample


def format_table(results) -> str:
    lines = ["| W | mode | params | rest MiB / rank | build peak MiB / rank | product peak "
             "MiB / rank | s / HVP | rel. diff Hv | rel. diff v^T H v | still sharded |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['world_size']} | {r['mode']} | {r['num_params'] / 1e6:.1f}M | "
                     f"{r['rest_mib_per_rank']:.1f} | {r['build_peak_mib_per_rank']:.0f} | "
                     f"{r['peak_mib_per_rank']:.0f} | {r['seconds_per_hvp']:.2f} | "
                     f"{r['rel_diff_sample']:.1e} | {r['rel_diff_vHv']:.1e} | "
                     f"{r['still_sharded']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-sizes", default="1,2,4", help="comma-separated W (first: 1)")
    parser.add_argument("--modes", default="native",
                        help="comma-separated: native (products on the shards), checkpointed "
                             "(the same with every layer under activation checkpointing), "
                             "gather")
    parser.add_argument("--quick", action="store_true", help="a tiny model, seconds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=INT",
                        help="override a size of the configuration (width, layers, heads, "
                             "context, sequences, batch_size), e.g. --set batch_size=8")
    parser.add_argument("--repeats", type=int, default=3, help="timed products per W")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--sample", type=int, default=20000, help="entries of Hv compared")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: one GPU per rank (LOCAL_RANK), NCCL")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank's output folder
    parser.add_argument("--mode", default="native", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    sizes = [int(w) for w in args.world_sizes.split(",")]
    if sizes[0] != 1:
        parser.error("--world-sizes must start with 1 (the reference)")
    results, base = [], None
    for world_size in sizes:
        for mode in args.modes.split(","):
            rows = launch(world_size, mode, args)
            row = summarize(world_size, rows, base or {"sample": merged(rows),
                                                       "vHv": sum(r["vHv"] for r in rows)})
            base = base or row
            results.append(row)
            print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_table(results))
    for row in results:
        row.pop("sample")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        info = {"config": configuration(args), "dtype": args.dtype,
                "device": args.device,
                "threads_per_rank": args.threads, "torch": torch.__version__,
                "results": results}
        Path(args.json).write_text(json.dumps(info, indent=1))
    return results


if __name__ == "__main__":
    main()
