"""Benchmark: the 61.1M-parameter AlexNet on this machine, with the Lanczos basis on disk.

The point is memory, not data: a few 224x224 images (random, seeded) and random labels.
Each measurement runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``)
is its own:

1. full reorthogonalization against an on-disk basis for 10, 20 and 30 Lanczos steps: peak
   memory (target under 6 GiB, flat in the number of steps) and the time per step split into
   the operator, the arithmetic of reorthogonalization, and HDF5 I/O;
2. the same with 2 gloo ranks and the vectors sharded across them (each rank's basis holds
   half the rows);
3. the top 10 eigenpairs by thick-restart Lanczos with the basis on disk and the Ritz vectors
   written to HDF5 row block by row block;
4. what 100 steps would need here: disk, I/O and time, extrapolated from (1); when that
   basis is larger than this machine's memory, its sweeps cannot stay in the page cache, so
   the I/O is also projected at the disk's own read rate (measured with ``O_DIRECT``).

    python scripts/bench_scale.py --json out/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2**30


# ---- the measured work (runs inside a subprocess) --------------------------------------
def _problem(num_images, seed=0):
    import torch

    from lanczos_hessian import HessianOperator
    from lanczos_hessian.examples.models import alexnet_imagenet

    torch.manual_seed(seed)
    model = alexnet_imagenet()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_images, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (num_images,), generator=g)
    return HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=num_images,
                           strategy="reverse-over-reverse", check_data=False)


def _steps_worker(args):
    """Lanczos steps against an HDF5 basis; prints one JSON line."""
    import h5py
    import torch

    from lanczos_hessian.linalg.lanczos import LanczosProcess
    from lanczos_hessian.linalg.linop import as_block_matvec
    from lanczos_hessian.linalg.partition import ShardedMatvec
    from lanczos_hessian.parallel.sharding import Shard
    from lanczos_hessian.storage.disk_basis import HDF5Basis, create_basis_dataset

    if args.ranks > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.ranks))
    op = _problem(args.images)
    n = op.shape[0]
    shard = Shard(n)
    matvec = as_block_matvec(op)
    if shard.is_split:
        matvec = ShardedMatvec(matvec, shard)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp, \
            h5py.File(f"{tmp}/basis.h5", "w") as handle:
        ds = create_basis_dataset(handle, "basis", shard.local_dim, args.steps + 1)
        basis = HDF5Basis(ds, args.steps + 1)
        g = torch.Generator().manual_seed(0)
        v0 = shard.local(torch.randn(n, generator=g, dtype=torch.float64))
        process = LanczosProcess(matvec, v0, args.steps + 1, g, basis=basis, shard=shard)
        from tqdm.auto import tqdm

        start = time.perf_counter()
        for _ in tqdm(range(args.steps), desc=f"{args.steps} steps, rank {shard.rank}",
                      unit="step", leave=False, disable=shard.rank > 0):
            process.step()
        total = time.perf_counter() - start
        gram = shard.sum(basis.gram())  # orthogonality of the on-disk basis, streamed
        orth = float((gram - torch.eye(basis.size, dtype=torch.float64)).abs().max())
        disk_bytes = os.path.getsize(f"{tmp}/basis.h5")
    t = process.timings
    print(json.dumps({
        "kind": "steps", "ranks": args.ranks, "rank": shard.rank, "steps": args.steps,
        "params": n, "local_rows": shard.local_dim, "images": args.images,
        "operator_s": t["operator"], "reorth_total_s": t["orthogonalization"],
        "io_s": basis.io_seconds, "reorth_arith_s": t["orthogonalization"] - basis.io_seconds,
        "total_s": total, "bytes_read": basis.bytes_read, "bytes_written": basis.bytes_written,
        "disk_bytes": disk_bytes, "orthogonality": orth,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }), flush=True)


def _eigs_worker(args):
    """Top-10 by thick restart, basis on disk, Ritz vectors streamed into an HDF5 file."""
    import h5py
    import numpy as np

    from lanczos_hessian import lanczos_eigsh
    from lanczos_hessian.linalg.hooks import Hooks
    from lanczos_hessian.storage.disk_basis import HDF5Basis, create_basis_dataset

    op = _problem(args.images)
    n, ncv = op.shape[0], args.ncv
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp, \
            h5py.File(f"{tmp}/run.h5", "w") as handle:
        basis = HDF5Basis(create_basis_dataset(handle, "basis", n, ncv), ncv)
        holder = {}

        def keep(process, theta, bounds):
            holder["process"] = process

        start = time.perf_counter()
        result = lanczos_eigsh(op, k=10, which="LA", tol=args.tol, ncv=ncv,
                               max_matvecs=args.max_matvecs, rng=0,
                               hooks=Hooks(bases=lambda i, dim, capacity: basis),
                               return_eigenvectors=False, true_residuals=False, callback=keep,
                               progress=True)
        solve_s = time.perf_counter() - start
        process = holder["process"]
        theta, S = process.ritz()
        want = np.argsort(theta)[-10:]
        vectors = handle.create_dataset("eigenvectors", shape=(n, 10), dtype="f8",
                                        chunks=(min(n, 1 << 15), 10))
        t0 = time.perf_counter()
        for lo, hi, block in basis.combine_blocks(S[:, want]):
            vectors[lo:hi] = block.numpy()
        write_s = time.perf_counter() - t0
        norms = [float(np.linalg.norm(vectors[:, j])) for j in range(10)]
    print(json.dumps({
        "kind": "eigs", "params": n, "images": args.images, "ncv": ncv,
        "eigenvalues": result.eigenvalues.tolist(),
        "residual_bounds": result.residual_bounds.tolist(),
        "converged": int(result.converged.sum()), "matvecs": result.num_matvecs,
        "restarts": result.num_restarts, "solve_s": solve_s, "ritz_write_s": write_s,
        "ritz_norms": norms, "operator_s": result.timings["operator"],
        "io_s": basis.io_seconds, "bytes_read": basis.bytes_read,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }), flush=True)


# ---- the driver ---------------------------------------------------------------------------
def _spawn(kind, extra, timeout, ranks=1):
    """Run a worker; its progress bars and errors go to this terminal's stderr."""
    base = [sys.executable, __file__, "--worker", kind] + extra
    if ranks == 1:
        out = subprocess.run(base, stdout=subprocess.PIPE, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"the {kind} worker failed (exit {out.returncode}; its "
                               "error is printed above)")
        return [json.loads(out.stdout.strip().splitlines()[-1])]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(base + ["--ranks", str(ranks)], stdout=subprocess.PIPE,
                              stderr=None if r == 0 else subprocess.PIPE, text=True,
                              env=dict(os.environ, RANK=str(r), WORLD_SIZE=str(ranks),
                                       LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)))
             for r in range(ranks)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        if p.returncode:
            raise RuntimeError((stderr or "the error of rank 0 is printed above")[-3000:])
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--sharded-steps", type=int, default=10)
    parser.add_argument("--ncv", type=int, default=24)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-matvecs", type=int, default=120)
    parser.add_argument("--skip-eigs", action="store_true")
    parser.add_argument("--skip-steps", action="store_true",
                        help="only the thick-restart eigs part")
    parser.add_argument("--scratch", default=None, help="directory for the on-disk bases")
    parser.add_argument("--worker-timeout", type=float, default=6 * 3600,
                        help="seconds each measured run may take")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps-one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "steps":
        args.steps = args.steps_one
        return _steps_worker(args)
    if args.worker == "eigs":
        return _eigs_worker(args)
    common = ["--images", str(args.images)] + (["--scratch", args.scratch] if args.scratch else [])
    report = {"steps": [], "sharded": [], "eigs": None}
    print("AlexNet (ImageNet size) on", args.images, "images, basis on disk\n")
    if not args.skip_steps:
        _run_steps(args, common, report)
    if not args.skip_eigs:
        row = _spawn("eigs", common + ["--ncv", str(args.ncv), "--tol", str(args.tol),
                                       "--max-matvecs", str(args.max_matvecs)],
                     timeout=args.worker_timeout)[0]
        report["eigs"] = row
        print(f"\ntop-10 by thick restart (ncv={row['ncv']}, basis on disk): "
              f"{row['converged']}/10 converged to tol={args.tol:g}*||H|| in "
              f"{row['matvecs']} HVPs, {row['restarts']} restarts, {row['solve_s']:.0f} s; "
              f"Ritz vectors written in {row['ritz_write_s']:.1f} s; peak RSS "
              f"{row['peak_rss_gib']:.2f} GiB")
        print("eigenvalues:", ", ".join(f"{v:.4g}" for v in row["eigenvalues"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwritten to {args.json}")


def _run_steps(args, common, report):
    """Full reorthogonalization against an on-disk basis: 1 rank, then 2 sharded ranks."""
    print(" steps  ranks   peak RSS   operator/step   reorth arith/step   I/O/step   "
          "read/step   ||Q^TQ-I||")
    for steps in args.steps:
        row = _spawn("steps", common + ["--steps-one", str(steps)],
                     timeout=args.worker_timeout)[0]
        report["steps"].append(row)
        _print_steps(row)
    for row in _spawn("steps", common + ["--steps-one", str(args.sharded_steps)],
                      timeout=args.worker_timeout, ranks=2):
        report["sharded"].append(row)
        _print_steps(row)
    report["projection_100_steps"] = p = _project(report["steps"][-1], 100)
    print(f"\n100 steps here: basis {p['disk_gib']:.1f} GiB on disk, {p['read_tib']:.2f} TiB "
          f"read in reorthogonalization at {p['io_rate_gib_s']:.1f} GiB/s, about "
          f"{p['hours']:.2f} h ({p['operator_h']:.2f} h operator, {p['reorth_arith_h']:.2f} h "
          f"reorthogonalization arithmetic, {p['io_h']:.2f} h I/O)")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if p["disk_gib"] * GIB > memory:
        rate = _device_read_rate(args.scratch or tempfile.gettempdir())
        p["memory_gib"], p["device_read_gib_s"] = memory / GIB, rate and rate / GIB
        if rate:
            p["io_h_device"] = p["read_tib"] * 2**40 / rate / 3600
            print(f"  but that basis exceeds this machine's {memory / GIB:.0f} GiB of memory: "
                  f"read from the disk itself at {rate / GIB:.2f} GiB/s (O_DIRECT), the I/O "
                  f"would take about {p['io_h_device']:.1f} h")


def _device_read_rate(directory, nbytes=2 * GIB, block=8 << 20):
    """Sequential read rate (bytes/s) of the disk holding ``directory``, bypassing the page
    cache with ``O_DIRECT``; ``None`` where the file system does not support it."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = f"{tmp}/probe"
        chunk = os.urandom(block)
        with open(path, "wb") as f:
            for _ in range(nbytes // block):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except (AttributeError, OSError):
            return None
        buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
        try:
            start, total = time.perf_counter(), 0
            while (count := os.readv(fd, [buffer])) > 0:
                total += count
            return total / (time.perf_counter() - start)
        except OSError:
            return None
        finally:
            os.close(fd)
            buffer.close()


def _print_steps(row):
    s = row["steps"]
    print(f" {s:>5}  {row['ranks']:>2}/{row['rank']:<2}  {row['peak_rss_gib']:6.2f} GiB  "
          f"{row['operator_s'] / s:10.2f} s  {row['reorth_arith_s'] / s:14.2f} s  "
          f"{row['io_s'] / s:9.2f} s  {row['bytes_read'] / s / GIB:7.2f} GiB  "
          f"{row['orthogonality']:10.1e}", flush=True)


def _project(row, steps):
    """Extrapolate to ``steps``: reads and reorthogonalization arithmetic grow linearly per
    step (3 sweeps of the j columns at step j), the operator is constant per step."""
    n, measured = row["params"], row["steps"]
    growth = (steps * (steps + 1)) / (measured * (measured + 1))  # sum of j, then over now
    read = row["bytes_read"] * growth
    io_rate = row["bytes_read"] / max(row["io_s"], 1e-9)
    operator_h = row["operator_s"] / measured * steps / 3600
    io_h = read / io_rate / 3600
    arith_h = row["reorth_arith_s"] * growth / 3600
    return {"steps": steps, "disk_gib": n * (steps + 1) * 8 / GIB, "read_tib": read / 2**40,
            "io_rate_gib_s": io_rate / GIB, "operator_h": operator_h, "io_h": io_h,
            "reorth_arith_h": arith_h, "hours": operator_h + io_h + arith_h}


if __name__ == "__main__":
    main()
