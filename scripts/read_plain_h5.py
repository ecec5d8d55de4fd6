"""Read a lanczos_hessian spectrum file with h5py and numpy only: no import of the package.

The formulas are those of docs/FORMAT.md ("Rebuilding the statistics"), written out here so
that an analyst can check them against the package's own numbers::

    python scripts/read_plain_h5.py bulk.h5                      # trace, moments, density
    python scripts/read_plain_h5.py bulk.h5 --width 1e-4 --json out.json

For the SLQ group (P probes, Gauss rules ``nodes``/``weights`` of shape (P, m), ``k``
deflated ``outliers``, operator size ``dim = n``), probe ``p``'s measure of the whole spectrum
gives mass ``bulk_mass * weights[p, i]`` to ``nodes[p, i]`` and ``1/n`` to every outlier;
the spectral moment ``m_q = (1/n) tr(A^q)`` is estimated per probe by that measure's
``q``-th moment, and ``tr(A^q)`` by ``n`` times it (the trace is ``q = 1``), averaged over
probes with standard error ``std(ddof=1) / sqrt(P)``; the density is the probe-averaged
measure smoothed by a Gaussian kernel of standard deviation ``width``. A file whose SLQ run
was cut off holds no ``nodes``: its rules are rebuilt from the committed step records.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import h5py
import numpy as np

#: Default kernel variance after mapping the spectrum to [-1, 1] (Ghorbani et al. 2019).
KERNEL_VARIANCE = 1e-5
#: The default grid: this many points, from min - 5 width to max + 5 width.
NUM_POINTS = 4001
MARGIN = 5.0


def attr(group, name, default=None):
    """An attribute as a Python value; absent (or the string "None" of older files) is
    ``default``."""
    value = group.attrs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value == "None":
        return default
    return value.item() if isinstance(value, np.generic) else value


def committed_rows(steps, name):
    """The committed rows of ``steps/name``: only ``steps/committed[0]`` of them count."""
    return steps[name][: int(steps["committed"][0])]


def rules_from_steps(slq):
    """Gauss rules of a cut-off run from its step records: probe ``p``'s tridiagonal matrix
    has diagonal ``alpha[:, p]`` and off-diagonal ``beta[:-1, p]`` over its finite rows; its
    eigenvalues are the nodes and the squared first components of its eigenvectors the
    weights."""
    alpha = committed_rows(slq["steps"], "alpha").T
    beta = committed_rows(slq["steps"], "beta").T
    P, m = alpha.shape
    nodes, weights = np.full((P, m), np.nan), np.zeros((P, m))
    for p in range(P):
        L = int(np.isfinite(alpha[p]).sum())
        if L == 0:
            continue
        T = np.diag(alpha[p, :L]) + np.diag(beta[p, :L - 1], 1) + np.diag(beta[p, :L - 1], -1)
        values, vectors = np.linalg.eigh(T)
        nodes[p, :L], weights[p, :L] = values, vectors[0] ** 2
    return nodes, weights


def probe_measures(nodes, weights, outliers, dim, bulk_mass):
    """``(x, w)`` of shape (P, m + k): each probe's measure of the whole spectrum (padding,
    i.e. a non-finite node or a zero weight, set to node 0 and weight 0; each row sums to 1)."""
    pad = ~np.isfinite(nodes) | (weights == 0)
    x, w = np.where(pad, 0.0, nodes), np.where(pad, 0.0, weights)
    k = outliers.size
    if k == 0:
        return x, w
    P = x.shape[0]
    x = np.concatenate([x, np.broadcast_to(outliers, (P, k))], axis=1)
    w = np.concatenate([w * bulk_mass, np.full((P, k), 1.0 / dim)], axis=1)
    return x, w


def estimate(per_probe):
    """Mean over probes and its standard error (NaN for one probe)."""
    P = per_probe.size
    stderr = float(per_probe.std(ddof=1) / math.sqrt(P)) if P > 1 else math.nan
    return float(per_probe.mean()), stderr


def moments(x, w, scale, order):
    """``scale`` times the moments of the probe measures, ``q = 0 .. order``: per probe
    ``scale * sum_i w[p, i] x[p, i]^q`` (``scale = 1``: ``m_q = (1/n) tr(A^q)``;
    ``scale = n``: ``tr(A^q)``)."""
    out, powers = [], np.ones_like(x)
    for _ in range(order + 1):
        out.append(estimate(scale * np.sum(w * powers, axis=1)))
        powers = powers * x
    return out


def density(nodes, weights, outliers, x, w, width=None, num_points=NUM_POINTS):
    """``(grid, phi, width)``: ``phi(t) = (1/P) sum_{p,i} w[p, i] g(t - x[p, i])`` with
    ``g`` the Gaussian of standard deviation ``width`` (default ``sqrt(1e-5)`` times half the
    range of the nodes of positive weight and the outliers), on ``num_points`` points from
    ``min - 5 width`` to ``max + 5 width``."""
    pad = ~np.isfinite(nodes) | (weights == 0)
    support = np.concatenate([np.where(pad, 0.0, nodes)[~pad], outliers])
    lo, hi = float(support.min()), float(support.max())
    if width is None:
        half_range = (hi - lo) / 2
        width = math.sqrt(KERNEL_VARIANCE) * (half_range if half_range > 0 else max(abs(hi), 1.0))
    grid = np.linspace(lo - MARGIN * width, hi + MARGIN * width, num_points)
    keep = w > 0
    centers, masses = x[keep], w[keep] / x.shape[0]
    phi = np.empty(grid.size)
    norm = 1.0 / (width * math.sqrt(2 * math.pi))
    for start in range(0, grid.size, 2048):  # chunks of the grid bound the memory
        z = (grid[start:start + 2048, None] - centers[None, :]) / width
        phi[start:start + 2048] = norm * (np.exp(-0.5 * z * z) @ masses)
    return grid, phi, width


def read_slq(f, width=None, num_points=NUM_POINTS, order=4):
    """Everything the SLQ group of the open file ``f`` gives: trace, moments, density."""
    slq = f["slq"]
    complete = bool(attr(slq, "complete", False)) and "nodes" in slq
    if complete:
        nodes, weights = slq["nodes"][()], slq["weights"][()]
    else:
        nodes, weights = rules_from_steps(slq)
    dim = int(attr(slq, "dim") or attr(f, "num_params"))
    if "outliers" in slq:
        outliers = slq["outliers"][()]
    elif attr(slq, "k_top", 0) or attr(slq, "k_bottom", 0):  # cut off after its deflation
        outliers = f["eigs/eigenvalues"][()]
    else:
        outliers = np.zeros(0)
    bulk_mass = attr(slq, "bulk_mass", (dim - outliers.size) / dim)
    x, w = probe_measures(nodes, weights, outliers, dim, bulk_mass)
    grid, phi, width = density(nodes, weights, outliers, x, w, width, num_points)
    traces = moments(x, w, float(dim), order)
    return {"complete": complete, "dim": dim, "num_probes": int(nodes.shape[0]),
            "num_outliers": int(outliers.size), "trace": traces[1],
            "moments": moments(x, w, 1.0, order), "traces": traces,
            "width": width, "grid": grid, "density": phi}


def report(path, width=None, num_points=NUM_POINTS, order=4) -> dict:
    """Read ``path``; print what it holds; return the numbers (for ``--json``)."""
    with h5py.File(path, "r") as f:
        print(f"{path}: {attr(f, 'operator', '?')} of {attr(f, 'num_params', '?')} parameters, "
              f"{attr(f, 'num_samples', '?')} samples, run seed {attr(f, 'seed', 'none')}")
        out = {}
        if "eigs" in f and "eigenvalues" in f["eigs"]:
            values = np.sort(f["eigs/eigenvalues"][()])[::-1]
            out["eigenvalues"] = values
            print(f"eigenvalues (descending): {np.array2string(values, precision=6)}")
        if "slq" in f:
            out.update(read_slq(f, width, num_points, order))
            state = "complete" if out["complete"] else "CUT OFF, rebuilt from steps"
            print(f"slq ({state}): {out['num_probes']} probes, {out['num_outliers']} outliers, "
                  f"dim {out['dim']}")
            value, stderr = out["trace"]
            print(f"  trace          {value: .10e} +- {stderr:.3e}")
            for q in range(1, len(out["moments"])):
                (m, m_err), (t, t_err) = out["moments"][q], out["traces"][q]
                print(f"  m_{q} = (1/n) tr(A^{q})  {m: .10e} +- {m_err:.3e}    tr(A^{q})  "
                      f"{t: .10e} +- {t_err:.3e}")
            peak = int(np.argmax(out["density"]))
            print(f"  density: {len(out['grid'])} points on [{out['grid'][0]:.6e}, "
                  f"{out['grid'][-1]:.6e}], kernel width {out['width']:.6e}, peak "
                  f"{out['density'][peak]:.6e} at {out['grid'][peak]:.6e}")
    return out


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--width", type=float, default=None,
                        help="kernel standard deviation (default sqrt(1e-5) x half range)")
    parser.add_argument("--points", type=int, default=NUM_POINTS, help="grid points")
    parser.add_argument("--moments", type=int, default=4, help="highest power q of tr(A^q)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    out = report(args.file, args.width, args.points, args.moments)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({k: _jsonable(v) for k, v in out.items()}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
