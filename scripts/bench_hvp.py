"""Benchmark: full-dataset HVPs against gradients, block products, and eigensolvers.

Measured side by side in one run, on an MLP and a CNN of about 1M parameters over real
MNIST digits (the shipped 10k subset), all on this machine's CPU:

1. one full-dataset gradient (the unit) and one full-dataset HVP per strategy, as a ratio;
2. block products with 1, 4 and 16 vectors: time per vector over the gradient's time;
4. (``--slq``) SLQ with 10 probes x 80 steps on the CNN: lockstep probes, streamed to HDF5,
   against one probe at a time (wall time and data passes), and the share of the time that
   is not the operator (reorthogonalization, quadrature, HDF5 writes);
3. the top 10 eigenvalues to relative residual 1e-6 (ARPACK's criterion ||r|| <= tol |theta|):
   operator applications and wall time of ``lanczos_eigsh`` beside
   ``scipy.sparse.linalg.eigsh`` on the same operator.

Prints tables and writes JSON (``--json``). Absolute times on a shared machine are noise;
the ratios, taken in the same run, are the result.

    python scripts/bench_hvp.py --json out/bench_hvp.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import scipy.sparse.linalg as spla
import torch

from lanczos_hessian import HessianOperator, lanczos_eigsh
from lanczos_hessian.examples.datasets import load_mnist
from lanczos_hessian.examples.models import mlp, num_parameters, small_cnn
from lanczos_hessian.curvature.operators import evaluation_mode


def models():
    torch.manual_seed(0)
    return {
        "mlp": (mlp([784, 1000, 200, 10]), True),
        "cnn": (small_cnn(1, 10, 28, channels=(32, 64), hidden=300), False),
    }


def best_of(fn, repeats):
    """Minimum wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def full_gradient(model, loss_fn, batches):
    """One full-dataset gradient with the same batches and weighting as the operator."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    n = 0
    with evaluation_mode(model):
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model(x), y), params)
            for t, g in zip(total, grads):
                t.add_(g.to(torch.float64), alpha=len(x))
            n += len(x)
    return [t / n for t in total]


def bench_products(name, model, inputs, targets, batch_size, repeats, rows):
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [(inputs[i:i + batch_size], targets[i:i + batch_size])
               for i in range(0, len(inputs), batch_size)]
    grad_time = best_of(lambda: full_gradient(model, loss_fn, batches), repeats)
    dim = num_parameters(model)
    for strategy in ("forward-over-reverse", "reverse-over-reverse"):
        op = HessianOperator(model, loss_fn, (inputs, targets), batch_size=batch_size,
                             strategy=strategy, check_data=False)
        for b in (1, 4, 16):
            V = torch.randn(dim, b, dtype=torch.float64)
            op.apply(V)  # warm-up
            t = best_of(lambda: op.apply(V), repeats)
            rows.append({"model": name, "params": dim, "strategy": strategy, "vectors": b,
                         "seconds": t, "gradient_seconds": grad_time,
                         "per_vector_over_gradient": t / b / grad_time})
            print(f"{name:>4} {dim:>9,d} {strategy:>21} {b:>3}  {t:8.3f} s  "
                  f"{t / b / grad_time:6.2f}x gradient per vector", flush=True)


def bench_eigs(name, model, inputs, targets, batch_size, rows, block_sizes=()):
    loss_fn = torch.nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (inputs, targets), batch_size=batch_size,
                         check_data=False)
    start = time.perf_counter()
    ours = lanczos_eigsh(op, k=10, which="LA", tol=1e-6, criterion="eigenvalue", rng=0,
                         return_eigenvectors=True, max_matvecs=2000)
    ours_time = time.perf_counter() - start
    ours_res = _relative_residuals(op, ours.eigenvalues, ours.eigenvectors)
    count = op.num_vectors
    start = time.perf_counter()
    values, vectors = spla.eigsh(op, k=10, which="LA", tol=1e-6,
                                 v0=np.random.default_rng(0).standard_normal(op.shape[0]))
    arpack_time = time.perf_counter() - start
    arpack_count = op.num_vectors - count  # ARPACK's own products only
    arpack_res = _relative_residuals(op, values, vectors)
    row = {"model": name, "params": op.shape[0], "samples": len(inputs),
           "lanczos_matvecs": ours.num_matvecs, "lanczos_seconds": ours_time,
           "lanczos_max_rel_residual": float(ours_res.max()),
           "arpack_matvecs": arpack_count, "arpack_seconds": arpack_time,
           "arpack_max_rel_residual": float(arpack_res.max()),
           "max_eigenvalue_difference": float(np.abs(np.sort(values) - ours.eigenvalues).max())}
    rows.append(row)
    print(f"{name:>4}  lanczos_eigsh {row['lanczos_matvecs']:>4} matvecs {ours_time:7.1f} s "
          f"(max rel. residual {row['lanczos_max_rel_residual']:.1e})   ARPACK "
          f"{arpack_count:>4} matvecs {arpack_time:7.1f} s (max rel. residual "
          f"{row['arpack_max_rel_residual']:.1e})", flush=True)
    for b in block_sizes:  # the block mode: passes and wall time against the single vector
        start = time.perf_counter()
        block = lanczos_eigsh(op, k=10, which="LA", tol=1e-6, criterion="eigenvalue", rng=0,
                              block_size=b, return_eigenvectors=False, max_matvecs=4000)
        seconds = time.perf_counter() - start
        row[f"block{b}"] = {"passes": block.num_passes, "vectors": block.num_matvecs,
                            "seconds": seconds, "converged": bool(block.converged.all()),
                            "max_eigenvalue_difference":
                                float(np.abs(block.eigenvalues - ours.eigenvalues).max())}
        print(f"{name:>4}  block_size {b}: {block.num_passes:>4} passes ({block.num_matvecs} "
              f"vectors) {seconds:7.1f} s, against {ours.num_passes} passes "
              f"{ours_time:7.1f} s single-vector; ARPACK {arpack_count} passes", flush=True)


def bench_slq(model, inputs, targets, batch_size, num_probes, num_steps):
    """SLQ lockstep (one pass per step, streamed to HDF5) vs one probe at a time."""
    import tempfile

    from lanczos_hessian.run import slq_job
    from lanczos_hessian.linalg.slq import draw_probes, slq

    loss_fn = torch.nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (inputs, targets), batch_size=batch_size,
                         check_data=False)
    op.apply(torch.randn(op.shape[0], num_probes, dtype=torch.float64))  # warm-up, calibration
    with tempfile.TemporaryDirectory() as tmp:
        passes = op.num_applications
        start = time.perf_counter()
        _, lock = slq_job(op, f"{tmp}/slq.h5", num_probes=num_probes, num_steps=num_steps,
                          seed=0, progress=False)
        lock_s = time.perf_counter() - start
        lock_passes = op.num_applications - passes
    t = lock.timings
    non_operator = lock_s - t["operator"]
    slq_seed = int(np.random.SeedSequence(0).spawn(2)[1].generate_state(1)[0])  # slq_job's
    Z = draw_probes(op.shape[0], num_probes, "rademacher", slq_seed)
    passes = op.num_applications
    start = time.perf_counter()
    single = [slq(op, 1, num_steps, probes=Z[:, [p]]) for p in range(num_probes)]
    single_s = time.perf_counter() - start
    single_passes = op.num_applications - passes
    diff = max(float(np.nanmax(np.abs(one.nodes[0] - lock.nodes[p])))
               for p, one in enumerate(single))
    row = {"params": op.shape[0], "samples": len(inputs), "probes": num_probes,
           "steps": num_steps, "lockstep_seconds": lock_s, "lockstep_passes": lock_passes,
           "single_seconds": single_s, "single_passes": single_passes,
           "speedup": single_s / lock_s, "operator_seconds": t["operator"],
           "orthogonalization_seconds": t["orthogonalization"],
           "quadrature_seconds": t["quadrature"],
           "hdf5_and_other_seconds": lock_s - t["operator"] - t["orthogonalization"]
           - t["quadrature"],
           "non_operator_fraction": non_operator / lock_s, "max_node_difference": diff}
    print(f" cnn  SLQ {num_probes} probes x {num_steps} steps: lockstep {lock_s:.0f} s in "
          f"{lock_passes} passes, one probe at a time {single_s:.0f} s in {single_passes} "
          f"passes ({row['speedup']:.2f}x); not the operator: {100 * row['non_operator_fraction']:.1f}% "
          f"(reorthogonalization {t['orthogonalization']:.1f} s, quadrature "
          f"{t['quadrature']:.2f} s, HDF5 and the rest {row['hdf5_and_other_seconds']:.1f} s); "
          f"max node difference {diff:.1e}", flush=True)
    return row


def _relative_residuals(op, values, vectors):
    """True ||H v - theta v|| / |theta| (one block application, not counted in the comparison)."""
    HV = op.apply(torch.from_numpy(np.ascontiguousarray(vectors))).numpy()
    return np.linalg.norm(HV - vectors * values, axis=0) / np.abs(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048, help="data set size for products")
    parser.add_argument("--eig-samples", type=int, default=512, help="data set size for eigs")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-products", action="store_true")
    parser.add_argument("--skip-eigs", action="store_true")
    parser.add_argument("--slq", action="store_true", help="also SLQ lockstep vs one at a time")
    parser.add_argument("--slq-samples", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--block-sizes", nargs="*", type=int, default=[4, 8],
                        help="block sizes of the top-10 block-mode rows (none: skip them)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    x, y = load_mnist(max(args.samples, args.eig_samples))
    products, eigs = [], []
    if not args.skip_products:
        print("model   params              strategy   b      time   per-vector cost")
    for name, (model, flat) in models().items():
        if name not in args.models or args.skip_products:
            continue
        inputs = x.reshape(len(x), -1) if flat else x
        bench_products(name, model, inputs[: args.samples], y[: args.samples],
                       args.batch_size, args.repeats, products)
    if not args.skip_eigs:
        print("\ntop-10 eigenvalues, relative residual 1e-6")
        for name, (model, flat) in models().items():
            if name not in args.models:
                continue
            _quick_train(model, x, y, flat)
            inputs = x.reshape(len(x), -1) if flat else x
            bench_eigs(name, model, inputs[: args.eig_samples], y[: args.eig_samples],
                       args.batch_size, eigs, args.block_sizes)
    slq_row = None
    if args.slq:
        print("\nSLQ on the CNN")
        model = models()["cnn"][0]
        slq_row = bench_slq(model, x[: args.slq_samples], y[: args.slq_samples],
                            args.batch_size, 10, 80)
    report = {"slq": slq_row, "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "products": products, "eigs": eigs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwritten to {args.json}")


def _quick_train(model, x, y, flat, steps=100):
    """A few SGD steps so that the spectrum is that of a network in training, not at init."""
    from lanczos_hessian.examples.training import train

    inputs = x.reshape(len(x), -1) if flat else x
    train(model, torch.nn.CrossEntropyLoss(), inputs, y, steps=steps, lr=0.05, batch_size=128)


if __name__ == "__main__":
    main()
