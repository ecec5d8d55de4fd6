"""Large batch, then small batch: two solutions in one basin (Sagun et al. 2018, Sec. 4.1,
Figs. 8-9).

The paper trains a bare AlexNet on CIFAR-10 with a large batch until it converges (Part I),
continues from that solution with a small batch at the same learning rate (Part II; its Fig. 8
shows the loss and accuracy of both parts), and evaluates loss and accuracy on the straight
line through both end points, extended beyond them (its Fig. 9). The premise: the
small-batch solution generalizes better (about 1% higher test accuracy there); the finding:
the line shows no barrier between the two, so the better solution lies in the same basin,
reached through its flat directions although the small-batch run first climbed in loss.

CIFAR-10 is not available offline here; this runs on the shipped **MNIST** digits: a
balanced training set of ``n_train`` = 2,000 and **all 8,000 other digits as the test set**
(binomial standard error about 0.25%, so a 1% difference is several standard errors). The
network is the convnet ``models.small_cnn(1, 10, 28, channels=(8, 16), hidden=32)`` (26,698
parameters; the bare AlexNet made every pass over the data about 20 times more expensive).
The batch sizes are those of experiment 4 (``exp_batch_size.py``), 512 and 10: a ratio of 51,
where the large batch is a quarter of the data. (An earlier protocol, Fashion-MNIST with
4,000 training images and batches 128 then 16, did not meet the premise: SB - LB test
accuracy -0.43% and -0.16% on two seeds; neither did 512 then 16 at lr 0.1 (-0.86%), nor
running Part II to 100 epochs (-0.41%).)

Protocol (SGD, learning rate 0.05 throughout; settings in ``FULL``):

* Part I: batches of 512 from a seeded initialization until converged (below; at most 600
  epochs);
* Part II: from the Part I solution, batches of 10 for at least 10 epochs and until
  converged (at most 40 epochs);
* **converged** (:func:`is_converged`): full training accuracy >= 99.9% and full training
  loss <= 0.02 at a check (every 5 epochs);
* the curves of Fig. 8: full training and test loss and accuracy at every check of both
  parts, and the full training loss at a few early small-batch steps (the climb);
* the line of Fig. 9: training and test loss and accuracy at ``(1 - t) w_LB + t w_SB``, 21
  values of t in [-0.5, 1.5] (``geometry.line_profile``, whole sets);
* test accuracy of both ends with its binomial standard error ``sqrt(p (1 - p) / n)`` and
  the paired standard error of the difference (:func:`paired_difference`, same images); the
  premise is **met** when both ends converged and SB - LB exceeds two paired standard errors;
* the top 2 Hessian eigenvalues at both ends on the first 1,000 training images (Lanczos,
  tol 1e-3 relative to ||H||, residual bounds reported).

Quick mode (``QUICK``): 500 training and 1,000 test digits, batches of 250 then 5, the
convergence test relaxed to accuracy >= 99% and loss <= 0.05, at most 300 + 20 epochs, 9
line points, the top eigenvalue on 200 images.
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
        "check_epochs": 5, "max_large_epochs": 600,
        "min_small_epochs": 10, "max_small_epochs": 40, "max_loss": 0.02,
        "min_accuracy": 0.999, "points": 21, "hessian_samples": 1000, "k": 2}
QUICK = {"n_train": 500, "n_test": 1000, "large_batch": 250, "small_batch": 5,
         "check_epochs": 5, "max_large_epochs": 300,
         "min_small_epochs": 5, "max_small_epochs": 20, "max_loss": 0.05,
         "min_accuracy": 0.99, "points": 9, "hessian_samples": 200, "k": 1}


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


def run_part(model, loss_fn, data, test, *, batch, min_epochs, max_epochs, cfg, seed,
             epoch0, curve, early=None) -> dict:
    """SGD at ``LR`` with ``batch`` in chunks of ``check_epochs`` epochs until
    :func:`is_converged` (after ``min_epochs``) or ``max_epochs``; appends
    ``(epoch, train loss, train acc, test loss, test acc)`` to ``curve`` at every check and,
    with ``early``, the full training loss after each of those small-batch steps."""
    x, y = data
    n = len(x)
    per_epoch = max(n // batch, 1)
    steps_done, epochs = 0, 0.0
    if early:
        for target in early:
            train(model, loss_fn, x, y, steps=target - steps_done, lr=LR, batch_size=batch,
                  rng=seed + steps_done)
            steps_done = target
            early_loss = evaluate(model, loss_fn, x, y)
            curve.setdefault("early", []).append((target,) + early_loss)
    while True:
        target = steps_done + cfg["check_epochs"] * per_epoch
        train(model, loss_fn, x, y, steps=target - steps_done, lr=LR, batch_size=batch,
              rng=seed + steps_done)
        steps_done = target
        epochs = steps_done / per_epoch
        row = (epoch0 + epochs,) + evaluate(model, loss_fn, x, y) + evaluate(model, loss_fn, *test)
        curve["checks"].append(row)
        done = epochs >= min_epochs and is_converged(row[1], row[2], cfg)
        if done or epochs >= max_epochs:
            return {"steps": steps_done, "epochs": epochs, "converged": bool(done),
                    "train_loss": row[1], "train_accuracy": row[2], "test_loss": row[3],
                    "test_accuracy": row[4]}


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
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    cfg = QUICK if quick else FULL
    (x, y), (xt, yt) = ec.mnist_train_test(cfg["n_train"], cfg["n_test"])
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
    lb = run_part(model, loss_fn, (x, y), (xt, yt), batch=cfg["large_batch"], min_epochs=0,
                  max_epochs=cfg["max_large_epochs"], cfg=cfg, seed=seed, epoch0=0.0,
                  curve=curve_lb)
    w_lb = space.flat_parameters(model)
    correct_lb = correct_mask(model, xt, yt)
    echo(f"Part I, batch {cfg['large_batch']}: {lb['epochs']:.0f} epochs "
         f"({'converged' if lb['converged'] else 'NOT converged'}), train loss "
         f"{lb['train_loss']:.3g} acc {lb['train_accuracy']:.4f}, test acc "
         f"{lb['test_accuracy']:.4f} [{timer():.0f} s]")
    sb = run_part(model, loss_fn, (x, y), (xt, yt), batch=cfg["small_batch"],
                  min_epochs=cfg["min_small_epochs"], max_epochs=cfg["max_small_epochs"],
                  cfg=cfg, seed=seed + 1, epoch0=lb["epochs"], curve=curve_sb,
                  early=EARLY_SMALL_STEPS if not quick else EARLY_SMALL_STEPS[:6])
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
    echo(f"Part II, batch {cfg['small_batch']}: {sb['epochs']:.0f} epochs "
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
    with RunStore.create(paths["h5"], settings, overwrite=True) as writer:
        writer.write_arrays("line", profile.as_arrays())
        writer.write_arrays("curves", {"large_batch": np.asarray(curve_lb["checks"]),
                                       "small_batch": np.asarray(curve_sb["checks"]),
                                       "small_batch_early": np.asarray(early)})
        for name, h in hessian.items():
            writer.write_arrays(f"hessian_{name}", {"eigenvalues": h["top"],
                                                     "residual_bounds": h["residual_bounds"]})
    payload = {"experiment": NAME, "quick": quick, "settings": settings, "ends": ends,
               "curves": {"large_batch": curve_lb["checks"], "small_batch": curve_sb["checks"],
                          "small_batch_early": early,
                          "columns": ["epoch", "train_loss", "train_accuracy", "test_loss",
                                      "test_accuracy"],
                          "early_columns": ["small_batch_step", "train_loss",
                                            "train_accuracy"]},
               "line": profile.as_arrays(), "hessian": hessian, "summary": summary,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    plot(payload, paths["png"])
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload



def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``): the
    premise (SB - LB test accuracy, its paired z, both converged), the climb, the barrier on
    the segment and the ratio of the top Hessian eigenvalues."""
    p, s = d["summary"]["premise"], d["summary"]
    return {"test accuracy, LB": d["ends"]["LB"]["test_accuracy"],
            "test accuracy, SB": d["ends"]["SB"]["test_accuracy"],
            "SB - LB test accuracy": p["test_accuracy_difference_SB_minus_LB"],
            "z of SB - LB (paired)": p["z"], "both converged": float(p["both_converged"]),
            "climb: largest train loss early in Part II": s["climb_max_train_loss"],
            "barrier on the segment (train loss)": s["barrier_train_loss"],
            "lambda_max LB / SB": s["top_ratio_LB_over_SB"]}


def plot(d, path):
    """Top: the paper's Fig. 8 (loss and accuracy of Part I then Part II, by epoch) and the
    climb at the start of Part II; bottom: its Fig. 9 (loss and accuracy on the line)."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    lb, sb = np.asarray(d["curves"]["large_batch"]), np.asarray(d["curves"]["small_batch"])
    switch = lb[-1, 0]
    for rows, name, color in ((lb, f"Part I, batch {d['settings']['large_batch']}", "C0"),
                              (sb, f"Part II, batch {d['settings']['small_batch']}", "C1")):
        axes[0, 0].semilogy(rows[:, 0], rows[:, 1], "o-", ms=3, color=color,
                            label=f"{name}: train")
        axes[0, 0].semilogy(rows[:, 0], rows[:, 3], "s--", ms=3, color=color,
                            label=f"{name}: test")
        axes[0, 1].plot(rows[:, 0], rows[:, 2], "o-", ms=3, color=color, label=f"{name}: train")
        axes[0, 1].plot(rows[:, 0], rows[:, 4], "s--", ms=3, color=color, label=f"{name}: test")
    for ax in axes[0, :2]:
        ax.axvline(switch, color="k", lw=0.7, ls=":")
    axes[0, 0].set(title="Fig. 8: loss, Part I then Part II", xlabel="epoch",
                   ylabel="loss (log scale)")
    axes[0, 1].set(title="Fig. 8: accuracy, Part I then Part II", xlabel="epoch",
                   ylabel="accuracy")
    early = np.asarray(d["curves"]["small_batch_early"])
    if len(early):
        axes[0, 2].loglog(early[:, 0], early[:, 1], "o-", ms=4, color="C1",
                          label="after n small-batch steps")
        axes[0, 2].axhline(d["ends"]["LB"]["train_loss"], color="C0", ls="--",
                           label="Part I end (w_LB)")
    axes[0, 2].set(title="start of Part II: the climb", xlabel="small-batch step",
                   ylabel="full training loss (log scale)")
    t = np.asarray(d["line"]["t"])
    for name, style in (("train", "o-"), ("test", "s--")):
        axes[1, 0].semilogy(t, d["line"][f"loss_{name}"], style, ms=3, label=f"{name} loss")
        axes[1, 1].plot(t, d["line"][f"accuracy_{name}"], style, ms=3,
                        label=f"{name} accuracy")
    for ax in axes[1, :2]:
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.axvline(1, color="k", lw=0.6, ls=":")
    axes[1, 0].set(title="Fig. 9: loss on the line through both ends",
                   xlabel="t: w = (1 - t) w_LB + t w_SB", ylabel="loss (log scale)")
    axes[1, 1].set(title="Fig. 9: accuracy on the line", xlabel="t: w = (1 - t) w_LB + t w_SB",
                   ylabel="accuracy")
    names = list(d["ends"])
    acc = [d["ends"][n]["test_accuracy"] for n in names]
    se = [d["ends"][n]["test_accuracy_se"] for n in names]
    axes[1, 2].errorbar(range(len(names)), acc, yerr=se, fmt="o", capsize=6, ms=6)
    p = d["summary"]["premise"]
    axes[1, 2].set(title=f"test accuracy (n = {d['settings']['n_test']}, +- 1 binomial SE)\n"
                         f"SB - LB = {p['test_accuracy_difference_SB_minus_LB']:+.4f} +- "
                         f"{p['paired_se']:.4f} (paired SE)",
                   xticks=range(len(names)),
                   xticklabels=[f"w_{n}\nlambda_max {d['hessian'][n]['top'][0]:.3g}"
                                for n in names],
                   xlim=(-0.5, len(names) - 0.5), ylabel="test accuracy")
    ec.finish_figure(fig, axes.ravel(), path)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON (no recomputation)."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    plot(json.loads(paths["json"].read_text()), paths["png"])


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
