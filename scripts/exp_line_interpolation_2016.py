"""The loss on the straight line between a GD and an SGD solution (Sagun, Bottou and LeCun
2016, Fig. 10): from a shared initialization, and from two random initializations.

Data and network: real MNIST digits (``expcommon.mnist_train_test``: a balanced training
subset and a disjoint balanced held-out set), flattened, an MLP 784-100-10 with ReLU (79,510
parameters), cross-entropy. Two solutions per case, both trained at learning rate 0.1 until
converged (:func:`fit`: full-data training loss <= 0.01, checked every 100 steps, at most
4,000 steps): one by full-batch gradient descent (GD), one by SGD with batches of 32.

* **shared**: GD and SGD start from the same initialization (seed ``s``);
* **separate**: GD starts from seed ``s``, SGD from seed ``s + 100``.

For each pair, loss and accuracy on the training and held-out sets at
``w(t) = (1 - t) w_GD + t w_SGD`` for 41 values of t in [-0.5, 1.5]
(``geometry.line_profile``). The barrier is the largest training loss on the segment
``0 <= t <= 1`` minus the larger of the two end losses (:func:`barrier`): 0 when the loss
never rises above its ends, i.e. no sign of two separate basins along the line. Seeds 0-4.

Quick mode: 300 training and 300 held-out digits, an MLP 784-32-10, loss <= 0.02 checked
every 50 steps (at most 1,500), 21 line points, seeds 0, 1, 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.analysis.geometry import line_profile  # noqa: E402
from lanczos_hessian.curvature.params import ParameterSpace  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "line_interpolation_2016"
LR = 0.1
SGD_BATCH = 32
SEPARATE_OFFSET = 100


def fit(model, loss_fn, x, y, *, batch, max_loss, check_every, max_steps, seed) -> dict:
    """(S)GD at ``LR`` until the full-data training loss is at most ``max_loss`` at a check
    (every ``check_every`` steps) or ``max_steps``; returns steps, final loss and accuracy
    and whether the rule was met."""
    steps, loss, acc = 0, float("inf"), 0.0
    while steps < max_steps and loss > max_loss:
        train(model, loss_fn, x, y, steps=check_every, lr=LR, batch_size=batch, rng=seed + steps)
        steps += check_every
        loss, acc = evaluate(model, loss_fn, x, y)
    return {"steps": steps, "train_loss": loss, "train_accuracy": acc,
            "converged": loss <= max_loss}


def barrier(t, losses) -> float:
    """Largest loss on ``0 <= t <= 1`` minus the larger end loss (``t = 0`` and ``t = 1``
    must be among the points); >= 0 by construction."""
    t, losses = np.asarray(t), np.asarray(losses)
    inside = (t >= -1e-9) & (t <= 1 + 1e-9)
    ends = max(end_value(t, losses, 0.0), end_value(t, losses, 1.0))
    return float(losses[inside].max() - ends)


def solution(widths, init_seed, batch, data, cfg) -> tuple:
    """Initialize with ``torch.manual_seed(init_seed)``, train by GD (``batch=None``) or SGD
    until :func:`fit`'s rule; return (model, flat parameters, fit record)."""
    x, y = data
    torch.manual_seed(init_seed)
    model = mlp(widths, "relu")
    loss_fn = torch.nn.CrossEntropyLoss()
    record = fit(model, loss_fn, x, y, batch=batch, seed=init_seed, **cfg)
    return model, ParameterSpace.of(model).flat_parameters(model), record


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        n, widths, points = 300, [784, 32, 10], 21
        cfg = {"max_loss": 0.02, "check_every": 50, "max_steps": 1500}
    else:
        n, widths, points = 1000, [784, 100, 10], 41
        cfg = {"max_loss": 0.01, "check_every": 100, "max_steps": 4000}
    (x, y), (xt, yt) = ec.mnist_train_test(n, n, flatten=True)
    seeds = tuple(range(seed, seed + (3 if quick else 5)))
    t = np.linspace(-0.5, 1.5, points)
    loss_fn = torch.nn.CrossEntropyLoss()
    settings = {"experiment": NAME, "quick": quick, "seeds": list(seeds), "num_train": n,
                "num_test": n, "widths": widths, "learning_rate": LR, "sgd_batch": SGD_BATCH,
                "convergence": f"full training loss <= {cfg['max_loss']}", **cfg,
                "separate_init_offset": SEPARATE_OFFSET,
                "paper": "Sagun, Bottou and LeCun 2016, Fig. 10"}
    cases = {"shared": [], "separate": []}
    for s in seeds:
        model, w_gd, gd = solution(widths, s, None, (x, y), cfg)
        settings["num_params"] = num_parameters(model)
        for case, sgd_seed in (("shared", s), ("separate", s + SEPARATE_OFFSET)):
            _, w_sgd, sgd = solution(widths, sgd_seed, SGD_BATCH, (x, y), cfg)
            profile = line_profile(model, loss_fn, {"train": (x, y), "test": (xt, yt)}, w_gd,
                                   w_sgd, t, batch_size=n)
            row = {"seed": s, "sgd_init_seed": sgd_seed, "gd": gd, "sgd": sgd,
                   "distance": profile.norm, "line": profile.as_arrays(),
                   "barrier_train_loss": barrier(t, profile.losses["train"]),
                   "max_train_loss_on_segment": float(
                       profile.losses["train"][(t >= -1e-9) & (t <= 1 + 1e-9)].max()),
                   "min_train_accuracy_on_segment": float(
                       profile.accuracies["train"][(t >= -1e-9) & (t <= 1 + 1e-9)].min()),
                   "test_accuracy_gd": end_value(t, profile.accuracies["test"], 0.0),
                   "test_accuracy_sgd": end_value(t, profile.accuracies["test"], 1.0)}
            cases[case].append(row)
            echo(f"seed {s} {case:8s}: GD {gd['steps']} steps (loss {gd['train_loss']:.3g}), "
                 f"SGD {sgd['steps']} steps (loss {sgd['train_loss']:.3g}); |w_SGD - w_GD| = "
                 f"{profile.norm:.3g}; barrier {row['barrier_train_loss']:.3g} (max loss on the "
                 f"segment {row['max_train_loss_on_segment']:.3g}, min train accuracy "
                 f"{row['min_train_accuracy_on_segment']:.3f}) [{timer():.0f} s]")
    summary = {case: {key: ec_spread([r[key] for r in rows]) for key in
                      ("barrier_train_loss", "max_train_loss_on_segment",
                       "min_train_accuracy_on_segment", "distance")}
               for case, rows in cases.items()}
    summary["all_converged"] = all(r["gd"]["converged"] and r["sgd"]["converged"]
                                   for rows in cases.values() for r in rows)
    for case in cases:
        b = summary[case]["barrier_train_loss"]
        echo(f"{case}: barrier median {b['median']:.3g} (range {b['min']:.3g}-{b['max']:.3g}) "
             f"over seeds {list(seeds)}")
    payload = {"experiment": NAME, "quick": quick, "settings": settings, "cases": cases,
               "summary": summary, "t": t, "seconds": timer(), "cpu_seconds": timer.cpu()}
    plot(payload, paths["png"])
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def end_value(t, values, at: float) -> float:
    """``values`` at the line point ``t == at`` (0: the GD end, 1: the SGD end)."""
    return float(np.asarray(values)[np.isclose(np.asarray(t), at)][0])


def ec_spread(values) -> dict:
    """Median, minimum and maximum over seeds."""
    values = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(values)), "min": float(values.min()),
            "max": float(values.max())}


def plot(payload, path):
    """Loss (log scale) and accuracy along the line, one curve per seed, for both cases."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    t = np.asarray(payload["t"])
    titles = {"shared": "GD and SGD from one shared initialization",
              "separate": "GD and SGD from two random initializations"}
    for col, (case, rows) in enumerate(payload["cases"].items()):
        for i, r in enumerate(rows):
            line = r["line"]
            label = f"seed {r['seed']} (barrier {r['barrier_train_loss']:.2g})"
            axes[0, col].semilogy(t, line["loss_train"], "-", color=f"C{i}", label=label)
            axes[0, col].semilogy(t, line["loss_test"], "--", color=f"C{i}", lw=0.9)
            axes[1, col].plot(t, line["accuracy_train"], "-", color=f"C{i}",
                              label=f"seed {r['seed']}: train")
            axes[1, col].plot(t, line["accuracy_test"], "--", color=f"C{i}", lw=0.9,
                              label=f"seed {r['seed']}: held-out")
        axes[0, col].set(title=f"{titles[case]}\n(solid: training, dashed: held-out)",
                         xlabel="t: w = (1 - t) w_GD + t w_SGD", ylabel="loss (log scale)")
        axes[1, col].set(title="accuracy on the same line", xlabel="t: w = (1 - t) w_GD + t w_SGD",
                         ylabel="accuracy", ylim=(0, 1.02))
        for ax in axes[:, col]:
            ax.axvline(0, color="k", lw=0.6, ls=":")
            ax.axvline(1, color="k", lw=0.6, ls=":")
    ec.finish_figure(fig, axes.ravel(), path)


if __name__ == "__main__":
    ec.command_line(__doc__, main)
