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
for 400 steps, tracked every 50 steps (k = 10): the overlap next to ``lr * lambda_max``. A run
whose full training loss ends more than 1.5 times above its minimum along the run is labelled
*unstable* (:func:`is_unstable`) and kept out of any comparison of overlap with
``lr * lambda_max``: at lr 1.0 the loss climbs back (0.24 -> 0.71), the run is not training.

Part D (the early transient of curvature; Fort and Ganguli 2019 report that the top
eigenvalues first rise early in training, then fall). Part A's network and data, SGD (batch
32) and GD at lr 0.1, seeds 0, 1, 2 (initialization and batch order): lambda_1 ... lambda_10
(C = 10) of the full-data Hessian every 5 steps over the first 200 steps, then once at step
400. Per run: the step of the peak of lambda_1, the peak over the initial value and over the
final value (:func:`transient`); over seeds: median and range.

The claims: during training the gradient lies mostly in the top-C eigenspace (Gur-Ari et al.
report about 90% and more after a short initial phase), and the number of large eigenvalues
is the number of classes C.

Quick mode: part A on 300 digits with an MLP 784-32-10 for 150 steps (k = 10, no cold-start
comparison), part B with C = 2 and 5 for 200 steps, part C at lr 0.1 and 1.0 for 100 steps,
part D on 300 digits, seeds 0-2, every 5 steps up to step 60, then once at step 150.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.examples.datasets import load_mnist  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402
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
        ratios = [count_outliers(t).ratio for t in tops]
        cumulative = overlaps_by_size(a["overlap_parts"])
        row = {"C": C, "steps": a["step"], "loss": a["loss"], "gap_counts": gaps,
               "ratio_counts": ratios,
               "final_loss": loss,
               "final_accuracy": acc, "top_final": tops[-1],
               "overlap_curve_final": cumulative[-1],
               "overlap_curve_mean": cumulative.mean(0),
               "overlap_top_C_minus_1": cumulative[:, C - 2] if C > 1 else np.zeros(len(gaps)),
               "overlap_top_C": cumulative[:, C - 1], "overlap_top_2C": cumulative[:, 2 * C - 1]}
        out.append(row)
        echo(f"  [B] C={C:2d}: loss {loss:.3g} acc {acc:.3f}; gap outliers per measurement "
             f"{gaps}, ratio rule {ratios}; mean overlap top-(C-1) {row['overlap_top_C_minus_1'].mean():.3f}, "
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
               "lr_times_top": lr * a["eigenvalues"][:, -1], "overlap_top10": a["overlap"],
               "unstable": is_unstable(a["loss"])}
        out.append(row)
        echo(f"  [C] lr {lr:g}{' (UNSTABLE: the loss climbs back)' if row['unstable'] else ''}: lr * lambda_max {np.array2string(row['lr_times_top'], precision=2)}"
             f"; overlap top-10 {np.array2string(row['overlap_top10'], precision=2)}; loss "
             f"{np.array2string(row['loss'], precision=3)}")
    return out


UNSTABLE_FACTOR = 1.5


def is_unstable(losses, factor: float = UNSTABLE_FACTOR) -> bool:
    """True when the last full training loss exceeds ``factor`` times the smallest one of
    the run: the loss climbs back, the step size is past what the run can follow."""
    losses = np.asarray(losses, dtype=np.float64)
    return bool(losses[-1] > factor * losses.min())


def transient(steps, values) -> dict:
    """The early rise of a curvature series ``values`` (e.g. lambda_1) measured at ``steps``.

    ``peak_step`` is the step of the largest value; ``rise`` = max / value at the first step
    (> 1 when the curvature first grows) and ``fall`` = max / value at the last step (> 1
    when it then decreases). A transient is a rise and a fall together."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    i = int(np.argmax(values))
    return {"peak_step": int(steps[i]), "peak": float(values[i]), "initial": float(values[0]),
            "final": float(values[-1]), "rise": float(values[i] / values[0]),
            "fall": float(values[i] / values[-1])}


def spread(values) -> dict:
    """Median, minimum and maximum over seeds."""
    values = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(values)), "min": float(values.min()),
            "max": float(values.max())}


def part_d(writer, quick, seeds, echo) -> dict:
    """lambda_1..lambda_10 every 5 steps early in training, SGD and GD, over seeds."""
    n, window, final, every, k = (300, 60, 150, 5, 10) if quick else (1000, 200, 400, 5, 10)
    x, y = load_mnist(n, flatten=True)
    runs = {"SGD": [], "GD": []}
    for label, batch in (("SGD", 32), ("GD", None)):
        for seed in seeds:
            torch.manual_seed(seed)
            model = mlp([784, 32, 10], "relu")
            loss_fn = torch.nn.CrossEntropyLoss()
            tracker = SpectrumTracker(model, loss_fn, (x, y), k=k, every=every, tol=1e-4,
                                      batch_size=n, overlap=False, writer=writer,
                                      group=f"transient_{label}_seed{seed}", rng=seed)
            tracker.measure(0)
            history = train(model, loss_fn, x, y, steps=window, lr=LR, batch_size=batch,
                            rng=seed, callback=tracker)
            history += train(model, loss_fn, x, y, steps=final - window, lr=LR,
                             batch_size=batch, rng=seed + 1000)
            tracker.measure(final)
            tracker.close()
            a = tracker.as_arrays()
            top = a["eigenvalues"][:, ::-1]
            early = a["step"] <= window
            row = {"seed": seed, "step": a["step"], "loss": a["loss"], "top": top,
                   "lambda_1": transient(a["step"], top[:, 0]),
                   "lambda_C": transient(a["step"], top[:, k - 1]),
                   "lambda_1_window": transient(a["step"][early], top[early, 0])}
            runs[label].append(row)
            echo(f"  [D] {label} seed {seed}: lambda_1 {row['lambda_1']['initial']:.3g} -> peak "
                 f"{row['lambda_1']['peak']:.3g} at step {row['lambda_1']['peak_step']} -> "
                 f"{row['lambda_1']['final']:.3g} (step {final}); lambda_10 "
                 f"{row['lambda_C']['initial']:.3g} -> {row['lambda_C']['peak']:.3g} at step "
                 f"{row['lambda_C']['peak_step']} -> {row['lambda_C']['final']:.3g}")
    return {"settings": {"num_samples": n, "window": window, "final_step": final,
                         "every": every, "k": k, "seeds": list(seeds), "learning_rate": LR,
                         "sgd_batch": 32},
            "runs": runs, "summary": transient_summary(runs, seeds, echo)}


def transient_summary(runs: dict, seeds, echo) -> dict:
    """Median and range over seeds of the peak step, rise and fall of lambda_1 and lambda_C,
    for SGD and GD (``runs`` as part D returns them)."""
    summary = {}
    for label, rows in runs.items():
        summary[label] = {
            f"{name}_{key}": spread([r[name][key] for r in rows])
            for name in ("lambda_1", "lambda_C") for key in ("peak_step", "rise", "fall")}
        s1 = summary[label]
        echo(f"  [D] {label} over seeds {list(seeds)}: lambda_1 peak step median "
             f"{s1['lambda_1_peak_step']['median']:.0f} (range "
             f"{s1['lambda_1_peak_step']['min']:.0f}-{s1['lambda_1_peak_step']['max']:.0f}), "
             f"rise x{s1['lambda_1_rise']['median']:.2f} ({s1['lambda_1_rise']['min']:.2f}-"
             f"{s1['lambda_1_rise']['max']:.2f}), fall x{s1['lambda_1_fall']['median']:.2f} "
             f"({s1['lambda_1_fall']['min']:.2f}-{s1['lambda_1_fall']['max']:.2f})")
    return summary


def extend_transient(seeds, out_dir=None, quick: bool = False, echo=ec.log) -> dict:
    """Part D for more ``seeds``, added to the written JSON (the other parts untouched):
    their tracking goes to ``exp_fort_ganguli_transient.h5`` beside it, the summary is taken
    again over all seeds and the figure redrawn."""
    import json

    ec.setup()
    paths = ec.out_paths(NAME, out_dir, quick)
    payload = json.loads(paths["json"].read_text())
    d = payload["transient"]
    seeds = [s for s in seeds if s not in d["settings"]["seeds"]]
    extra_path = paths["h5"].with_name(f"exp_{NAME}_transient.h5")
    attrs = {"experiment": NAME, "quick": quick, "parts": "D", "seeds": seeds}
    with RunStore.create(extra_path, attrs, overwrite=True) as writer:
        more = part_d(writer, quick, seeds, echo)
    for label in d["runs"]:
        d["runs"][label] += more["runs"][label]
    d["settings"]["seeds"] = d["settings"]["seeds"] + seeds
    d["summary"] = transient_summary(d["runs"], d["settings"]["seeds"], echo)
    ec.write_json(paths["json"], payload)
    replot(out_dir, quick)
    return payload


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    """All four parts; writes the HDF5 file, the JSON and the figure."""
    payload = run_parts(quick, out_dir, seed, echo, transient=True)
    paths = ec.out_paths(NAME, out_dir, quick)
    plot(*(payload[key] for key in ("tracking", "classes", "learning_rates", "transient")),
         paths["png"])
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {payload['seconds']:.0f} s")
    return payload


def seed_run(seed: int, out_dir, echo=ec.log) -> dict:
    """Parts A-C (full mode) for one more seed, for the seed spread of
    ``scripts/exp_seeds.py``: the payload of :func:`main` without part D (which already
    runs over three seeds) and without the figure."""
    return run_parts(False, out_dir, seed, echo, transient=False)


def run_parts(quick: bool, out_dir, seed: int, echo, transient: bool) -> dict:
    """Parts A-C, and part D over seeds ``seed .. seed + 2`` when ``transient``; writes the
    HDF5 file and the JSON payload (returned)."""
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "learning_rate": LR,
             "parts": "A-D" if transient else "A-C",
             "paper": "Fort and Ganguli 2019; Gur-Ari, Roberts and Dyer 2018"}
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        a = part_a(writer, quick, seed, echo)
        b = part_b(writer, quick, seed, echo)
        c = part_c(writer, quick, seed, echo)
        d = part_d(writer, quick, (seed, seed + 1, seed + 2), echo) if transient else None
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "tracking": {label: {key: v for key, v in r.items()
                                    if key != "train_loss_history"} for label, r in a.items()},
               "classes": b, "learning_rates": c}
    if transient:
        payload["transient"] = d
    payload.update(seconds=timer(), cpu_seconds=timer.cpu())
    ec.write_json(paths["json"], payload)
    return payload


def headline(d: dict) -> dict:
    """The numbers the claims of parts A-C rest on, for the seed spread
    (``scripts/exp_seeds.py``): A, the median (SGD) and largest (GD) overlap of the gradient
    with the top-10 eigenspace from step 100 on; B, the median ratio-rule outlier count over
    the second half of training for each C; C, the median overlap and ``lr lambda_max`` for
    each learning rate, and whether the run is unstable (:func:`is_unstable`)."""
    out = {}
    for label, reduce in (("SGD", np.median), ("GD", np.max)):
        r = d["tracking"][label]
        late = np.asarray(r["step"]) >= 100
        name = "median" if label == "SGD" else "largest"
        out[f"A {label}: {name} overlap with top-10, step >= 100"] = float(
            reduce(np.asarray(r["overlap_top10"])[late]))
    for row in d["classes"]:
        counts = np.asarray(row["ratio_counts"])
        out[f"B C = {row['C']}: ratio-rule count, 2nd half (median)"] = float(
            np.median(counts[len(counts) // 2:]))
    for row in d["learning_rates"]:
        out[f"C lr {row['lr']:g}: median overlap with top-10"] = float(
            np.median(row["overlap_top10"]))
        out[f"C lr {row['lr']:g}: median lr lambda_max"] = float(np.median(row["lr_times_top"]))
        out[f"C lr {row['lr']:g}: unstable"] = float(row["unstable"])
    return out


def plot(a, b, c, d, path):
    """Nine panels: A (overlap, eigenvalues), D (transient), B (overlap, loss), C (overlap,
    lr * lambda_max), each quantity on its own labelled axis."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(15, 12))
    axes = axes.ravel()
    for i, (label, r) in enumerate(a.items()):
        axes[0].plot(r["step"], r["overlap_top10"], "o-", ms=3, color=f"C{i}",
                     label=f"{label}: top-10 eigenspace")
        axes[0].plot(r["step"], r["overlap_top1"], ":", color=f"C{i}", label=f"{label}: top-1")
        top = np.asarray(r["top"])
        axes[1].semilogy(r["step"], top[:, 0], "o-", ms=3, color=f"C{i}",
                         label=f"{label}: lambda_1")
        axes[1].semilogy(r["step"], top[:, 9], "s--", ms=2, color=f"C{i}",
                         label=f"{label}: lambda_10")
    axes[1].axhline(2 / LR, color="k", lw=0.7, ls="--", label="2 / learning rate")
    axes[0].set(title="A. MNIST 1k, MLP 784-32-10: ||P g||^2 / ||g||^2", xlabel="step",
                ylabel="fraction of the gradient", ylim=(0, 1.02))
    axes[1].set(title="A. top Hessian eigenvalues", xlabel="step", ylabel="eigenvalue")
    window = d["settings"]["window"]
    for i, label in enumerate(("SGD", "GD")):
        rows = d["runs"][label]
        others = ", ".join(str(r["seed"]) for r in rows[1:])
        for j, r in enumerate(rows):  # the first seed bold, the others thin
            early = np.asarray(r["step"]) <= window
            kw = dict(color=f"C{i}", alpha=0.95 if j == 0 else 0.5, lw=1.8 if j == 0 else 0.8)
            name = (f"{label}, seed {r['seed']}" if j == 0
                    else f"{label}, seeds {others}" if j == 1 else None)
            axes[2].plot(np.asarray(r["step"])[early], np.asarray(r["top"])[early, 0],
                         label=name, **kw)
            axes[5].plot(np.asarray(r["step"])[early], np.asarray(r["top"])[early, -1],
                         label=name, **kw)
    axes[2].set(title=f"D. transient: lambda_1, first {window} steps (lr {LR:g})",
                xlabel="step", ylabel="lambda_1")
    axes[5].set(title=f"D. transient: lambda_10 (= lambda_C), first {window} steps",
                xlabel="step", ylabel="lambda_10")
    for j, row in enumerate(b):
        m = np.arange(1, len(row["overlap_curve_mean"]) + 1)
        half = len(row["gap_counts"]) // 2
        gap, ratio = row["gap_counts"][half:], row["ratio_counts"][half:]
        axes[3].plot(m / row["C"], row["overlap_curve_mean"], "-", color=f"C{j}",
                     label=f"C={row['C']}: outliers, 2nd half: gap {min(gap)}-{max(gap)}, "
                           f"ratio {min(ratio)}-{max(ratio)}")
        axes[4].plot(row["steps"], row["overlap_top_C"], "o-", ms=3, color=f"C{j}",
                     label=f"C={row['C']}")
        axes[6].semilogy(row["steps"], row["loss"], "o-", ms=3, color=f"C{j}",
                         label=f"C={row['C']}")
    axes[3].axvline(1.0, color="k", lw=0.7, ls=":")
    axes[3].set(title="B. clusters, SGD: overlap with top-m space (mean over run)",
                xlabel="m / C", ylabel="fraction of the gradient", ylim=(0, 1.02))
    axes[4].set(title="B. clusters, SGD: overlap with the top-C eigenspace", xlabel="step",
                ylabel="fraction of the gradient", ylim=(0, 1.02))
    axes[6].set(title="B. clusters, SGD: full training loss", xlabel="step",
                ylabel="training loss (log scale)")
    for j, row in enumerate(c):
        tag = " (unstable: loss climbs)" if row["unstable"] else ""
        style = "x--" if row["unstable"] else "o-"
        axes[7].plot(row["steps"], row["overlap_top10"], style, ms=4, color=f"C{j}",
                     label=f"lr {row['lr']:g}{tag}")
        axes[8].semilogy(row["steps"], row["lr_times_top"], style, ms=4, color=f"C{j}",
                         label=f"lr {row['lr']:g}{tag}")
    axes[7].set(title="C. clusters C=10, SGD: overlap with the top-10 space", xlabel="step",
                ylabel="fraction of the gradient", ylim=(0, 1.02))
    axes[8].axhline(2.0, color="k", lw=0.7, ls="--", label="lr * lambda_max = 2")
    axes[8].set(title="C. lr * lambda_max along the same runs", xlabel="step",
                ylabel="lr * lambda_max (log scale)")
    ec.finish_figure(fig, axes, path)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON (no recomputation)."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    data = json.loads(paths["json"].read_text())
    plot(data["tracking"], data["classes"], data["learning_rates"], data["transient"],
         paths["png"])


if __name__ == "__main__":
    if "--transient-seeds" in sys.argv:  # part D only, for more seeds: --transient-seeds 3 4
        at = sys.argv.index("--transient-seeds")
        extend_transient([int(v) for v in sys.argv[at + 1:]], quick="--quick" in sys.argv[:at])
    else:
        ec.command_line(__doc__, main, replot)
