"""The Hessian, its Gauss-Newton part and the rest, side by side (Sagun et al. 2018, Sec. 2.2).

``H = G + R`` with ``G = (1/N) sum_i J_i^T H_loss,i J_i`` (positive semi-definite for the
cross-entropy) and ``R = (1/N) sum_i sum_c (d loss_i / d z_c) d^2 z_c / dw^2``, the part
weighted by the loss gradient. The paper's reading: the outliers of H come from G, and since
G has no negative eigenvalues, the negative eigenvalues of H come from R, which is small
once the loss gradient is small.

Exact dense float64 spectra of H, G and R = H - G for:

* "clusters": an MLP 100-30-30-10 with ReLU (4,270 parameters) on 1,000 samples of 10
  Gaussian clusters (covariance scale 10), at initialization and after 1,000 full-batch GD
  steps at learning rate 0.1;
* "mnist": an MLP 784-6-10 with ReLU (4,780 parameters) on 1,000 real MNIST digits, at
  initialization and after 1,000 GD steps at learning rate 0.1.

Reported: the top eigenvalues of H and G, the overlap of their top-10 eigenspaces
(``||Q_H^T Q_G||_F^2 / 10``), the most negative eigenvalues of H, G and R, the number of
eigenvalues below ``-1e-3 lambda_max(H)`` of each, and ``||R||_2 / ||G||_2``.

Quick mode: only the clusters problem, reduced to 5 classes, 300 samples and an MLP
100-10-10-5 (1,175 parameters), 300 steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import GGNOperator, HessianOperator  # noqa: E402
from lanczos_hessian.examples.datasets import load_mnist  # noqa: E402
from lanczos_hessian.curvature.dense import dense_matrix  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.analysis.outliers import count_outliers  # noqa: E402
from lanczos_hessian.examples.synthetic import gaussian_clusters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "gauss_newton"
LR = 0.1


def problems(quick, seed):
    if quick:
        x, y = gaussian_clusters(5, 300, 100, scale=10.0, rng=seed)
        return {"clusters": ([100, 10, 10, 5], x, y, 300)}
    x, y = gaussian_clusters(10, 1000, 100, scale=10.0, rng=seed)
    xm, ym = load_mnist(1000, flatten=True)
    return {"clusters": ([100, 30, 30, 10], x, y, 1000), "mnist": ([784, 6, 10], xm, ym, 1000)}


def decompose(model, loss_fn, x, y):
    m64 = ec.float64_copy(model)
    data = (x.double(), y)
    H = dense_matrix(HessianOperator(m64, loss_fn, data, batch_size=len(x)), method="products")
    G = dense_matrix(GGNOperator(m64, loss_fn, data, batch_size=len(x)), method="products")
    H, G = (H + H.T) / 2, (G + G.T) / 2
    R = H - G
    eh, vh = np.linalg.eigh(H)
    eg, vg = np.linalg.eigh(G)
    er = np.linalg.eigvalsh(R)
    top = 10
    overlap = float(np.sum((vh[:, -top:].T @ vg[:, -top:]) ** 2) / top)
    lam = eh[-1]
    row = {"top_H": eh[::-1][:20], "top_G": eg[::-1][:20], "top_R": er[::-1][:5],
           "bottom_H": eh[:5], "bottom_G": eg[:5], "bottom_R": er[:5],
           "negative_H": int(np.sum(eh < -1e-3 * lam)), "negative_G": int(np.sum(eg < -1e-3 * lam)),
           "negative_R": int(np.sum(er < -1e-3 * lam)),
           "norm_R_over_norm_G": float(np.abs(er).max() / np.abs(eg).max()),
           "top10_subspace_overlap_H_G": overlap,
           "outliers_H": count_outliers(eh[::-1][:20]).gap,
           "outliers_G": count_outliers(eg[::-1][:20]).gap,
           "top_relative_difference_H_G": (eh[::-1][:10] - eg[::-1][:10]) / eh[::-1][:10]}
    return row, {"H": eh, "G": eg, "R": er}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "learning_rate": LR,
             "paper": "Sagun et al. 2018, Sec. 2.2"}
    rows, spectra = {}, {}
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for name, (widths, x, y, steps) in problems(quick, seed).items():
            torch.manual_seed(seed)
            model = mlp(widths, "relu")
            loss_fn = torch.nn.CrossEntropyLoss()
            for point in ("init", "trained"):
                if point == "trained":
                    train(model, loss_fn, x, y, steps=steps, lr=LR, rng=seed)
                loss, acc = evaluate(model, loss_fn, x, y)
                row, eig = decompose(model, loss_fn, x, y)
                row.update(loss=loss, accuracy=acc, num_params=num_parameters(model),
                           widths=widths)
                key = f"{name}_{point}"
                rows[key], spectra[key] = row, eig
                writer.write_arrays(key, {f"eigenvalues_{m}": v for m, v in eig.items()})
                writer.set_attrs(key, {k: v for k, v in row.items()
                                       if not isinstance(v, np.ndarray)})
                echo(f"{key:17s} ({row['num_params']} p): loss {loss:.3g} acc {acc:.3f} | top H "
                     f"{row['top_H'][0]:.3g} G {row['top_G'][0]:.3g} | top-10 overlap "
                     f"{overlap_str(row)} | min H {row['bottom_H'][0]:.3g} G "
                     f"{row['bottom_G'][0]:.2g} R {row['bottom_R'][0]:.3g} | # < -1e-3 lmax: H "
                     f"{row['negative_H']} G {row['negative_G']} R {row['negative_R']} | "
                     f"||R||/||G|| {row['norm_R_over_norm_G']:.3f} [{timer():.0f} s]")
    plot(rows, spectra, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs, "runs": rows,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def overlap_str(row):
    return f"{row['top10_subspace_overlap_H_G']:.3f}"



def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``), at each
    point: the overlap of the top-10 eigenspaces of H and G, norm(R) / norm(G), the number of
    eigenvalues of G below -1e-3 lambda_max and the most negative eigenvalue of G relative to
    lambda_max(H)."""
    fields = {"overlap of top-10 spaces of H and G": lambda r: r["top10_subspace_overlap_H_G"],
              "norm(R) / norm(G)": lambda r: r["norm_R_over_norm_G"],
              "negative eigenvalues of G": lambda r: r["negative_G"],
              "min(G) / lambda_max(H)": lambda r: r["bottom_G"][0] / r["top_H"][0]}
    out = {}
    for key, field in fields.items():
        for name, r in d["runs"].items():
            out[f"{name}: {key}"] = field(r)
    return out


def plot(rows, spectra, path):
    plt = ec.pyplot()
    keys = list(rows)
    fig, axes = plt.subplots(2, len(keys), figsize=(3.4 * len(keys), 6), squeeze=False)
    for j, key in enumerate(keys):
        eig = spectra[key]
        lam = eig["H"].max()
        for m, color in (("H", "C0"), ("G", "C2"), ("R", "C3")):
            v = np.sort(eig[m])[::-1]
            axes[0, j].plot(np.arange(1, 31), v[:30], "o-", ms=2, color=color, label=m)
            axes[1, j].plot(np.arange(1, 31), np.sort(eig[m])[:30] / lam, "o-", ms=2,
                            color=color, label=m)
        axes[0, j].set(title=f"{key}: top 30", xlabel="rank", ylabel="eigenvalue",
                       yscale="symlog")
        axes[0, j].set_yscale("symlog", linthresh=1e-3 * lam)
        axes[1, j].set(title=f"{key}: bottom 30", xlabel="rank from the bottom",
                       ylabel="eigenvalue / lambda_max(H)")
    ec.finish_figure(fig, axes.ravel(), path)


if __name__ == "__main__":
    ec.command_line(__doc__, main)
