"""Passes over the data for both ends of the spectrum: default policy, block mode, one BE run,
adaptive SLQ; each against ARPACK or the alternative, side by side in one run.

Four tables (and one JSON):

1. **bottom 5, default arguments** -- ``lanczos_eigsh(op, k=5, which="SA")`` with nothing else
   (the basis-size policy of :func:`lanczos_hessian.linalg.eigsh.default_ncv`), with our
   criterion (``||r|| <= tol ||H||``) and ARPACK's (``||r|| <= tol |theta|``), against
   ``scipy.sparse.linalg.eigsh`` at the same ``tol = 1e-6``: operator applications and their
   ratio (target: at most 0.5x ARPACK's, no warning).
2. **top 10, block mode** -- ``block_size`` 1, 2, 4, 8: data passes and vectors against
   ARPACK's applications (each one pass), same tolerance and criterion.
3. **both ends** -- one ``BE`` run (top 10 and bottom 5) against a top run plus a bottom run.
4. **adaptive SLQ** -- on the demo network, 20 seeds of :func:`lanczos_hessian.adaptive_slq`
   with a requested standard error of the trace: how often the exact trace (dense spectrum)
   lies within one and two standard errors, and the probes used.

Problems: the demo network (MLP 100-30-30-10 on 10 Gaussian clusters, 1,000 samples, trained
by 2,000 GD steps, float64), and ``scripts/compare_peers.py``'s MLP (512 samples) and CNN
(sklearn digits, 256 samples).

    python scripts/bench_ends.py --json out/bench_ends.json [--problems demo mlp cnn]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as spla
import torch

sys.path.insert(0, str(Path(__file__).parent))

TOL = 1e-6


def demo_operator():
    from lanczos_hessian import HessianOperator
    from lanczos_hessian.examples.problems import clusters_mlp

    problem = clusters_mlp(10, 1000, steps=2000, lr=0.1, seed=0, progress=False)
    x, y = problem.data
    return HessianOperator(problem.model.double(), problem.loss_fn, (x.double(), y),
                           batch_size=1000)


def peer_operator(name):
    import compare_peers as cp

    cfg = {**cp.FULL, **cp.FULL_OVERRIDES.get(name, {})}
    return cp.ours_operator(cp.make_problem(name, cfg))


def ours(op, **kwargs):
    from lanczos_hessian import lanczos_eigsh

    op.num_vectors = op.num_applications = 0
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lanczos_eigsh(op, rng=0, **kwargs)
    return {"passes": result.num_passes, "vectors": result.num_matvecs,
            "converged": bool(result.converged.all()), "warned": bool(caught),
            "eigenvalues": np.sort(result.eigenvalues).tolist(),
            "ncv_default": "ncv" not in kwargs, "seconds": time.perf_counter() - start}


def arpack(op, k, which):
    op.num_vectors = op.num_applications = 0
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    start = time.perf_counter()
    values = spla.eigsh(op, k=k, which=which, tol=TOL, v0=v0, maxiter=5000)[0]
    return {"passes": op.num_applications, "vectors": op.num_vectors,
            "eigenvalues": np.sort(values).tolist(), "seconds": time.perf_counter() - start}


def bottom_rows(name, op):
    ref = arpack(op, 5, "SA")
    rows = []
    for criterion in ("norm", "eigenvalue"):
        r = ours(op, k=5, which="SA", tol=TOL, criterion=criterion)
        err = np.abs(np.array(r["eigenvalues"]) - ref["eigenvalues"]).max()
        rows.append({"problem": name, "criterion": criterion, **r, "arpack": ref["vectors"],
                     "ratio": r["vectors"] / ref["vectors"], "max_diff": float(err)})
    return rows


def block_rows(name, op):
    ref = arpack(op, 10, "LA")
    rows = []
    for b in (1, 2, 4, 8):
        r = ours(op, k=10, which="LA", tol=TOL, criterion="eigenvalue", block_size=b)
        rows.append({"problem": name, "block_size": b, **r, "arpack_passes": ref["passes"],
                     "pass_ratio": r["passes"] / ref["passes"],
                     "max_diff": float(np.abs(np.array(r["eigenvalues"])
                                              - ref["eigenvalues"]).max())})
    return rows


def both_ends_rows(name, op):
    top = ours(op, k=10, which="LA", tol=TOL)
    bottom = ours(op, k=5, which="SA", tol=TOL)
    both = ours(op, k=15, which="BE", k_bottom=5, tol=TOL)
    return [{"problem": name, "BE_passes": both["passes"], "separate_passes":
             top["passes"] + bottom["passes"], "top": top["passes"], "bottom": bottom["passes"],
             "BE_converged": both["converged"],
             "ratio": both["passes"] / (top["passes"] + bottom["passes"])}]


def adaptive_rows(op, seeds=20, confidence=0.95):
    """``adaptive_slq`` asked for the trace to within 2% at ``confidence``, per seed: whether
    the exact trace (dense spectrum) lies within the requested error, and within one and two
    of the reported standard errors."""
    from lanczos_hessian import adaptive_slq
    from lanczos_hessian.curvature.dense import dense_spectrum

    exact = float(dense_spectrum(op, method="products").sum())
    target = 0.02 * abs(exact)
    rows = []
    for seed in range(seeds):
        result = adaptive_slq(op, target, confidence=confidence, probes_per_round=10,
                              max_probes=2000, num_steps=10, rng=seed)
        t = result.trace()
        rows.append({"seed": seed, "trace": t.value, "stderr": t.stderr, "exact": exact,
                     "target": target, "confidence": confidence, "probes": result.num_probes,
                     "passes": result.num_passes, "error": t.value - exact,
                     "within_target": abs(t.value - exact) <= target,
                     "within_1": abs(t.value - exact) <= t.stderr,
                     "within_2": abs(t.value - exact) <= 2 * t.stderr})
    return rows


def table(title, rows, columns):
    print(f"\n{title}")
    print(" | ".join(f"{c:>12}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:>12.3g}" if isinstance(v, float) else f"{str(v):>12}")
        print(" | ".join(cells))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["demo", "mlp", "cnn"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-adaptive", action="store_true")
    parser.add_argument("--only-adaptive", action="store_true",
                        help="only the adaptive-SLQ table (the demo network)")
    parser.add_argument("--adaptive-seeds", type=int, default=20)
    parser.add_argument("--adaptive-confidence", type=float, default=0.95)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {"bottom": [], "block": [], "both_ends": [], "adaptive": []}
    for name in args.problems:
        op = demo_operator() if name == "demo" else peer_operator(name)
        print(f"{name}: {op.shape[0]} parameters", flush=True)
        if not args.only_adaptive:
            out["bottom"] += bottom_rows(name, op)
            out["block"] += block_rows(name, op)
            out["both_ends"] += both_ends_rows(name, op)
        if name == "demo" and not args.skip_adaptive:
            out["adaptive"] = adaptive_rows(op, seeds=args.adaptive_seeds,
                                            confidence=args.adaptive_confidence)
    table("bottom 5, default arguments, tol 1e-6 (vectors = operator applications)",
          out["bottom"], ["problem", "criterion", "vectors", "arpack", "ratio", "converged",
                          "warned", "max_diff"])
    table("top 10, block mode, ARPACK's criterion, tol 1e-6", out["block"],
          ["problem", "block_size", "passes", "vectors", "arpack_passes", "pass_ratio",
           "max_diff", "seconds"])
    table("both ends: one BE run (top 10 + bottom 5) against two runs", out["both_ends"],
          ["problem", "BE_passes", "separate_passes", "ratio", "BE_converged"])
    if out["adaptive"]:
        rows = out["adaptive"]
        table(f"adaptive SLQ on the demo network (trace to within 2% at "
              f"{rows[0]['confidence']:.0%} confidence)", rows,
              ["seed", "trace", "exact", "stderr", "probes", "within_target", "within_1"])
        print(f"within the requested error: {sum(r['within_target'] for r in rows)}/{len(rows)};"
              f" within 1 stderr: {sum(r['within_1'] for r in rows)}/{len(rows)}; within 2: "
              f"{sum(r['within_2'] for r in rows)}/{len(rows)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return out


if __name__ == "__main__":
    main()
