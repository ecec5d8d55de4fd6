"""Logit gradients cluster, and their cluster means span the top Hessian eigenspace (Fort and
Ganguli 2019, Fig. 1 and their model of the Hessian's C outliers).

Fort and Ganguli explain the C large Hessian eigenvalues by the structure of the *logit
gradients* ``g_{i,c} = d z_c(x_i) / dw`` (one vector in parameter space per sample ``i`` and
logit ``c``): they cluster, by logit and within it by class, and the Gauss-Newton part
``G = (1/N) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i`` (``J_i`` the ``C x M`` matrix of the
``g_{i,c}``) is then dominated by a few cluster means. This measures both halves:

* **clustering**: cosine similarities ``cos(g_{i,c}, g_{j,c'})`` for ``S`` samples per class
  (``S * C * C`` vectors), averaged over pairs ``i != j`` with the same logit and the same
  class, the same logit and different classes, and different logits; the matrix itself,
  ordered by (logit, class), is the figure;
* **spanning**: the top-C eigenspaces of H and G (Lanczos, float64 products, tol 1e-6) against
  the span of the C logit means ``m_c = mean_i g_{i,c}`` and of the ``C^2`` (logit, class)
  means ``m_{c,y}`` over all N samples: overlap ``||Q_top^T Q_span||_F^2 / C`` (1 = the top
  space lies in the span; a random span of the same dimension gives about ``dim / M``).

Network and data as experiment 8 part A: 1,000 MNIST digits, MLP 784-32-10 (ReLU, 25,450
parameters), at initialization and after 400 SGD steps (batch 32, lr 0.1); ``S`` = 10
samples per class for the cosines. Quick mode: 300 digits, MLP 784-16-10, 150 steps, S = 5.
Seeds draw the initialization and the batch order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import GGNOperator, HessianOperator, lanczos_eigsh  # noqa: E402
from lanczos_hessian.analysis.geometry import orthonormal_basis  # noqa: E402
from lanczos_hessian.examples.datasets import load_mnist  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "logit_gradients"
LR = 0.1
FULL = {"n": 1000, "hidden": 32, "steps": 400, "per_class": 10}
QUICK = {"n": 300, "hidden": 16, "steps": 150, "per_class": 5}
PAIRS = ("same logit, same class", "same logit, other class", "other logit")


def logit_gradients(model, x) -> torch.Tensor:
    """``(B, C, M)`` float64: ``d z_c(x_b) / dw`` for every sample and logit, parameters in
    ``model.named_parameters()`` order (the operators' order)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logits(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(logits), in_dims=(None, 0))(params, x)
    return torch.cat([jac[k].reshape(len(x), jac[k].shape[1], -1) for k in params], 2)


def cluster_means(model, x, y, num_classes: int, batch: int = 100) -> torch.Tensor:
    """``(C, C, M)``: ``m[c, k]`` = mean over the samples of class ``k`` of ``g_{i,c}``."""
    sums, counts = None, torch.zeros(num_classes, dtype=torch.float64)
    for start in range(0, len(x), batch):
        g = logit_gradients(model, x[start:start + batch])  # (B, C, M)
        onehot = torch.nn.functional.one_hot(y[start:start + batch], num_classes).double()
        part = torch.einsum("bk,bcm->ckm", onehot, g)
        sums = part if sums is None else sums + part
        counts += onehot.sum(0)
    return sums / counts.view(1, -1, 1)


def cosine_blocks(g: torch.Tensor, labels: torch.Tensor) -> tuple:
    """Cosine matrix of the ``B * C`` logit gradients ordered by (logit, class, sample), and
    the mean cosine over pairs of distinct samples in each group of :data:`PAIRS`."""
    B, C, M = g.shape
    order = torch.argsort(labels, stable=True)
    v = g[order].transpose(0, 1).reshape(B * C, M)  # rows: logit-major, then class-sorted
    v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-300)
    cos = (v @ v.T).numpy()
    logit = np.repeat(np.arange(C), B)
    cls = np.tile(labels[order].numpy(), C)
    sample = np.tile(np.arange(B), C)
    distinct = sample[:, None] != sample[None, :]
    same_logit = logit[:, None] == logit[None, :]
    same_class = cls[:, None] == cls[None, :]
    masks = {PAIRS[0]: same_logit & same_class & distinct,
             PAIRS[1]: same_logit & ~same_class,
             PAIRS[2]: ~same_logit & distinct}
    return cos, {name: float(cos[m].mean()) for name, m in masks.items()}


def subspace_overlap(Q_top: torch.Tensor, span) -> float:
    """``||Q_top^T Q||_F^2 / k`` with ``Q`` an orthonormal basis of ``span`` (columns): the
    mean squared cosine of the principal angles of the k-dimensional ``Q_top`` to ``span``."""
    Q = orthonormal_basis(span)
    return float(((Q_top.T @ Q) ** 2).sum() / Q_top.shape[1])


def analyse(model, loss_fn, x, y, num_classes: int, per_class: int, seed: int) -> dict:
    """Clustering and spanning at the model's current point (float64 copy)."""
    m64 = ec.float64_copy(model)
    x64 = x.double()
    pick = torch.cat([torch.nonzero(y == k).flatten()[:per_class] for k in range(num_classes)])
    g = logit_gradients(m64, x64[pick])
    cos, pairs = cosine_blocks(g, y[pick])
    means = cluster_means(m64, x64, y, num_classes)  # (C, C, M)
    M = means.shape[-1]
    logit_means = (means * torch.bincount(y, minlength=num_classes).double().view(1, -1, 1)
                   ).sum(1) / len(y)  # (C, M): mean of g_{i,c} over all samples
    out = {"pairs": pairs, "cosines": cos}
    for name, cls in (("H", HessianOperator), ("G", GGNOperator)):
        op = cls(m64, loss_fn, (x64, y), batch_size=len(x))
        r = lanczos_eigsh(op, k=num_classes, which="LA", tol=1e-6, rng=seed)
        Q = orthonormal_basis(r)
        out[name] = {"top": np.sort(r.eigenvalues)[::-1],
                     "overlap_logit_means": subspace_overlap(Q, logit_means.T),
                     "overlap_class_logit_means": subspace_overlap(
                         Q, means.reshape(-1, M).T),
                     "random_baseline_C": num_classes / M,
                     "random_baseline_C2": num_classes ** 2 / M,
                     "converged": bool(r.converged.all())}
    return out


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    cfg = QUICK if quick else FULL
    x, y = load_mnist(cfg["n"], flatten=True)
    torch.manual_seed(seed)
    model = mlp([784, cfg["hidden"], 10], "relu")
    loss_fn = torch.nn.CrossEntropyLoss()
    settings = {"experiment": NAME, "quick": quick, "seed": seed, **cfg, "learning_rate": LR,
                "batch_size": 32, "num_params": num_parameters(model),
                "paper": "Fort and Ganguli 2019, Fig. 1 and their model of the C outliers"}
    points = {}
    for point in ("init", "trained"):
        if point == "trained":
            train(model, loss_fn, x, y, steps=cfg["steps"], lr=LR, batch_size=32, rng=seed)
        loss, acc = evaluate(model, loss_fn, x, y)
        r = analyse(model, loss_fn, x, y, 10, cfg["per_class"], seed)
        r.update(loss=loss, accuracy=acc)
        points[point] = r
        echo(f"{point}: loss {loss:.3g} acc {acc:.3f} | mean cosine "
             + ", ".join(f"{k} {v:.3f}" for k, v in r["pairs"].items())
             + " | top-10 of H in the span of the 10 logit means "
             f"{r['H']['overlap_logit_means']:.3f}, of the 100 (logit, class) means "
             f"{r['H']['overlap_class_logit_means']:.3f} (G: {r['G']['overlap_logit_means']:.3f}"
             f", {r['G']['overlap_class_logit_means']:.3f}; random "
             f"{r['H']['random_baseline_C2']:.1e}) [{timer():.0f} s]")
    with RunStore.create(paths["h5"], settings, overwrite=True) as writer:
        for point, r in points.items():
            writer.write_arrays(f"cosines_{point}", {"cosines": r["cosines"]})
    payload = {"experiment": NAME, "quick": quick, "settings": settings,
               "points": {p: {k: v for k, v in r.items() if k != "cosines"}
                          for p, r in points.items()},
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    plot(payload, {p: r["cosines"] for p, r in points.items()}, paths["png"])
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``): the
    mean cosine of each pair group and the overlaps of the top-10 spaces of H and G with the
    spans of the logit means and of the (logit, class) means, at both points."""
    out = {}
    for point, r in d["points"].items():
        for name in PAIRS:
            out[f"{point}: mean cosine, {name}"] = r["pairs"][name]
        for op in ("H", "G"):
            out[f"{point}: top-10 of {op} in span of logit means"] = r[op]["overlap_logit_means"]
            out[f"{point}: top-10 of {op} in span of (logit, class) means"] = (
                r[op]["overlap_class_logit_means"])
    return out


def plot(d, cosines, path):
    """Left: the cosine matrices (init, trained) ordered by logit, then class; right: the mean
    cosines by pair group and the overlaps with the cluster-mean spans."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(14, 11.5))
    axes = axes.ravel()
    per_logit = d["settings"]["per_class"] * 10
    for ax, point in zip(axes[:2], ("init", "trained")):
        image = ax.imshow(cosines[point], cmap="RdBu_r", vmin=-1, vmax=1,
                          interpolation="nearest")
        for b in range(per_logit, cosines[point].shape[0], per_logit):
            ax.axhline(b - 0.5, color="k", lw=0.4)
            ax.axvline(b - 0.5, color="k", lw=0.4)
        ticks = np.arange(per_logit / 2, cosines[point].shape[0], per_logit)
        ax.set_xticks(ticks, [str(c) for c in range(10)])
        ax.set_yticks(ticks, [str(c) for c in range(10)])
        ax.set(title=f"{point}: cos(g_ic, g_jc') (loss {d['points'][point]['loss']:.3g})",
               xlabel="logit c' (blocks; classes sorted inside)", ylabel="logit c")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine")
    width = 0.38
    pos = np.arange(len(PAIRS))
    for i, point in enumerate(("init", "trained")):
        axes[2].bar(pos + (i - 0.5) * width, [d["points"][point]["pairs"][n] for n in PAIRS],
                    width, label=point)
    axes[2].set_xticks(pos, ["same logit\nsame class", "same logit\nother class",
                             "other logit"])
    axes[2].set(title="mean cosine of logit gradients", ylabel="mean cosine")
    axes[2].axhline(0, color="k", lw=0.8)
    labels = ["H:\nlogit means", "H: (logit,\nclass) means", "G:\nlogit means",
              "G: (logit,\nclass) means"]
    keys = [("H", "overlap_logit_means"), ("H", "overlap_class_logit_means"),
            ("G", "overlap_logit_means"), ("G", "overlap_class_logit_means")]
    pos = np.arange(len(keys))
    for i, point in enumerate(("init", "trained")):
        axes[3].bar(pos + (i - 0.5) * width, [d["points"][point][op][k] for op, k in keys],
                    width, label=point)
    axes[3].set_xticks(pos, labels)
    random = d["points"]["init"]["H"]["random_baseline_C2"]
    axes[3].set(title=f"top-10 eigenspace inside the span of ... (a random span of\n"
                      f"dimension 100 would give {random:.1g})",
                ylabel="overlap ||Q_top^T Q_span||_F^2 / 10 (1 = inside)", ylim=(0, 1.05))
    ec.finish_figure(fig, axes[2:], path)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON and the HDF5 file (no recomputation)."""
    import json

    import h5py

    paths = ec.out_paths(NAME, out_dir, quick)
    with h5py.File(paths["h5"], "r") as handle:
        cosines = {p: handle[f"cosines_{p}/cosines"][()] for p in ("init", "trained")}
    plot(json.loads(paths["json"].read_text()), cosines, paths["png"])


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
