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

As published (:func:`paths_during_training`): the paper's Fig. 10 interpolates at every step
of training, between (left) GD and SGD from one initial point and (right) two SGD runs from
two random initial points with different shuffling. Here both runs of a pair advance
``PATH["every"]`` steps at a time for a fixed ``PATH["steps"]`` steps at learning rate 0.1, and
at each checkpoint the training loss is evaluated at ``PATH["points"]`` points of the segment
between the two current weights: distance, the two end losses, the largest and smallest loss
on the segment and the barrier (same definition).

Quick mode: 300 training and 300 held-out digits, an MLP 784-32-10, loss <= 0.02 checked
every 50 steps (at most 1,500), 21 line points, seeds 0, 1, 2; paths over 300 steps.
"""

from __future__ import annotations

import json
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
PATH = {"steps": 800, "every": 20, "points": 11}
QUICK_PATH = {"steps": 300, "every": 30, "points": 11}


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


def paths_during_training(widths, s, data, cfg) -> dict:
    """The paper's Fig. 10 as published, for seed ``s``: "shared" = GD and SGD (batch
    ``SGD_BATCH``) from one initialization; "separate" = two SGD runs from the
    initializations ``s`` and ``s + SEPARATE_OFFSET`` with different batch orders. Every
    ``cfg['every']`` steps up to ``cfg['steps']``: the training loss on ``cfg['points']``
    points of the segment between the two current weights."""
    x, y = data
    loss_fn = torch.nn.CrossEntropyLoss()
    t = np.linspace(0.0, 1.0, cfg["points"])
    out = {}
    for case, seed_b, batch_a in (("shared", s, None), ("separate", s + SEPARATE_OFFSET,
                                                         SGD_BATCH)):
        torch.manual_seed(s)
        model_a = mlp(widths, "relu")
        torch.manual_seed(seed_b)
        model_b = mlp(widths, "relu")
        space = ParameterSpace.of(model_a)
        records = []
        for step in range(0, cfg["steps"] + 1, cfg["every"]):
            if step:
                train(model_a, loss_fn, x, y, steps=cfg["every"], lr=LR, batch_size=batch_a,
                      rng=s + step)
                train(model_b, loss_fn, x, y, steps=cfg["every"], lr=LR, batch_size=SGD_BATCH,
                      rng=10_000 + seed_b + step)
            w_a, w_b = space.flat_parameters(model_a), ParameterSpace.of(model_b).flat_parameters(
                model_b)
            profile = line_profile(model_a, loss_fn, {"train": (x, y)}, w_a, w_b, t,
                                   batch_size=len(x))
            losses = np.asarray(profile.losses["train"])
            records.append({"step": step, "distance": profile.norm, "loss_a": float(losses[0]),
                            "loss_b": float(losses[-1]), "max_on_segment": float(losses.max()),
                            "min_on_segment": float(losses.min()),
                            "barrier": barrier(t, losses), "losses": losses})
        out[case] = records
    return out


def path_summary(paths) -> dict:
    """Per case, over seeds: the barrier at the first checkpoint after step 0 and at the
    last, its largest value over all checkpoints after step 0, and whether the segment's
    largest loss decreases from the first to the last checkpoint."""
    out = {}
    for case in ("shared", "separate"):
        rows = [p[case] for p in paths]
        out[case] = {
            "barrier_last": ec_spread([r[-1]["barrier"] for r in rows]),
            "barrier_max_after_start": ec_spread([max(c["barrier"] for c in r[1:]) for r in rows]),
            "max_on_segment_first": ec_spread([r[1]["max_on_segment"] for r in rows]),
            "max_on_segment_last": ec_spread([r[-1]["max_on_segment"] for r in rows]),
            "end_loss_last": ec_spread([max(r[-1]["loss_a"], r[-1]["loss_b"]) for r in rows]),
            "distance_last": ec_spread([r[-1]["distance"] for r in rows]),
            "segment_max_decreases": [r[-1]["max_on_segment"] < r[1]["max_on_segment"]
                                      for r in rows]}
    return out


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
    summary = case_summary(cases)
    path_cfg = QUICK_PATH if quick else PATH
    settings["paths"] = path_cfg
    runs = [paths_during_training(widths, s, (x, y), path_cfg) for s in seeds]
    for s, p in zip(seeds, runs):
        echo(f"seed {s} paths: " + "; ".join(
            f"{case} step {r[-1]['step']}: distance {r[-1]['distance']:.3g}, ends "
            f"{r[-1]['loss_a']:.3g}/{r[-1]['loss_b']:.3g}, max on segment "
            f"{r[-1]['max_on_segment']:.3g}, barrier {r[-1]['barrier']:.3g}"
            for case, r in p.items()) + f" [{timer():.0f} s]")
    summary["paths"] = path_summary(runs)
    for case in cases:
        b = summary[case]["barrier_train_loss"]
        echo(f"{case}: barrier median {b['median']:.3g} (range {b['min']:.3g}-{b['max']:.3g}) "
             f"over seeds {list(seeds)}")
    payload = {"experiment": NAME, "quick": quick, "settings": settings, "cases": cases,
               "paths": [{"seed": s, **p} for s, p in zip(seeds, runs)],
               "summary": summary, "t": t, "seconds": timer(), "cpu_seconds": timer.cpu()}
    plot(payload, paths["png"])
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def case_summary(cases) -> dict:
    """Per case, over seeds (:func:`ec_spread`): the barrier, the segment's largest loss and
    smallest accuracy, and the distance between the converged ends; whether all converged."""
    summary = {case: {key: ec_spread([r[key] for r in rows]) for key in
                      ("barrier_train_loss", "max_train_loss_on_segment",
                       "min_train_accuracy_on_segment", "distance")}
               for case, rows in cases.items()}
    summary["all_converged"] = all(r["gd"]["converged"] and r["sgd"]["converged"]
                                   for rows in cases.values() for r in rows)
    return summary


def replot(out_dir=None, quick: bool = False) -> None:
    """Recompute the summary over seeds from the written JSON's per-seed records (no
    training), rewrite the JSON and redraw the PNG."""
    paths = ec.out_paths(NAME, out_dir, quick)
    payload = json.loads(paths["json"].read_text())
    payload["summary"] = {**case_summary(payload["cases"]),
                          "paths": path_summary(payload["paths"])}
    plot(payload, paths["png"])
    ec.write_json(paths["json"], payload)


def end_value(t, values, at: float) -> float:
    """``values`` at the line point ``t == at`` (0: the GD end, 1: the SGD end)."""
    return float(np.asarray(values)[np.isclose(np.asarray(t), at)][0])


def ec_spread(values) -> dict:
    """Mean, median, minimum and maximum over seeds, and the seeds' values."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "max": float(values.max()),
            "per_seed": values.tolist()}


def plot(payload, path):
    """Loss (log scale) and accuracy along the line, one curve per seed, for both cases."""
    plt = ec.pyplot()
    with_paths = bool(payload.get("paths"))
    fig, axes = plt.subplots(2, 3 if with_paths else 2, figsize=(16.5 if with_paths else 11, 8))
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
    if with_paths:
        _plot_paths(axes[0, 2], axes[1, 2], payload["paths"])
    ec.finish_figure(fig, axes.ravel(), path)


def _plot_paths(ax_shared, ax_separate, paths):
    """As published: at each checkpoint, the two runs' losses and the largest loss on the
    segment between them, against the step; every seed."""
    titles = {"shared": "as published: GD and SGD from one start",
              "separate": "as published: two SGD runs from two starts"}
    for ax, case in ((ax_shared, "shared"), (ax_separate, "separate")):
        for i, p in enumerate(paths):
            r = p[case]
            steps = [c["step"] for c in r]
            ax.semilogy(steps, [c["max_on_segment"] for c in r], "-", color=f"C{i}",
                        label=f"seed {p['seed']}: largest loss on the segment")
            ax.semilogy(steps, [max(c["loss_a"], c["loss_b"]) for c in r], ":", color=f"C{i}",
                        lw=1)
        ax.set(title=f"{titles[case]}\n(dotted: the larger end loss)", xlabel="training step",
               ylabel="training loss (log scale)")


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
