"""Shared plumbing of the ``scripts/exp_*.py`` experiments (not part of the package).

Every experiment has a ``main(quick=..., out_dir=..., seed=...)`` returning the dict it also
writes as JSON, and a command line ``python scripts/exp_<name>.py [--quick] [--out-dir D]``.
Full runs write ``docs/exp_<name>.{h5,png,json}``; quick runs default to ``out/quick/``
(ignored by git) so that they never overwrite the documented results.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
QUICK_DIR = ROOT / "out" / "quick"


def parse_args(description: str, argv=None, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small CPU-fast version")
    parser.add_argument("--out-dir", default=None,
                        help="where to write (default docs/, or out/quick/ with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def command_line(doc: str, main, replot=None) -> None:
    """The command line every experiment shares: ``--quick``, ``--out-dir``, ``--seed`` run
    ``main``; with a ``replot(out_dir, quick)`` also ``--replot``, which only redraws the PNG
    from what a run wrote."""
    extra = None if replot is None else (lambda p: p.add_argument(
        "--replot", action="store_true", help="only redraw the PNG from the written files"))
    args = parse_args(doc.splitlines()[0], extra=extra)
    if replot is not None and args.replot:
        replot(args.out_dir, args.quick)
    else:
        main(quick=args.quick, out_dir=args.out_dir, seed=args.seed)


def out_paths(name: str, out_dir=None, quick: bool = False) -> dict:
    """``{"h5", "png", "json"}`` paths of experiment ``name`` (directory created)."""
    directory = Path(out_dir) if out_dir is not None else (QUICK_DIR if quick else DOCS)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"exp_{name}"
    return {ext: directory / f"{stem}.{ext}" for ext in ("h5", "png", "json")}


def setup(threads: int | None = None):
    """One torch thread by default: on the shared 2-core machine two threads made the dense
    Hessian of a 4k-parameter MLP ten times slower (95 s against 9 s), from contention."""
    torch.set_num_threads(threads or int(os.environ.get("EXP_THREADS", 1)))


def to_jsonable(value):
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def write_json(path, payload: dict) -> None:
    Path(path).write_text(json.dumps(to_jsonable(payload), indent=1) + "\n")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FIGURE_STYLE)
    return plt


# Legible at 100 % zoom: no text below 9 pt, saved at 150 dpi (so 9 pt is ~19 pixels tall).
FIGURE_DPI = 150
MIN_FONT_PT = 9
FIGURE_STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
                "legend.fontsize": MIN_FONT_PT, "xtick.labelsize": MIN_FONT_PT,
                "ytick.labelsize": MIN_FONT_PT, "figure.titlesize": 11}


def save_figure(fig, path, dpi: int = FIGURE_DPI) -> int:
    """Save a PNG at ``dpi`` (150 by default: the resolution of the legibility rule);
    returns its size in bytes."""
    plt = pyplot()
    fig.savefig(path, dpi=dpi)
    size = Path(path).stat().st_size
    plt.close(fig)
    return size


def finish_figure(fig, axes, path) -> int:
    """Grid and legend on every panel, whole-number ticks on linear rank axes, tight layout,
    then :func:`save_figure`."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_xlabel().startswith("rank") and ax.get_xscale() == "linear":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=MIN_FONT_PT)
    fig.tight_layout()
    return save_figure(fig, path)


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy for analysis (the trained model is left as it is)."""
    return copy.deepcopy(model).double()


def dense_eigenvalues(model, loss_fn, data, kind: str = "hessian", batch_size=None,
                      block_size: int = 128) -> np.ndarray:
    """All eigenvalues (ascending) of the exact float64 matrix of a small model."""
    from lanczos_hessian.curvature.dense import dense_matrix
    from lanczos_hessian.curvature.operators import OPERATORS

    x, y = data
    model64 = float64_copy(model)
    x64 = x.double() if x.is_floating_point() else x
    y64 = y.double() if y.is_floating_point() else y
    op = OPERATORS[kind](model64, loss_fn, (x64, y64), batch_size=batch_size or len(x))
    return np.linalg.eigvalsh(dense_matrix(op, method="products", block_size=block_size))


class Timer:
    """Wall seconds since creation (``timer()``) and this process's CPU seconds (``.cpu()``):
    the machine is shared, so wall time can be several times the CPU time."""

    def __init__(self):
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def __call__(self) -> float:
        return time.perf_counter() - self.start

    def cpu(self) -> float:
        return time.process_time() - self.cpu_start


def full_batch_descent(model, loss_fn, x, y, steps: int, lr: float) -> float:
    """``steps`` steps of plain gradient descent on the full-batch ``loss_fn(model(x), y)``
    at learning rate ``lr``; returns the final loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        return float(loss_fn(model(x), y))


def log(*args):
    print(*args, flush=True)
    sys.stdout.flush()


def eigs_and_density(model, loss_fn, data, *, k_top: int, k_bottom: int, tol: float,
                     num_probes: int = 0, num_steps: int = 40, seed: int = 0, batch_size=None,
                     kind: str = "hessian", writer=None, run: str | None = None,
                     max_matvecs=None) -> dict:
    """Top ``k_top`` and bottom ``k_bottom`` eigenpairs (one Lanczos run, ``BE``) and, with
    ``num_probes``, the SLQ density deflated by them: the library's run path
    (:func:`lanczos_hessian.run.slq`, or :func:`lanczos_hessian.run.eigs` without probes), so
    the numbers are those of the command line with the same seed. Written under ``run/``
    when a writer is given. The model is used as it is (pass a float64 copy for float64
    products); ``max_matvecs`` bounds the eigensolver when no density is asked for.

    Spectral masses are counted beyond ``delta = 1e-2 lambda_max`` (``mass_below``,
    ``mass_near_zero``) and ``1e-3 lambda_max`` (``mass_below_small``): a trained network's
    bulk has a large atom at zero (dead units, constant input pixels), and Gauss nodes of
    that atom fall on either side of zero, so ``mass_negative`` (below exactly 0) is not a
    count of negative eigenvalues."""
    import dataclasses

    from lanczos_hessian import run as runs
    from lanczos_hessian.analysis.outliers import count_outliers
    from lanczos_hessian.curvature.operators import OPERATORS
    from lanczos_hessian.storage.records import write_eigs, write_slq

    op = OPERATORS[kind](model, loss_fn, data, batch_size=batch_size)
    timer = Timer()
    if num_probes:
        result, bulk = runs.slq(op, num_probes=num_probes, num_steps=num_steps, k_top=k_top,
                                k_bottom=k_bottom, tol=tol, seed=seed, progress=False)
    else:
        result, bulk = runs.eigs(op, k=k_top + k_bottom, which="BE", k_bottom=k_bottom,
                                 tol=tol, seed=seed, max_matvecs=max_matvecs,
                                 true_residuals=False, progress=False), None
    values = np.sort(result.eigenvalues)
    top, bottom = values[k_bottom:][::-1], values[:k_bottom]
    out = {"top": top, "bottom": bottom, "num_params": op.shape[0],
           "converged": bool(result.all_converged), "num_matvecs": result.num_matvecs,
           "max_residual_bound": float(result.residual_bounds.max()),
           "counts": count_outliers(top)}
    if bulk is not None:
        delta = 1e-2 * abs(top[0])
        out.update(slq=bulk, delta=delta,
                   mass_below=bulk.fraction_below(-delta).value,
                   mass_near_zero=bulk.fraction_within(delta).value,
                   mass_below_small=bulk.fraction_below(-1e-3 * abs(top[0])).value,
                   mass_negative=bulk.fraction_below(0.0).value)
    out["seconds"] = timer()
    if writer is not None:
        group = run or "run"
        write_eigs(writer, dataclasses.replace(result, eigenvectors=None), f"{group}/eigs",
                   {"k_top": k_top, "k_bottom": k_bottom})
        if bulk is not None:
            write_slq(writer, bulk, f"{group}/slq")
    return out


def quantiles(result, probabilities) -> np.ndarray:
    """Quantiles of the SLQ estimate of the spectral measure (outliers included): the
    eigenvalue at each rank fraction ``p`` (resolution: the quadrature nodes)."""
    from lanczos_hessian.linalg.density import quadrature_measure

    nodes, weights = quadrature_measure(result)
    order = np.argsort(nodes)
    nodes, weights = np.asarray(nodes)[order], np.asarray(weights)[order]
    cdf = np.cumsum(weights) / np.sum(weights)
    return np.interp(probabilities, cdf, nodes)


def bulk_measure(result) -> tuple:
    """The deflated part of an SLQ estimate as one measure: every probe's Gauss nodes with
    weights ``w[p, i] (n - k) / (n P)`` (the mass of the ``n - k`` eigenvalues not deflated),
    sorted; the ``k`` deflated eigenvalues are left out (draw them as exact values)."""
    nodes, weights = np.asarray(result.nodes), np.asarray(result.weights)
    keep = (weights > 0) & np.isfinite(nodes)
    scale = (result.dim - len(result.outliers)) / (result.dim * nodes.shape[0])
    x, w = nodes[keep], weights[keep] * scale
    order = np.argsort(x)
    return x[order], w[order]


def bulk_density(result, grid, width: float) -> np.ndarray:
    """Density (per unit eigenvalue, as a fraction of all ``n`` eigenvalues) of the
    deflated part of an SLQ estimate, smoothed by a Gaussian kernel of standard deviation
    ``width``: ``sum_i w_i g_width(t - theta_i)`` over :func:`bulk_measure`."""
    x, w = bulk_measure(result)
    z = (np.asarray(grid)[:, None] - x[None, :]) / width
    return (np.exp(-0.5 * z * z) @ w) / (width * np.sqrt(2 * np.pi))


def counts_dict(counts) -> dict:
    return {"gap": counts.gap, "ratio": counts.ratio, "elbow": counts.elbow}


def mnist_train_test(n_train: int, n_test: int, flatten: bool = False):
    """``load_mnist(n_train)`` (the package's balanced subset) and a disjoint balanced
    held-out set of ``n_test`` digits from the rest of the shipped 10,000."""
    from lanczos_hessian.examples.datasets import balanced_indices, load_mnist

    x, y = load_mnist(flatten=flatten)
    labels = y.numpy()
    train_idx = balanced_indices(labels, n_train)
    rest = np.setdiff1d(np.arange(len(labels)), train_idx)
    test_idx = rest[balanced_indices(labels[rest], n_test)]
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def quadrature_record(result) -> dict:
    """An SLQ result's Gauss rules for the JSON (``nodes``, ``weights`` ``(P, m)``, the
    deflated ``outliers``, ``dim``), so that a figure drawn from them can be redrawn from the
    JSON alone (:func:`quadrature_from_record`)."""
    nodes = np.asarray(result.nodes, dtype=float)
    return {"nodes": np.where(np.isfinite(nodes), nodes, 0.0), "weights": result.weights,
            "outliers": np.asarray(result.outliers, dtype=float), "dim": int(result.dim)}


def quadrature_from_record(record: dict):
    """The :class:`~lanczos_hessian.analysis.quadrature.Quadrature` of a
    :func:`quadrature_record` (padding: weight 0)."""
    from lanczos_hessian.analysis.quadrature import Quadrature

    return Quadrature(np.asarray(record["nodes"], dtype=float),
                      np.asarray(record["weights"], dtype=float), int(record["dim"]),
                      np.asarray(record["outliers"], dtype=float))


def tail_fractions(result, grid, absolute: bool = False) -> tuple:
    """What an SLQ estimate resolves, without a kernel: at each ``t`` of ``grid`` the
    fraction of all ``n`` eigenvalues beyond ``t`` (below ``t`` where ``t < 0``, above it
    where ``t >= 0``; with ``absolute``, ``abs(lambda) > t`` for ``t >= 0``), the deflated
    eigenvalues counted exactly (``1/n`` each). Returns ``(value, lower, upper)``: the
    Gauss-rule value (a staircase with a step at every node) averaged over probes, and its
    bracket, the Gauss-quadrature bounds of each probe
    (:func:`~lanczos_hessian.linalg.resolution.whole_spectrum_bounds`) averaged and widened
    by 3 probe standard errors (99.73%, the package's default confidence;
    :func:`~lanczos_hessian.linalg.resolution.band`)."""
    from lanczos_hessian.linalg.resolution import band, whole_spectrum_bounds

    t = np.asarray(grid, dtype=float)
    kw = dict(outliers=result.outliers, dim=result.dim)

    def below(x):  # fraction < x: (value, lower, upper), each (P, T)
        return whole_spectrum_bounds(result.nodes, result.weights, x, strict=True, **kw)

    def above(x):  # fraction > x = 1 - fraction <= x
        v, lo, hi = whole_spectrum_bounds(result.nodes, result.weights, x, strict=False, **kw)
        return 1 - v, 1 - hi, 1 - lo

    if absolute:
        parts = [a + b for a, b in zip(above(t), below(-t))]
    else:
        parts = [np.where(t < 0, b, a) for b, a in zip(below(t), above(t))]
    value, lower, upper = parts
    lo, hi = band(lower, upper)
    return value.mean(axis=0), np.clip(lo, 0, 1), np.clip(hi, 0, 1)


#: abs(lambda) / lambda_max at which :func:`draw_tails` evaluates (log-spaced: a trained
#: network's bulk lies within 1e-3 lambda_max of zero, its outliers up to lambda_max).
TAIL_GRID = np.geomspace(1e-5, 1.05, 1201)


def draw_tails(ax, result, lam: float, exact, color, label, ls="-", tick_y=2e-5,
               absolute: bool = False) -> None:
    """One spectrum on a log-log panel, no kernel: against ``t / lambda_max`` the fraction
    of all ``n`` eigenvalues above ``t`` (line ``ls``) and below ``-t`` (dotted), or with
    ``absolute`` the fraction with ``abs(lambda) > t`` (one line ``ls``): the staircase of
    :func:`tail_fractions` with its bracket as a band; the ``exact`` (Lanczos)
    eigenvalues' absolute values as ticks at ``tick_y``."""
    sides = ((0, ls),) if absolute else ((1, ls), (-1, ":"))
    for sign, style in sides:
        value, lower, upper = tail_fractions(result, (sign or 1) * TAIL_GRID * lam,
                                             absolute=absolute)
        ax.fill_between(TAIL_GRID, np.maximum(lower, 1e-6), np.maximum(upper, 1e-6),
                        color=color, alpha=0.12, lw=0, step="post")
        ax.plot(TAIL_GRID, np.maximum(value, 1e-6), style, lw=1, color=color,
                drawstyle="steps-post", label=label if sign >= 0 else None)
    ticks = np.abs(np.asarray(exact, dtype=float)) / lam
    ax.plot(ticks, np.full(ticks.size, tick_y), "|", ms=8, color=color)


def tails_axis(ax, title: str) -> None:
    """Labels and limits of a :func:`draw_tails` panel."""
    ax.set(title=title, xlabel="t / lambda_max", ylabel="fraction of all M eigenvalues",
           xscale="log", yscale="log", xlim=(1e-5, 1.3), ylim=(1e-5, 1.5))
