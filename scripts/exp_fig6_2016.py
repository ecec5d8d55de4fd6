"""Sagun, Bottou and LeCun 2016, Fig. 6 as published: the whole Hessian, as an image, of the
two-blob networks with 18, 74 and 162 parameters after training, rotated 90 degrees counter-
clockwise as the paper draws it.

The set-up is that of ``exp_simple_case_2016`` (the paper's Sec. 3): blobs centred at (1, 1)
and (-1, -1) with standard deviation 1, MLPs 2-h-h-2 with ReLU and h = 2, 6, 10 (18, 74 and
162 parameters), cross-entropy, full-batch gradient descent at learning rate 0.1 until the
gradient norm is <= 1e-3 or a step cap. Five seeds per size are trained at once (the
batched ``Ensemble``); the image is seed 0's, the numbers are over all five. Parameter order:
per layer the weight matrix stored (fan_in, fan_out) row by row, then the bias.

Per network, of the exact float64 Hessian after training: ``max |H_ij|``; the fraction of
entries with ``|H_ij| > 1e-3 max |H|``; the share of ``||H||_F^2`` inside the three diagonal
layer blocks; lambda_1 / lambda_3 (two isolated eigenvalues make it large); the fraction of
eigenvalues with ``|lambda| <= 1e-3 lambda_1``. Quick mode: 150 samples, 800 steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402
from exp_simple_case_2016 import STD, Ensemble, blobs  # noqa: E402

from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "fig6_2016"
WIDTHS = (2, 6, 10)  # 18, 74, 162 parameters
SEEDS = 5
FLOOR = 1e-6  # lower end of the colour scale, relative to max |H_ij|


def layer_slices(h: int) -> list:
    """Index ranges of the three layers' parameters (weights, then bias) of a 2-h-h-2 MLP."""
    sizes = [3 * h, (h + 1) * h, (h + 1) * 2]
    ends = np.cumsum(sizes)
    return [slice(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def describe(H: np.ndarray, h: int) -> dict:
    """The numbers of one exact Hessian (see the module docstring)."""
    values = np.linalg.eigvalsh(H)[::-1]
    absmax = np.abs(H).max()
    inside = sum(np.sum(H[s, s] ** 2) for s in layer_slices(h))
    return {"max_abs": float(absmax),
            "fraction_visible": float(np.mean(np.abs(H) > 1e-3 * absmax)),
            "diagonal_block_share": float(inside / np.sum(H ** 2)),
            "lambda_1": float(values[0]), "lambda_2": float(values[1]),
            "lambda_1_over_lambda_3": float(values[0] / abs(values[2])),
            "fraction_near_zero": float(np.mean(np.abs(values) <= 1e-3 * values[0]))}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    n, max_steps = (150, 800) if quick else (1000, 5000)
    x, y = blobs(n, STD, seed)
    seeds = seed * 1000 + np.arange(SEEDS)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": n,
             "widths": list(WIDTHS), "max_steps": max_steps, "seeds": seeds,
             "paper": "Sagun, Bottou, LeCun 2016, Fig. 6"}
    rows, images = [], {}
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for h in WIDTHS:
            ens = Ensemble(h, seeds, "ce")
            info = ens.train(x, y, max_steps)
            H = ens.hessians(x, y).numpy()
            writer.write_arrays(f"h{h}", {"hessians": H, "grad_norm": info["grad_norm"]})
            stats = [describe(Hb, h) for Hb in H]
            rows.append({"h": h, "num_params": ens.num_params, "steps": info["steps"],
                         "grad_norm": info["grad_norm"], "met_rule": info["met_rule"],
                         "networks": stats})
            images[ens.num_params] = H[0]
            echo(f"{ens.num_params:3d} p: |g| {np.array2string(info['grad_norm'], formatter={'float': '{:.0e}'.format})}"
                 f" | block share {[round(s['diagonal_block_share'], 2) for s in stats]} | "
                 f"l1/|l3| {[round(s['lambda_1_over_lambda_3'], 1) for s in stats]} | near 0 "
                 f"{[round(s['fraction_near_zero'], 2) for s in stats]} [{timer():.0f} s]")
    plot(images, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs, "sizes": rows,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def plot(images: dict, path):
    """``log10 |H_ij|`` of each Hessian, rotated 90 degrees counter-clockwise (the paper's
    orientation), colour scale from ``FLOOR max |H|`` to ``max |H|``."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 3.8))
    for ax, (m, H) in zip(np.atleast_1d(axes), images.items()):
        a = np.abs(np.rot90(H))
        shown = np.log10(np.maximum(a / a.max(), FLOOR))
        im = ax.imshow(shown, cmap="viridis", vmin=np.log10(FLOOR), vmax=0,
                       interpolation="nearest")
        ax.set(title=f"{m} parameters, trained (rotated 90 deg)", xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, fraction=0.046, label="log10 |H_ij| / max")
    fig.tight_layout()
    ec.save_figure(fig, path)


if __name__ == "__main__":
    ec.command_line(__doc__, main)
