"""Thick-restart Lanczos against ARPACK: operator applications at the same basis size.

For each problem and setting, ``lanczos_eigsh`` (criterion ``"eigenvalue"``: residual <=
tol * |theta|, ARPACK's test) and ``scipy.sparse.linalg.eigsh`` (implicitly restarted
Lanczos, ARPACK) get the same operator, ``k``, ``which``, ``ncv`` and ``tol``; the table
shows the applications each needed, and the largest eigenvalue difference between them.

Problems: a 2,000 x 2,000 matrix with 20 spikes above a uniform bulk, one with a
Marchenko-Pastur bulk and a large null space (like an over-parametrized Hessian), and the
Hessian of the demo's trained network (4,270 parameters, float64).

    python scripts/bench_restart.py --json out/bench_restart.json
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import scipy.sparse.linalg as spla

from lanczos_hessian import HessianOperator, lanczos_eigsh
from lanczos_hessian.examples.problems import clusters_mlp


def spectrum_matrix(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (Q * eigenvalues) @ Q.T


def problems():
    rng = np.random.default_rng(0)
    spiked = np.concatenate([rng.uniform(-1, 1, 1980), np.linspace(3, 10, 20)])
    x = rng.standard_normal((2000, 600)) / np.sqrt(2000)
    mp = np.concatenate([np.linalg.eigvalsh(x.T @ x), np.zeros(1390), -0.05 * rng.random(5),
                         np.linspace(2, 6, 5)])
    yield "spiked uniform (n=2000)", spectrum_matrix(spiked, 1)
    yield "MP bulk + null space (n=2000)", spectrum_matrix(mp, 2)
    problem = clusters_mlp(steps=1000)
    x, y = problem.data
    yield "demo network Hessian (n=4270)", HessianOperator(problem.model.double(),
                                                            problem.loss_fn, (x.double(), y),
                                                            batch_size=1000)


class Counting(spla.LinearOperator):
    def __init__(self, op):
        super().__init__(dtype=np.float64, shape=op.shape)
        self.op, self.count = op, 0

    def _matvec(self, x):
        self.count += 1
        return self.op @ x if isinstance(self.op, np.ndarray) else self.op.matvec(x)

    def _matmat(self, X):
        self.count += X.shape[1]
        return self.op @ X if isinstance(self.op, np.ndarray) else self.op.matmat(X)


def compare(op, k, which, ncv, tol):
    counted = Counting(op)
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = lanczos_eigsh(counted, k=k, which=which, ncv=ncv, tol=tol, v0=v0,
                             criterion="eigenvalue", max_matvecs=20000,
                             return_eigenvectors=False)
    ours_count, counted.count = counted.count, 0
    arpack = np.sort(spla.eigsh(counted, k=k, which=which, ncv=ncv, tol=tol, v0=v0,
                                return_eigenvectors=False))
    return {"lanczos_matvecs": ours_count, "arpack_matvecs": counted.count,
            "lanczos_converged": int(ours.converged.sum()), "restarts": ours.num_restarts,
            "max_difference": float(np.abs(ours.eigenvalues - arpack).max())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'problem':<32} {'which':>5} {'k':>3} {'ncv':>4} {'ours':>6} {'ARPACK':>7} "
          f"{'ratio':>6} {'restarts':>8} {'max |diff|':>10}")
    for name, op in problems():
        for which, k in (("LA", 10), ("SA", 5), ("BE", 10)):
            for ncv in (24, 40):
                row = {"problem": name, "which": which, "k": k, "ncv": ncv,
                       **compare(op, k, which, ncv, args.tol)}
                rows.append(row)
                print(f"{name:<32} {which:>5} {k:>3} {ncv:>4} {row['lanczos_matvecs']:>6} "
                      f"{row['arpack_matvecs']:>7} "
                      f"{row['lanczos_matvecs'] / row['arpack_matvecs']:>6.2f} "
                      f"{row['restarts']:>8} {row['max_difference']:>10.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
