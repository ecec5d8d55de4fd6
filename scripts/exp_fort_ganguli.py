"""Gradient overlap with the top Hessian eigenspace during training, and the number of
large-curvature directions against the number of classes (Fort and Ganguli 2019, "Emergent
properties of the local geometry of neural loss landscapes"; Gur-Ari, Roberts and Dyer 2018,
"Gradient descent happens in a tiny subspace").

Part A (tracking). 1,000 real MNIST digits (flattened, standardized), an MLP 784-32-10 with
ReLU (25,450 parameters), cross-entropy, learning rate 0.1 for 400 steps, trained twice from
the same initialization: by SGD (batches of 32) and by full-batch GD. Every 25 steps a
``tracking.SpectrumTracker`` computes the top 20 Hessian eigenpairs of the whole training set
(Lanczos, tol 1e-4, warm-started from the previous Ritz vectors), the full-dataset gradient
and the fraction of its squared norm in the top-m eigenspace; all records go to one HDF5 file
with the step as an axis. In full mode every solve is repeated from a random vector
(``compare_cold``) to measure what the warm start saves.

Part B (classes). Gaussian clusters (``gaussian_clusters``, covariance scale 10), C in
{2, 5, 10, 20} classes, an MLP 100-30-30-C, SGD (batch 32, learning rate 0.1, 600 steps),
tracked every 50 steps with ``k = 2C + 10``: the outliers of the top eigenvalues by the gap
rule, and the gradient overlap with the top-m eigenspace for every m up to 2C + 10.

Part C (learning rate). C = 10 clusters as in part B, SGD at learning rates 0.1, 0.5 and 1.0
for 400 steps, tracked every 50 steps (k = 10): the overlap next to ``lr * lambda_max``.

The claims: during training the gradient lies mostly in the top-C eigenspace (Gur-Ari et al.
report about 90% and more after a short initial phase), and the number of large eigenvalues
is the number of classes C.

Quick mode: part A on 300 digits with an MLP 784-32-10 for 150 steps (k = 10, no cold-start
comparison), part B with C = 2 and 5 for 200 steps, part C at lr 0.1 and 1.0 for 100 steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.examples.datasets import load_mnist  # noqa: E402
from lanczos_hessian.storage.hdf5 import SpectrumWriter  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.analysis.outliers import count_outliers  # noqa: E402
from lanczos_hessian.examples.synthetic import gaussian_clusters  # noqa: E402
from lanczos_hessian.analysis.tracking import SpectrumTracker  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "fort_ganguli"
LR = 0.1


def overlaps_by_size(parts) -> np.ndarray:
    """Cumulative overlap with the top-1, top-2, ... eigenspaces (parts in ascending order)."""
    return np.cumsum(np.asarray(parts)[..., ::-1], axis=-1)


def part_a(writer, quick, seed, echo) -> dict:
    n, steps, every, k = (300, 150, 25, 10) if quick else (1000, 400, 25, 20)
    x, y = load_mnist(n, flatten=True)
    out = {}
    for label, batch in (("SGD", 32), ("GD", None)):
        torch.manual_seed(seed)
        model = mlp([784, 32, 10], "relu")
        loss_fn = torch.nn.CrossEntropyLoss()
        timer = ec.Timer()
        tracker = SpectrumTracker(model, loss_fn, (x, y), k=k, every=every, tol=1e-4,
                                  batch_size=n, writer=writer, group=f"tracking_{label}",
                                  compare_cold=not quick, rng=seed)
        tracker.measure(0)
        history = train(model, loss_fn, x, y, steps=steps, lr=LR, batch_size=batch, rng=seed,
                        callback=tracker)
        tracker.close()
        a = tracker.as_arrays()
        cumulative = overlaps_by_size(a["overlap_parts"])
        out[label] = {"step": a["step"], "loss": a["loss"], "top": a["eigenvalues"][:, ::-1],
                      "overlap_top10": cumulative[:, 9] if k >= 10 else cumulative[:, -1],
                      "overlap_top1": cumulative[:, 0], "overlap_topk": cumulative[:, -1],
                      "num_matvecs": a["num_matvecs"], "cold_matvecs": a["cold_matvecs"],
                      "train_loss_history": np.asarray(history), "seconds": timer(),
                      "num_params": num_parameters(model)}
        late = a["step"] >= steps // 4
        r = out[label]
        saving = (1 - a["num_matvecs"][1:].sum() / a["cold_matvecs"][1:].sum()
                  if not quick else float("nan"))
        r["warm_saving"] = saving
        echo(f"  [A] {label}: loss {a['loss'][-1]:.3g}; overlap with top-10 after step "
             f"{steps // 4}: median {np.median(r['overlap_top10'][late]):.3f} (min "
             f"{r['overlap_top10'][late].min():.3f}); top eigenvalue {a['eigenvalues'][-1, -1]:.3g}"
             f"; warm start saved {saving:.0%} of the applications [{timer():.0f} s]")
    return out


def part_b(writer, quick, seed, echo) -> list:
    classes, steps, every = ((2, 5), 200, 50) if quick else ((2, 5, 10, 20), 600, 50)
    out = []
    for C in classes:
        x, y = gaussian_clusters(C, 1000, 100, scale=10.0, rng=seed)
        torch.manual_seed(seed)
        model = mlp([100, 30, 30, C], "relu")
        loss_fn = torch.nn.CrossEntropyLoss()
        k = 2 * C + 10
        tracker = SpectrumTracker(model, loss_fn, (x, y), k=k, every=every, tol=1e-5,
                                  batch_size=1000, writer=writer, group=f"classes_C{C}",
                                  rng=seed)
        train(model, loss_fn, x, y, steps=steps, lr=LR, batch_size=32, rng=seed,
              callback=tracker)
        tracker.close()
        a = tracker.as_arrays()
        loss, acc = evaluate(model, loss_fn, x, y)
        tops = a["eigenvalues"][:, ::-1]
        gaps = [count_outliers(t).gap for t in tops]
        cumulative = overlaps_by_size(a["overlap_parts"])
        row = {"C": C, "steps": a["step"], "loss": a["loss"], "gap_counts": gaps,
               "final_loss": loss,
               "final_accuracy": acc, "top_final": tops[-1],
               "overlap_curve_final": cumulative[-1],
               "overlap_curve_mean": cumulative.mean(0),
               "overlap_top_C_minus_1": cumulative[:, C - 2] if C > 1 else np.zeros(len(gaps)),
               "overlap_top_C": cumulative[:, C - 1], "overlap_top_2C": cumulative[:, 2 * C - 1]}
        out.append(row)
        echo(f"  [B] C={C:2d}: loss {loss:.3g} acc {acc:.3f}; gap outliers per measurement "
             f"{gaps}; mean overlap top-(C-1) {row['overlap_top_C_minus_1'].mean():.3f}, "
             f"top-C {row['overlap_top_C'].mean():.3f}, top-2C {row['overlap_top_2C'].mean():.3f}")
    return out


def part_c(writer, quick, seed, echo) -> list:
    """The overlap against the learning rate: C = 10 clusters, SGD, lr 0.1, 0.5 and 1.0."""
    rates, steps, every = ((0.1, 1.0), 100, 50) if quick else ((0.1, 0.5, 1.0), 400, 50)
    out = []
    for lr in rates:
        x, y = gaussian_clusters(10, 1000, 100, scale=10.0, rng=seed)
        torch.manual_seed(seed)
        model = mlp([100, 30, 30, 10], "relu")
        loss_fn = torch.nn.CrossEntropyLoss()
        tracker = SpectrumTracker(model, loss_fn, (x, y), k=10, every=every, tol=1e-4,
                                  batch_size=1000, writer=writer, group=f"rate_{lr:g}", rng=seed)
        train(model, loss_fn, x, y, steps=steps, lr=lr, batch_size=32, rng=seed,
              callback=tracker)
        tracker.close()
        a = tracker.as_arrays()
        row = {"lr": lr, "steps": a["step"], "loss": a["loss"],
               "lr_times_top": lr * a["eigenvalues"][:, -1], "overlap_top10": a["overlap"]}
        out.append(row)
        echo(f"  [C] lr {lr:g}: lr * lambda_max {np.array2string(row['lr_times_top'], precision=2)}"
             f"; overlap top-10 {np.array2string(row['overlap_top10'], precision=2)}; loss "
             f"{np.array2string(row['loss'], precision=3)}")
    return out


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "learning_rate": LR,
             "paper": "Fort and Ganguli 2019; Gur-Ari, Roberts and Dyer 2018"}
    with SpectrumWriter(paths["h5"], attrs, overwrite=True) as writer:
        a = part_a(writer, quick, seed, echo)
        b = part_b(writer, quick, seed, echo)
        c = part_c(writer, quick, seed, echo)
    plot(a, b, c, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "tracking": {label: {key: v for key, v in r.items()
                                    if key != "train_loss_history"} for label, r in a.items()},
               "classes": b, "learning_rates": c, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def plot(a, b, c, path):
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    axes = axes.ravel()
    for j, row in enumerate(c):
        axes[4].plot(row["steps"], row["overlap_top10"], "o-", ms=3, color=f"C{j}",
                     label=f"lr {row['lr']:g}: overlap top-10")
        axes[5].semilogy(row["steps"], row["lr_times_top"], "o-", ms=3, color=f"C{j}",
                         label=f"lr {row['lr']:g}")
    axes[4].set(title="clusters C=10, SGD: overlap vs learning rate", xlabel="step",
                ylim=(0, 1.02))
    axes[5].set(title="lr * lambda_max along the same runs", xlabel="step")
    for i, (label, r) in enumerate(a.items()):
        axes[0].plot(r["step"], r["overlap_top10"], "o-", ms=3, color=f"C{i}",
                     label=f"{label}: top-10 eigenspace")
        axes[0].plot(r["step"], r["overlap_top1"], ":", color=f"C{i}", label=f"{label}: top-1")
        axes[1].semilogy(r["step"], r["top"][:, 0], "o-", ms=3, color=f"C{i}",
                         label=f"{label}: lambda_1")
        axes[1].semilogy(r["step"], r["top"][:, 9], "s--", ms=2, color=f"C{i}",
                         label=f"{label}: lambda_10")
        axes[1].semilogy(r["step"], r["loss"], ":", color=f"C{i}", label=f"{label}: loss")
    axes[1].axhline(2 / LR, color="k", lw=0.7, ls="--", label="2 / learning rate")
    axes[0].set(title="MNIST 1k, MLP 784-32-10: ||P_top g||^2 / ||g||^2", xlabel="step",
                ylabel="fraction of the gradient", ylim=(0, 1.02))
    axes[1].set(title="top Hessian eigenvalues and loss", xlabel="step")
    for j, row in enumerate(b):
        m = np.arange(1, len(row["overlap_curve_mean"]) + 1)
        axes[2].plot(m / row["C"], row["overlap_curve_mean"], "-", color=f"C{j}",
                     label=f"C={row['C']} (gap outliers {row['gap_counts'][-1]})")
        axes[3].plot(row["steps"], row["overlap_top_C"], "o-", ms=3, color=f"C{j}",
                     label=f"C={row['C']}: top-C")
        axes[3].plot(row["steps"], row["loss"], ":", color=f"C{j}", label=f"C={row['C']}: loss")
    axes[3].set(title="clusters, SGD: overlap with the top-C eigenspace", xlabel="step",
                yscale="log")
    axes[2].axvline(1.0, color="k", lw=0.7, ls=":")
    axes[2].set(title="clusters, SGD: overlap with the top-m eigenspace (mean over training)",
                xlabel="m / C", ylabel="fraction of the gradient", ylim=(0, 1.02))
    ec.finish_figure(fig, axes, path)


if __name__ == "__main__":
    args = ec.parse_args(__doc__.splitlines()[0])
    main(quick=args.quick, out_dir=args.out_dir, seed=args.seed)
