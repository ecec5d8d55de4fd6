"""Large batch, then small batch: two solutions in one basin (Sagun et al. 2018, Sec. 4.1,
Figs. 8-9).

The paper trains a bare AlexNet on CIFAR-10 with a large batch until it converges (Part I),
continues from that solution with a small batch at the same learning rate (Part II; its Fig. 8
shows the loss and accuracy of both parts), and evaluates loss and accuracy on the straight
line through both end points, extended beyond them (its Fig. 9). The premise: the
small-batch solution generalizes better (about 1% higher test accuracy there); the finding:
the line shows no barrier between the two, so the better solution lies in the same basin,
reached through its flat directions although the small-batch run first climbed in loss.

CIFAR-10 is not on this offline machine; this runs on the shipped **MNIST** digits: a
balanced training set of ``n_train`` = 2,000 and **all 8,000 other digits as the test set**
(binomial standard error about 0.25%, so a 1% difference is several standard errors). The
network is the convnet ``models.small_cnn(1, 10, 28, channels=(8, 16), hidden=32)`` (26,698
parameters; the bare AlexNet made every pass over the data about 20 times more expensive).
The batch sizes are those of experiment 4 (``exp_batch_size.py``), 512 and 10: a ratio of 51,
where the large batch is a quarter of the data. (An earlier protocol, Fashion-MNIST with
4,000 training images and batches 128 then 16, did not meet the premise: SB - LB test
accuracy -0.43% and -0.16% on two seeds; neither did 512 then 16 at lr 0.1 (-0.86%), nor
running Part II to 100 epochs (-0.41%).)

Protocol (SGD, learning rate 0.05 throughout; settings in ``FULL``), as the paper's, in
iterations: its Part I and Part II run 250 x 100 steps each; here

* Part I: batches of 512 from a seeded initialization for ``large_steps`` = 1,000 steps
  (256 epochs: where the earlier convergence rule stopped it, 195-255 epochs);
* Part II: from the Part I solution, batches of 10 for ``small_steps`` = 3,000 steps (15
  epochs; three times Part I's iterations, where the paper has equal ones: the small batch
  needs them to recover from its climb, 12.5-17.5 epochs under the earlier rule);
* a check every ``check_steps`` = 100 steps: full training and test loss and accuracy (the
  curves of Fig. 8, plotted against the iteration), and the full training loss at a few
  early small-batch steps (the climb);
* **converged** (:func:`is_converged`, reported, no longer a stopping rule): full training
  accuracy >= 99.9% and full training loss <= 0.02 at the end of the part;
* the line of Fig. 9: training and test loss and accuracy at ``(1 - t) w_LB + t w_SB``, 21
  values of t in [-0.5, 1.5] (``geometry.line_profile``, whole sets);
* test accuracy of both ends with its binomial standard error ``sqrt(p (1 - p) / n)`` and
  the paired standard error of the difference (:func:`paired_difference`, same images); the
  premise is **met** when both ends converged and SB - LB exceeds two paired standard errors;
* the top 2 Hessian eigenvalues at both ends on the first 1,000 training images (Lanczos,
  tol 1e-3 relative to ||H||, residual bounds reported).

Every seed of ``SEEDS`` (full: 5, quick: 2) runs in one command and the figure shows them all
(the seed draws the initialization and the batch order; the digits are the same).

Quick mode (``QUICK``): 500 training and 1,000 test digits, batches of 250 then 5, the
convergence test relaxed to accuracy >= 99% and loss <= 0.05, 400 + 1,000 steps, 9 line
points, the top eigenvalue on 200 images.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator, lanczos_eigsh  # noqa: E402
from lanczos_hessian.analysis.geometry import line_profile, set_flat_parameters  # noqa: E402
from lanczos_hessian.curvature.params import ParameterSpace  # noqa: E402
from lanczos_hessian.examples.models import num_parameters, small_cnn  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "same_basin"
LR = 0.05
CHANNELS, HIDDEN = (8, 16), 32
EARLY_SMALL_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500)

FULL = {"n_train": 2000, "n_test": 8000, "large_batch": 512, "small_batch": 10,
        "check_steps": 100, "large_steps": 1000, "small_steps": 3000, "max_loss": 0.02,
        "min_accuracy": 0.999, "points": 21, "hessian_samples": 1000, "k": 2, "seeds": 5}
QUICK = {"n_train": 500, "n_test": 1000, "large_batch": 250, "small_batch": 5,
         "check_steps": 100, "large_steps": 400, "small_steps": 1000, "max_loss": 0.05,
         "min_accuracy": 0.99, "points": 9, "hessian_samples": 200, "k": 1, "seeds": 2}


def is_converged(train_loss: float, train_accuracy: float, cfg: dict) -> bool:
    """The convergence rule of both ends: full training accuracy >= ``min_accuracy`` and full
    training loss <= ``max_loss``."""
    return train_accuracy >= cfg["min_accuracy"] and train_loss <= cfg["max_loss"]


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` independent test images."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def paired_difference(correct_a, correct_b) -> tuple:
    """Difference of accuracies ``acc_b - acc_a`` on the same images and its standard error
    from the per-image differences ``d_i = c_b,i - c_a,i`` (``std(d) / sqrt(n)``): smaller than
    the unpaired error when both classifiers get the same images right."""
    d = np.asarray(correct_b, dtype=np.float64) - np.asarray(correct_a, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


@torch.no_grad()
def correct_mask(model, x, y, batch: int = 2000) -> np.ndarray:
    """Per-image correctness (0/1) of ``model`` in eval mode."""
    was = model.training
    model.eval()
    out = np.concatenate([(model(x[i:i + batch]).argmax(1) == y[i:i + batch]).numpy()
                          for i in range(0, len(x), batch)])
    model.train(was)
    return out.astype(np.int8)


def run_part(model, loss_fn, data, test, *, batch, steps, cfg, seed, step0, curve,
             early=None) -> dict:
    """SGD at ``LR`` with ``batch`` for ``steps`` steps, in chunks of ``check_steps``; appends
    ``(iteration, train loss, train acc, test loss, test acc)`` to ``curve`` at every check
    (iterations counted from ``step0``, the start of the part) and, with ``early``, the full
    training loss after each of those first steps. :func:`is_converged` at the end is
    reported."""
    x, y = data
    n = len(x)
    steps_done = 0
    if early:
        for target in early:
            train(model, loss_fn, x, y, steps=target - steps_done, lr=LR, batch_size=batch,
                  rng=seed + steps_done)
            steps_done = target
            early_loss = evaluate(model, loss_fn, x, y)
            curve.setdefault("early", []).append((target,) + early_loss)
    while steps_done < steps:
        target = min((steps_done // cfg["check_steps"] + 1) * cfg["check_steps"], steps)
        train(model, loss_fn, x, y, steps=target - steps_done, lr=LR, batch_size=batch,
              rng=seed + steps_done)
        steps_done = target
        row = (step0 + steps_done,) + evaluate(model, loss_fn, x, y) + evaluate(model, loss_fn,
                                                                               *test)
        curve["checks"].append(row)
    return {"steps": steps_done, "epochs": steps_done * batch / n,
            "converged": is_converged(row[1], row[2], cfg), "train_loss": row[1],
            "train_accuracy": row[2], "test_loss": row[3], "test_accuracy": row[4]}


def top_eigenvalues(model, loss_fn, data, k, seed):
    """Top ``k`` Hessian eigenvalues (Lanczos, tol 1e-3, at most 60 products) with their
    residual bounds; an unconverged budget is reported through the bounds, not raised."""
    op = HessianOperator(model, loss_fn, data, batch_size=len(data[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = lanczos_eigsh(op, k=k, which="LA", tol=1e-3, rng=seed, max_matvecs=60,
                          ncv=max(2 * k + 1, 10))
    order = np.argsort(r.eigenvalues)[::-1]
    return r.eigenvalues[order], r.residual_bounds[order], int(r.num_matvecs)


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    """Every seed of ``cfg['seeds']`` from ``seed`` on; one JSON, one HDF5 file, one figure."""
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    cfg = QUICK if quick else FULL
    data = ec.mnist_train_test(cfg["n_train"], cfg["n_test"])
    runs = [run_seed(s, cfg, data, quick, timer, echo) for s in range(seed, seed + cfg["seeds"])]
    over = over_seeds(runs)
    echo(over["text"])
    with RunStore.create(paths["h5"], runs[0]["settings"], overwrite=True) as writer:
        for r in runs:
            g = f"seed{r['settings']['seed']}"
            writer.write_arrays(f"{g}/line", r["line"])
            writer.write_arrays(f"{g}/curves", {
                "large_batch": np.asarray(r["curves"]["large_batch"]),
                "small_batch": np.asarray(r["curves"]["small_batch"]),
                "small_batch_early": np.asarray(r["curves"]["small_batch_early"])})
            for name, h in r["hessian"].items():
                writer.write_arrays(f"{g}/hessian_{name}", {
                    "eigenvalues": h["top"], "residual_bounds": h["residual_bounds"]})
    payload = {"experiment": NAME, "quick": quick, "settings": runs[0]["settings"],
               "seeds": [r["settings"]["seed"] for r in runs], "runs": runs,
               "over_seeds": over, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    plot(payload, paths["png"])
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def over_seeds(runs) -> dict:
    """Median and range over seeds of every headline number, and how many seeds meet the
    premise and show a barrier (> 0.01) on the segment."""
    heads = [headline_of(r) for r in runs]
    out = {key: {"per_seed": [h[key] for h in heads],
                 "median": float(np.median([h[key] for h in heads])),
                 "min": float(np.min([h[key] for h in heads])),
                 "max": float(np.max([h[key] for h in heads]))} for key in heads[0]}
    out["premise_met"] = sum(r["summary"]["premise"]["met"] for r in runs)
    out["barrier_above_0.01"] = sum(r["summary"]["barrier_train_loss"] > 0.01 for r in runs)
    out["seeds"] = len(runs)
    out["text"] = "\n".join(
        f"{key}: median {v['median']:.4g} [{v['min']:.4g}, {v['max']:.4g}]"
        for key, v in out.items() if isinstance(v, dict)) + (
        f"\npremise met on {out['premise_met']}/{len(runs)} seeds; barrier > 0.01 on "
        f"{out['barrier_above_0.01']}/{len(runs)}")
    return out


def run_seed(seed, cfg, data, quick, timer, echo) -> dict:
    """Part I, Part II, the line and the Hessians for one seed (the earlier one-seed run)."""
    (x, y), (xt, yt) = data
    settings = {"experiment": NAME, "quick": quick, "seed": seed,
                "dataset": "MNIST (shipped 10,000 digits: balanced training set, the rest "
                           "held out)",
                "model": f"small_cnn(1, 10, 28, channels={CHANNELS}, hidden={HIDDEN})",
                "learning_rate": LR, "early_small_steps": EARLY_SMALL_STEPS, **cfg,
                "convergence": f"train accuracy >= {cfg['min_accuracy']} and train loss <= "
                               f"{cfg['max_loss']}",
                "paper": "Sagun et al. 2018, Sec. 4.1, Figs. 8-9 (CIFAR-10 and a bare AlexNet "
                         "there; MNIST and a small convnet here)"}
    torch.manual_seed(seed)
    model = small_cnn(1, 10, 28, channels=CHANNELS, hidden=HIDDEN)
    settings["num_params"] = num_parameters(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    space = ParameterSpace.of(model)
    curve_lb, curve_sb = {"checks": []}, {"checks": []}
    lb = run_part(model, loss_fn, (x, y), (xt, yt), batch=cfg["large_batch"],
                  steps=cfg["large_steps"], cfg=cfg, seed=seed, step0=0, curve=curve_lb)
    w_lb = space.flat_parameters(model)
    correct_lb = correct_mask(model, xt, yt)
    echo(f"seed {seed} Part I, batch {cfg['large_batch']}: {lb['steps']} steps, "
         f"{lb['epochs']:.0f} epochs "
         f"({'converged' if lb['converged'] else 'NOT converged'}), train loss "
         f"{lb['train_loss']:.3g} acc {lb['train_accuracy']:.4f}, test acc "
         f"{lb['test_accuracy']:.4f} [{timer():.0f} s]")
    sb = run_part(model, loss_fn, (x, y), (xt, yt), batch=cfg["small_batch"],
                  steps=cfg["small_steps"], cfg=cfg, seed=seed + 1, step0=lb["steps"],
                  curve=curve_sb, early=EARLY_SMALL_STEPS if not quick else EARLY_SMALL_STEPS[:6])
    w_sb = space.flat_parameters(model)
    correct_sb = correct_mask(model, xt, yt)
    diff, diff_se = paired_difference(correct_lb, correct_sb)
    ends = {}
    for name, part in (("LB", lb), ("SB", sb)):
        ends[name] = {**part, "test_accuracy_se": binomial_se(part["test_accuracy"],
                                                              len(xt))}
    premise = {"test_accuracy_difference_SB_minus_LB": diff, "paired_se": diff_se,
               "z": diff / diff_se if diff_se > 0 else float("nan"),
               "both_converged": lb["converged"] and sb["converged"],
               "met": bool(diff > 2 * diff_se and lb["converged"] and sb["converged"])}
    echo(f"seed {seed} Part II, batch {cfg['small_batch']}: {sb['steps']} steps, "
         f"{sb['epochs']:.0f} epochs "
         f"({'converged' if sb['converged'] else 'NOT converged'}), train loss "
         f"{sb['train_loss']:.3g} acc {sb['train_accuracy']:.4f}, test acc "
         f"{sb['test_accuracy']:.4f}; SB - LB test accuracy {diff:+.4f} +- {diff_se:.4f} "
         f"(paired SE; z = {premise['z']:.1f}) [{timer():.0f} s]")
    t = np.linspace(-0.5, 1.5, cfg["points"])
    profile = line_profile(model, loss_fn, {"train": (x, y), "test": (xt, yt)}, w_lb, w_sb, t,
                           batch_size=2000)
    inside = (t >= -1e-9) & (t <= 1 + 1e-9)
    train_line = profile.losses["train"]
    end_losses = (train_line[np.isclose(t, 0)][0], train_line[np.isclose(t, 1)][0])
    barrier = float(train_line[inside].max() - max(end_losses))
    echo(f"line: train loss {np.array2string(train_line, precision=3)}; barrier {barrier:.3g} "
         f"[{timer():.0f} s]")
    hessian = {}
    nh = cfg["hessian_samples"]
    for name, w in (("LB", w_lb), ("SB", w_sb)):
        set_flat_parameters(model, space, w)
        values, bounds, matvecs = top_eigenvalues(model, loss_fn, (x[:nh], y[:nh]), cfg["k"],
                                                  seed)
        hessian[name] = {"top": values, "residual_bounds": bounds, "num_matvecs": matvecs}
        echo(f"Hessian at {name}: top {np.array2string(values, precision=4)} (residual bounds "
             f"{np.array2string(bounds, precision=2)}, {matvecs} products) [{timer():.0f} s]")
    early = curve_sb.get("early", [])
    summary = {"barrier_train_loss": barrier,
               "max_train_loss_on_segment": float(train_line[inside].max()),
               "distance": profile.norm,
               "climb_max_train_loss": max(e[1] for e in early) if early else float("nan"),
               "top_ratio_LB_over_SB": float(hessian["LB"]["top"][0] / hessian["SB"]["top"][0]),
               "premise": premise}
    return {"settings": settings, "ends": ends,
            "curves": {"large_batch": curve_lb["checks"], "small_batch": curve_sb["checks"],
                       "small_batch_early": early,
                       "columns": ["iteration", "train_loss", "train_accuracy", "test_loss",
                                   "test_accuracy"],
                       "early_columns": ["small_batch_step", "train_loss", "train_accuracy"]},
            "line": profile.as_arrays(), "hessian": hessian, "summary": summary}


def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``), of the
    first seed of a run (``over_seeds`` in the JSON has every seed)."""
    return headline_of(d["runs"][0] if "runs" in d else d)  # one-seed files of before


def headline_of(d: dict) -> dict:
    """One seed's numbers: the premise (SB - LB test accuracy, its paired z, both
    converged), the climb, the barrier on the segment and the ratio of the top Hessian
    eigenvalues."""
    p, s = d["summary"]["premise"], d["summary"]
    return {"test accuracy, LB": d["ends"]["LB"]["test_accuracy"],
            "test accuracy, SB": d["ends"]["SB"]["test_accuracy"],
            "SB - LB test accuracy": p["test_accuracy_difference_SB_minus_LB"],
            "z of SB - LB (paired)": p["z"], "both converged": float(p["both_converged"]),
            "climb: largest train loss early in Part II": s["climb_max_train_loss"],
            "barrier on the segment (train loss)": s["barrier_train_loss"],
            "lambda_max LB / SB": s["top_ratio_LB_over_SB"]}


def plot(d, path):
    """Top: the paper's Fig. 8 (loss and accuracy of Part I then Part II against the
    iteration) and the climb at the start of Part II; bottom: its Fig. 9 (loss and accuracy
    on the line) and the test accuracy of both ends; every seed (colour), Part II dashed."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    st = d["settings"]
    for i, r in enumerate(d["runs"]):
        color, seed = f"C{i}", r["settings"]["seed"]
        lb, sb = np.asarray(r["curves"]["large_batch"]), np.asarray(r["curves"]["small_batch"])
        for rows, style in ((lb, "-"), (sb, "--")):
            axes[0, 0].semilogy(rows[:, 0], rows[:, 1], style, color=color, lw=1.2)
            axes[0, 1].plot(rows[:, 0], rows[:, 4], style, color=color, lw=1.2)
        axes[0, 0].plot([], [], "-", color=color, label=f"seed {seed}")
        early = np.asarray(r["curves"]["small_batch_early"])
        if len(early):
            axes[0, 2].loglog(early[:, 0], early[:, 1], "o-", ms=3, color=color,
                              label=f"seed {seed} (Part I end {r['ends']['LB']['train_loss']:.2g})")
        t = np.asarray(r["line"]["t"])
        axes[1, 0].semilogy(t, r["line"]["loss_train"], "-", color=color,
                            label=f"seed {seed}: barrier {r['summary']['barrier_train_loss']:.2g}")
        axes[1, 1].plot(t, r["line"]["accuracy_test"], "-", color=color, label=f"seed {seed}")
        p = r["summary"]["premise"]
        axes[1, 2].errorbar([i - 0.1, i + 0.1],
                            [r["ends"]["LB"]["test_accuracy"], r["ends"]["SB"]["test_accuracy"]],
                            yerr=[r["ends"]["LB"]["test_accuracy_se"],
                                  r["ends"]["SB"]["test_accuracy_se"]],
                            fmt="o-", color=color, capsize=3,
                            label=f"seed {seed}: SB - LB {p['test_accuracy_difference_SB_minus_LB']:+.3f}"
                                  f" (z {p['z']:.1f})")
    switch = st["large_steps"]
    for ax in axes[0, :2]:
        ax.axvline(switch, color="k", lw=0.7, ls=":")
    axes[0, 0].set(title=f"Fig. 8: training loss (solid: Part I, batch {st['large_batch']}; "
                         f"dashed: Part II, batch {st['small_batch']})", xlabel="iteration",
                   ylabel="training loss (log scale)")
    axes[0, 1].set(title="Fig. 8: test accuracy", xlabel="iteration", ylabel="test accuracy")
    axes[0, 2].set(title="start of Part II: the climb", xlabel="small-batch step",
                   ylabel="full training loss (log scale)")
    for ax in axes[1, :2]:
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.axvline(1, color="k", lw=0.6, ls=":")
    axes[1, 0].set(title="Fig. 9: training loss on the line through both ends",
                   xlabel="t: w = (1 - t) w_LB + t w_SB", ylabel="loss (log scale)")
    axes[1, 1].set(title="Fig. 9: test accuracy on the line",
                   xlabel="t: w = (1 - t) w_LB + t w_SB", ylabel="test accuracy")
    axes[1, 2].set(title=f"test accuracy of w_LB (left) and w_SB (right)\n(n = "
                         f"{st['n_test']}, +- 1 binomial SE)", xlabel="seed",
                   ylabel="test accuracy", xticks=range(len(d["runs"])),
                   xticklabels=[str(r["settings"]["seed"]) for r in d["runs"]])
    ec.finish_figure(fig, axes.ravel(), path)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON (no recomputation)."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    plot(json.loads(paths["json"].read_text()), paths["png"])


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
