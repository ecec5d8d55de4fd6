"""Large and small batches at the same learning rate (Sagun et al. 2018, Sec. 3.3, Figs. 4
and 6).

A convnet of two conv(3x3)+ReLU+maxpool(2) blocks and two fully connected layers
(``models.small_cnn`` with channels (8, 16) and 32 hidden units: 26,698 parameters; the
default widths, 105,866 parameters, made every full-dataset Hessian-vector product take about
1.6 s on this shared 2-core machine, too slow for the solves below), on 1,000 real MNIST digits,
cross-entropy, trained from the same initialization by SGD with batches of 512 and of 10 at
the same learning rate (0.05), each **until converged** (the paper's premise is that both
runs converge): training stops at the first check (every 100 steps) where the full-data
training accuracy is at least 99.9% and the full-data training loss at most 0.02
(:func:`train_until_converged`; at most 6,000 steps, else the run is reported unconverged).
Epochs are ``steps * batch / n``. For both: the top 20 and bottom 10 eigenvalues of the
full-dataset Hessian (one Lanczos run, float32 products, tol 1e-3 relative to ||H||) and the
SLQ density deflated by them (5 probes x 40 steps).

The paper's claim: the large-batch solution has larger outliers (top eigenvalues) than the
small-batch one, the numbers of outliers agree, and both have small negative eigenvalues
(the small-batch run a little more of them).

The paper trains both batch sizes for the same number of iterations; the convergence rule
stops them at different step counts. So the run that converged first is then continued
(same batch size, same learning rate) to the other's step count and measured again
(``equal_iterations`` in the JSON): both states are reported. Quick mode: 200 digits, the same convergence
rule with checks every 50 steps (at most 1,500 steps), top 10 and bottom 5, 3 probes x 20
steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.storage.runstore import RunStore  # noqa: E402
from lanczos_hessian.examples.models import num_parameters, small_cnn  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "batch_size"
LR = 0.05
CHANNELS, HIDDEN = (8, 16), 32


MAX_LOSS, MIN_ACCURACY = 0.02, 0.999

def is_converged(loss: float, accuracy: float) -> bool:
    """The convergence rule of both runs: full-data training loss <= 0.02 and training
    accuracy >= 99.9%."""
    return loss <= MAX_LOSS and accuracy >= MIN_ACCURACY


def train_until_converged(model, loss_fn, x, y, *, batch: int, check_every: int,
                          max_steps: int, seed: int) -> dict:
    """SGD at ``LR`` with batches of ``batch`` until :func:`is_converged` holds at a check
    (every ``check_every`` steps, whole training set), or ``max_steps``. Returns the steps
    taken, the epochs (``steps * batch / n``), the minibatch loss history and the full-data
    (step, loss, accuracy) at every check."""
    history, checks, steps = [], [], 0
    while steps < max_steps:
        history += train(model, loss_fn, x, y, steps=check_every, lr=LR, batch_size=batch,
                         rng=seed + steps)
        steps += check_every
        loss, acc = evaluate(model, loss_fn, x, y)
        checks.append((steps, loss, acc))
        if is_converged(loss, acc):
            break
    return {"steps": steps, "epochs": steps * min(batch, len(x)) / len(x),
            "converged": is_converged(*checks[-1][1:]), "history": history, "checks": checks}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        n, check, max_steps, k_top, k_bottom, probes, lsteps = 200, 50, 1500, 10, 5, 3, 20
    else:
        n, check, max_steps, k_top, k_bottom, probes, lsteps = 1000, 100, 6000, 20, 10, 5, 40
    (x, y), (xt, yt) = ec.mnist_train_test(n, n)  # held-out digits disjoint from training
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": n,
             "channels": list(CHANNELS), "hidden": HIDDEN, "learning_rate": LR,
             "check_every": check, "max_steps": max_steps,
             "convergence": f"train loss <= {MAX_LOSS}, train accuracy >= {MIN_ACCURACY}",
             "batch_sizes": [512, 10], "paper": "Sagun et al. 2018, Sec. 3.3, Figs. 4 and 6"}
    runs, models = {}, {}
    spectra = dict(k_top=k_top, k_bottom=k_bottom, tol=1e-3, num_probes=probes,
                   num_steps=lsteps, seed=seed, batch_size=250)
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for batch in (512, 10):
            torch.manual_seed(seed)
            model = small_cnn(1, 10, 28, channels=CHANNELS, hidden=HIDDEN)
            loss_fn = torch.nn.CrossEntropyLoss()
            fit = train_until_converged(model, loss_fn, x, y, batch=batch, check_every=check,
                                        max_steps=max_steps, seed=seed)
            history = fit["history"]
            loss, acc = evaluate(model, loss_fn, x, y)
            test_loss, test_acc = evaluate(model, loss_fn, xt, yt)
            writer.write_arrays(f"batch{batch}", {"training_loss": np.asarray(history)})
            r = ec.eigs_and_density(model, loss_fn, (x, y), k_top=k_top, k_bottom=k_bottom,
                                    tol=1e-3, num_probes=probes, num_steps=lsteps, seed=seed,
                                    batch_size=250, writer=writer, run=f"batch{batch}")
            models[batch] = (model, loss_fn)
            runs[batch] = {"batch_size": batch, "num_params": num_parameters(model),
                           "steps": fit["steps"], "epochs": fit["epochs"],
                           "train_converged": fit["converged"], "checks": fit["checks"],
                           "train_loss": loss, "train_accuracy": acc, "test_loss": test_loss,
                           "test_accuracy": test_acc, "top": r["top"], "bottom": r["bottom"],
                           "outliers": ec.counts_dict(r["counts"]),
                           "mass_below_1e-2_lmax": r["mass_below"],
                           "mass_below_1e-3_lmax": r["mass_below_small"],
                           "converged": r["converged"], "num_matvecs": r["num_matvecs"],
                           "slq": r["slq"]}
            echo(f"batch {batch:3d}: {fit['steps']} steps ({fit['epochs']:.1f} epochs, "
                 f"{'converged' if fit['converged'] else 'NOT converged'}): "
                 f"train loss {loss:.3g} acc {acc:.3f}, test acc "
                 f"{test_acc:.3f} | "
                 f"top-3 {np.array2string(r['top'][:3], precision=3)} | bottom-3 "
                 f"{np.array2string(r['bottom'][:3], precision=4)} | gap outliers "
                 f"{r['counts'].gap} | mass < -1e-3 lmax {r['mass_below_small']:.4f} "
                 f"[{timer():.0f} s]")
        equal = equal_iterations(runs, models, (x, y), (xt, yt), spectra, writer, echo)
    large, small = runs[512], runs[10]
    summary = {"top1_ratio_large_over_small": large["top"][0] / small["top"][0],
               "top10_ratio_large_over_small": large["top"][:10] / small["top"][:10],
               "bottom1_ratio_large_over_small": large["bottom"][0] / small["bottom"][0]}
    echo(f"large/small: top-1 {summary['top1_ratio_large_over_small']:.2f}, top-10 "
         f"{np.array2string(summary['top10_ratio_large_over_small'], precision=2)}, "
         f"bottom-1 {summary['bottom1_ratio_large_over_small']:.2f}")
    plot(runs, paths["png"], equal)
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "runs": {str(b): {**r, "slq": ec.quadrature_record(r["slq"])}
                        for b, r in runs.items()},
               "equal_iterations": {**equal, "slq": ec.quadrature_record(equal["slq"])},
               "summary": summary, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload

def equal_iterations(runs, models, data, held_out, spectra, writer, echo) -> dict:
    """Continue the run that converged in fewer steps, same batch and learning rate, to the
    other's step count (the paper's equal iterations), and measure its spectrum again."""
    x, y = data
    short = min(runs, key=lambda b: runs[b]["steps"])
    target = max(r["steps"] for r in runs.values())
    model, loss_fn = models[short]
    extra = target - runs[short]["steps"]
    if extra:
        train(model, loss_fn, x, y, steps=extra, lr=LR, batch_size=short, rng=10_000 + extra)
    loss, acc = evaluate(model, loss_fn, x, y)
    test_loss, test_acc = evaluate(model, loss_fn, *held_out)
    r = ec.eigs_and_density(model, loss_fn, data, writer=writer, run=f"batch{short}_equal",
                            **spectra)
    out = {"batch_size": short, "steps": target, "epochs": target * short / len(x),
           "continued_steps": extra, "train_loss": loss, "train_accuracy": acc,
           "test_accuracy": test_acc, "top": r["top"], "bottom": r["bottom"],
           "outliers": ec.counts_dict(r["counts"]), "converged": r["converged"], "slq": r["slq"]}
    other = runs[max(runs, key=lambda b: runs[b]["steps"])]
    out["top1_ratio_large_over_small"] = (out["top"][0] / other["top"][0] if short == 512
                                          else other["top"][0] / out["top"][0])
    echo(f"batch {short} continued to {target} steps: train loss {loss:.3g}, test acc "
         f"{test_acc:.3f}, top-3 {np.array2string(r['top'][:3], precision=3)}, bottom-3 "
         f"{np.array2string(r['bottom'][:3], precision=4)}; lambda_1 512 / 10 at equal steps "
         f"{out['top1_ratio_large_over_small']:.2f}")
    return out


def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``): both
    runs converged, lambda_1 of each batch size and their ratio, the smallest top-10 ratio,
    the ratio-rule outlier counts, the bottom eigenvalues relative to lambda_1, the test
    accuracies."""
    lb, sb = d["runs"]["512"], d["runs"]["10"]
    return {"both converged": float(lb["train_converged"] and sb["train_converged"]),
            "lambda_1, batch 512": lb["top"][0], "lambda_1, batch 10": sb["top"][0],
            "lambda_1 ratio 512 / 10": lb["top"][0] / sb["top"][0],
            "smallest top-10 ratio 512 / 10": float(np.min(
                np.asarray(lb["top"][:10]) / np.asarray(sb["top"][:10]))),
            "outliers (ratio rule), batch 512": lb["outliers"]["ratio"],
            "outliers (ratio rule), batch 10": sb["outliers"]["ratio"],
            "bottom / lambda_1, batch 512": lb["bottom"][0] / lb["top"][0],
            "bottom / lambda_1, batch 10": sb["bottom"][0] / sb["top"][0],
            "test accuracy, batch 512": lb["test_accuracy"],
            "test accuracy, batch 10": sb["test_accuracy"],
            "test accuracy 10 - 512": sb["test_accuracy"] - lb["test_accuracy"]}


def plot(runs, path, equal=None):
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    if equal:
        j = list(runs).index(equal["batch_size"])
        label = (f"batch {equal['batch_size']} continued to {equal['steps']} steps "
                 f"({equal['epochs']:.0f} ep.)")
        axes[0].plot(np.arange(1, len(equal["top"]) + 1), equal["top"], "s--", ms=3, mfc="none",
                     color=f"C{j}", label=label)
        axes[1].plot(np.arange(1, len(equal["bottom"]) + 1), equal["bottom"], "s--", ms=3,
                     mfc="none", color=f"C{j}", label=label)
        tails(axes[2], equal, f"C{j}", f"batch {equal['batch_size']}, {equal['steps']} steps",
              ls="--")
    for i, (batch, r) in enumerate(runs.items()):
        label = f"batch {batch}: {r['steps']} steps, {r['epochs']:.0f} ep."
        axes[0].plot(np.arange(1, len(r["top"]) + 1), r["top"], "o-", ms=3, color=f"C{i}",
                     label=label)
        axes[1].plot(np.arange(1, len(r["bottom"]) + 1), r["bottom"], "o-", ms=3,
                     color=f"C{i}", label=label)
        tails(axes[2], r, f"C{i}", f"batch {batch}")
    axes[0].set(title="top eigenvalues (Fig. 4)", xlabel="rank", ylabel="eigenvalue (log scale)",
                yscale="log")
    axes[1].set(title="bottom eigenvalues (Fig. 6)", xlabel="rank from the bottom",
                ylabel="eigenvalue")
    ec.tails_axis(axes[2], "fraction of eigenvalues above t (lines), below -t (dotted)\n"
                           "no kernel; band: Gauss brackets (99.7%); ticks: Lanczos")
    ec.finish_figure(fig, axes, path)


def tails(ax, r, color, label, ls="-"):
    """The right panel for one run (:func:`expcommon.draw_tails`, Lanczos ticks of the
    continued run a row lower)."""
    ec.draw_tails(ax, r["slq"], float(r["top"][0]), np.concatenate([r["top"], r["bottom"]]),
                  color, label, ls, tick_y=2e-5 if ls == "-" else 1.3e-5)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON alone (its Gauss rules; no recomputation)."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    payload = json.loads(paths["json"].read_text())

    def arrays(r):
        return {**r, "top": np.asarray(r["top"]), "bottom": np.asarray(r["bottom"]),
                "slq": ec.quadrature_from_record(r["slq"])}

    plot({int(b): arrays(r) for b, r in payload["runs"].items()}, paths["png"],
         arrays(payload["equal_iterations"]))


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
