"""Mixed precision: what the operator's precision costs in accuracy (float64 as reference).

The Hessian-vector products run in the model's dtype (float64, float32 or bfloat16); the
accumulation over batches, the Lanczos recurrence and the tridiagonal eigensolve stay in
float64 (see lanczos_hessian.curvature.operators and lanczos_hessian.linalg.lanczos). On the demo's network
(MLP 100-30-30-10 on 10 Gaussian clusters, trained), this script reports for each precision
the relative error of the top 10 eigenvalues, of the most negative one, of the SLQ trace,
and the true residuals, against the float64 run with the same seeds.

    python scripts/bench_precision.py --json out/bench_precision.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from lanczos_hessian import HessianOperator, lanczos_eigsh, slq
from lanczos_hessian.examples.problems import clusters_mlp


def measure(model, loss_fn, inputs, targets, dtype):
    model = copy.deepcopy(model).to(dtype)
    op = HessianOperator(model, loss_fn, (inputs.to(dtype), targets), batch_size=250)
    start = time.perf_counter()
    top = lanczos_eigsh(op, k=10, which="LA", tol=1e-7, rng=0, true_residuals=True)
    bottom = lanczos_eigsh(op, k=1, which="SA", tol=1e-7, rng=0, ncv=60, max_matvecs=600)
    density = slq(op, num_probes=8, num_steps=40, rng=0)
    return {"top": top.eigenvalues, "top_residuals": top.residuals,
            "bottom": bottom.eigenvalues[0], "trace": density.trace().value,
            "trace_stderr": density.trace().stderr, "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    problem = clusters_mlp(steps=1000)
    inputs, targets = problem.data
    rows = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32),
                        ("bfloat16", torch.bfloat16)):
        rows[name] = measure(problem.model, problem.loss_fn, inputs, targets, dtype)
    ref = rows["float64"]
    scale = np.abs(ref["top"]).max()
    print("precision   max rel. err top-10   err bottom / lambda_max   rel. err trace   "
          "max true residual / lambda_max   time")
    report = {}
    for name, row in rows.items():
        entry = {
            "top_rel_error": float(np.max(np.abs(row["top"] - ref["top"]) / np.abs(ref["top"]))),
            "bottom_error_rel_lambda_max": float(abs(row["bottom"] - ref["bottom"]) / scale),
            "trace_rel_error": float(abs(row["trace"] - ref["trace"]) / abs(ref["trace"])),
            "max_true_residual_rel": float(np.max(row["top_residuals"]) / scale),
            "seconds": row["seconds"],
        }
        report[name] = entry
        print(f"{name:>9}   {entry['top_rel_error']:19.1e}   {entry['bottom_error_rel_lambda_max']:23.1e}"
              f"   {entry['trace_rel_error']:14.1e}   {entry['max_true_residual_rel']:30.1e}"
              f"   {entry['seconds']:5.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
