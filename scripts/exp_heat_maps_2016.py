"""The Hessian of a small network as an image (Sagun, Bottou and LeCun 2016, Fig. 1 left and
Fig. 6): absolute values of every entry, log colour scale, layer blocks marked, at a random
point and after training.

The third panel is the whole ordered exact spectrum at both points (Sagun et al. 2018, Fig. 1
as drawn there: rank against eigenvalue).

Full mode: an MLP 10-16-16-4 with ReLU (516 parameters) on 1,000 samples of 4 Gaussian clusters
in 10 dimensions (``synthetic.gaussian_clusters``, covariance scale 1), cross-entropy,
full-batch gradient descent at learning rate 0.1 for 2,000 steps. Quick mode: an MLP 2-6-6-2
(74 parameters) on 200 samples of two 2-D blobs (distance 4), 300 steps.

The matrix is the exact whole-data Hessian ``H = d^2 L / dw^2`` of the mean loss, in float64
(``dense_matrix`` of the package's ``HessianOperator`` on a float64 copy), symmetrized
``(H + H^T) / 2``; parameters are ordered as ``model.parameters()`` (per layer: weight rows,
then bias). Reported per point: ``max |H_ij|``, the fraction of entries with ``|H_ij| > 1e-3
max |H|``, the share of ``||H||_F^2`` inside the diagonal layer blocks (``W_l`` and ``b_l``
of one layer together), and the eigenvalue summary (top, bottom, fraction near zero).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator  # noqa: E402
from lanczos_hessian.curvature.dense import dense_matrix  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.synthetic import gaussian_clusters, two_blobs  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "heat_maps_2016"
LR = 0.1
RELATIVE_FLOOR = 1e-6  # lower end of the colour scale, relative to max |H_ij|


def problem(quick: bool, seed: int):
    """``(widths, x, y, steps)`` of the quick or full configuration."""
    if quick:
        x, y = two_blobs(200, distance=4.0, std=1.0, rng=seed)
        return [2, 6, 6, 2], x, y, 300
    x, y = gaussian_clusters(4, 1000, 10, scale=1.0, rng=seed)
    return [10, 16, 16, 4], x, y, 2000


def exact_hessian(model, loss_fn, x, y) -> np.ndarray:
    """The symmetrized float64 whole-data Hessian of ``model`` (a float64 copy is used)."""
    op = HessianOperator(ec.float64_copy(model), loss_fn, (x.double(), y), batch_size=len(x))
    H = dense_matrix(op, method="products")
    return (H + H.T) / 2


def layer_blocks(model) -> list:
    """``[(name, start, stop)]``: the index range of each linear layer's weight and bias."""
    blocks, start, layer = [], 0, 0
    for module in model:
        if isinstance(module, torch.nn.Linear):
            layer += 1
            stop = start + module.weight.numel() + module.bias.numel()
            blocks.append((f"layer {layer}", start, stop))
            start = stop
    return blocks


def block_share(H: np.ndarray, blocks) -> float:
    """Share of ``||H||_F^2`` inside the diagonal layer blocks."""
    inside = sum(np.sum(H[a:b, a:b] ** 2) for _, a, b in blocks)
    return float(inside / np.sum(H ** 2))


def describe(H: np.ndarray, blocks) -> dict:
    values = np.linalg.eigvalsh(H)
    top = values[-1]
    peak = np.abs(H).max()
    return {"max_abs_entry": float(peak),
            "fraction_entries_above_1e-3_max": float(np.mean(np.abs(H) > 1e-3 * peak)),
            "fraction_exact_zero_entries": float(np.mean(H == 0)),
            "diagonal_block_share": block_share(H, blocks),
            "lambda_max": float(top), "lambda_min": float(values[0]),
            "top5": values[::-1][:5],
            "fraction_near_zero": float(np.mean(np.abs(values) <= 1e-3 * top))}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    widths, x, y, steps = problem(quick, seed)
    torch.manual_seed(seed)
    model = mlp(widths, "relu")
    loss_fn = torch.nn.CrossEntropyLoss()
    blocks = layer_blocks(model)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "widths": widths,
             "num_samples": len(x), "steps": steps, "learning_rate": LR,
             "num_params": num_parameters(model),
             "paper": "Sagun, Bottou, LeCun 2016, Fig. 1 left and Fig. 6"}
    matrices, rows = {}, {}
    for point in ("init", "trained"):
        if point == "trained":
            train(model, loss_fn, x, y, steps=steps, lr=LR, rng=seed)
        loss, acc = evaluate(model, loss_fn, x, y)
        H = exact_hessian(model, loss_fn, x, y)
        matrices[point] = H
        rows[point] = {"loss": loss, "accuracy": acc, **describe(H, blocks)}
        r = rows[point]
        echo(f"{point:7s}: loss {loss:.3g} acc {acc:.3f} | max |H_ij| {r['max_abs_entry']:.3g} | "
             f"entries > 1e-3 max: {r['fraction_entries_above_1e-3_max']:.3f} | diagonal "
             f"layer blocks hold {r['diagonal_block_share']:.3f} of ||H||_F^2 | lambda "
             f"[{r['lambda_min']:.3g}, {r['lambda_max']:.3g}] [{timer():.0f} s]")
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        writer.write_arrays("hessian", matrices)
    plot(matrices, blocks, rows, attrs, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "blocks": [{"name": n, "start": a, "stop": b} for n, a, b in blocks],
               "points": rows, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload



def headline(d: dict) -> dict:
    """The numbers the description rests on, for the seed spread (``scripts/exp_seeds.py``):
    the diagonal layer blocks' share of norm(H)_F^2, the fraction of entries above 1e-3 of the
    largest, abs(lambda_min) / lambda_max and the near-zero fraction, at both points."""
    out = {}
    for key, field in (("diagonal blocks' share of norm(H)_F^2", "diagonal_block_share"),
                       ("entries > 1e-3 max", "fraction_entries_above_1e-3_max"),
                       ("near-zero eigenvalues", "fraction_near_zero")):
        for point in ("init", "trained"):
            out[f"{point}: {key}"] = d["points"][point][field]
    for point in ("init", "trained"):
        p = d["points"][point]
        out[f"{point}: abs(lambda_min) / lambda_max"] = abs(p["lambda_min"]) / p["lambda_max"]
    return out


def plot(matrices, blocks, rows, attrs, path):
    from matplotlib.colors import LogNorm

    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(19.5, 6))
    _plot_ordered(axes[2], matrices)
    axes = axes[:2]
    centres = [(a + b) / 2 for _, a, b in blocks]
    names = [n for n, _, _ in blocks]
    for ax, (point, H) in zip(axes, matrices.items()):
        peak = np.abs(H).max()
        image = ax.imshow(np.maximum(np.abs(H), RELATIVE_FLOOR * peak), cmap="magma",
                          norm=LogNorm(vmin=RELATIVE_FLOOR * peak, vmax=peak),
                          interpolation="nearest")
        for _, _, stop in blocks[:-1]:
            ax.axhline(stop - 0.5, color="cyan", lw=0.8)
            ax.axvline(stop - 0.5, color="cyan", lw=0.8)
        ax.set_xticks(centres, names)
        ax.set_yticks(centres, names, rotation=90, va="center")
        r = rows[point]
        ax.set(title=f"{'random point' if point == 'init' else 'after training'}: |H_ij| "
                     f"(loss {r['loss']:.3g})\ndiagonal layer blocks hold "
                     f"{100 * r['diagonal_block_share']:.0f}% of ||H||_F^2",
               xlabel=f"parameter index ({attrs['num_params']}, by layer: weights then bias)",
               ylabel="parameter index")
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        bar.set_label("|H_ij| (log scale)")
    fig.suptitle(f"Exact Hessian of an MLP {'-'.join(map(str, attrs['widths']))} (ReLU, "
                 f"cross-entropy, {attrs['num_samples']} samples), [S16] Figs. 1 and 6")
    fig.tight_layout()
    ec.save_figure(fig, path)


def _plot_ordered(ax, matrices):
    """[S18] Fig. 1 as drawn: every eigenvalue of the exact Hessian in order, at the random
    point and after training (symlog axis: linear within 1e-4 of zero)."""
    for (point, H), color in zip(matrices.items(), ("C0", "C3")):
        values = np.linalg.eigvalsh(H)[::-1]
        ax.plot(np.arange(1, len(values) + 1), values, "-", color=color, lw=1.3,
                label=f"{'random point' if point == 'init' else 'after training'}: "
                      f"[{values[-1]:.3g}, {values[0]:.3g}]")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set(title="the whole ordered spectrum ([S18] Fig. 1)", xlabel="rank",
           ylabel="eigenvalue (symlog, linear within 1e-4)")
    ax.legend()
    ax.grid(alpha=0.3)


if __name__ == "__main__":
    ec.command_line(__doc__, main)
