"""Outliers of the Hessian spectrum against the number of classes, over seeds (Sagun et al.
2018, Sec. 3.1, Table 1).

Inputs from k Gaussian clusters in 100 dimensions (``synthetic.gaussian_clusters``: class means
``N(0, I)``, samples ``mean + sqrt(cov) * N(0, I)``, then standardized per feature), 1,000
samples, an MLP 100-30-30-k, softmax cross-entropy (mean). Table 1's rows are (k, algorithm
GD/SGD, non-linearity tanh/ReLU, input covariance 1/10); here k in {2, 5, 10, 20, 50}, every
combination (40 rows), ``SEEDS`` seeds per row (the seed draws the data, the initialization
and the SGD batches).

Training regime, chosen for the curvature scale: the paper's mean eigenvalue ``tr(H) / M`` for
k = 10, GD, ReLU, covariance 1 is 3.04e-5 (Table 1). With our earlier protocol (lr 0.1, 1,000
steps) it was 1.4e-4; the whole spectrum shrinks about as 1 / (lr x steps) once the data are
fitted while its shape (``lambda_i / lambda_1``) barely moves, so we train for ``lr x steps =
500``: lr 0.5 for 1,000 steps (GD full batch; SGD batches of 100, i.e. 100 epochs), which
puts that cell at ~2.5e-5. The mean eigenvalue is measured for every network by Hutchinson's
estimator (``hutchinson_trace``, 30 Rademacher probes, its standard error recorded).

Counts (``outliers.count_outliers``) among the top ``K = max(2k, 20)`` eigenvalues by Lanczos
(float64 Hessian, tol 1e-6 relative to ||H||: eigenvalue errors <= r^2 / gap, far below
the steps counted; residual bounds recorded): gap, ratio, elbow,
below-top (the ratio rule over ranks >= 2, robust to a dominant lambda_1) and, where the
paper's cutoff is known, the threshold rule; plus ``step_after(top, k - 1)``, the size of the
drop after the (k-1)-th eigenvalue. Every row reports each rule's median and range over the
seeds.

Also in the full mode: the demo's own settings (k = 10, ReLU, GD, covariance 1, lr 0.1, 2,000
steps, ``problems.clusters_mlp``) over seeds 0-9, and the training length at fixed seeds (the
spectrum's shape against its scale). Quick mode (<= 30 s): ReLU, GD, covariance 10,
k in {5, 10}, 3 seeds, 300 steps, tol 1e-6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator, lanczos_eigsh  # noqa: E402
from lanczos_hessian.analysis.outliers import count_outliers, step_after  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.problems import clusters_mlp  # noqa: E402
from lanczos_hessian.examples.synthetic import gaussian_clusters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402
from lanczos_hessian.linalg.trace import hutchinson_trace  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "outliers_vs_classes"
CLASSES = (2, 5, 10, 20, 50)
SEEDS = 5
LR, STEPS, SGD_BATCH, NUM_EXAMPLES = 0.5, 1000, 100, 1000
TOL, TRACE_PROBES = 1e-6, 30
QUICK = {"classes": (5, 10), "seeds": 3, "steps": 300, "tol": 1e-6}
DEMO = {"num_classes": 10, "num_examples": 1000, "steps": 2000, "lr": 0.1, "seeds": 10}
LENGTHS = (100, 300, 1000, 3000)  # steps at LR, the training-length check

#: Table 1 cells of the paper that this repository has transcribed, by (k, algorithm,
#: non-linearity, covariance); ``None`` covariance: the source does not say which. Source:
#: issue 13 of this repository (which quotes the paper); the other cells of the paper's table
#: (its 19 rows, heuristic counts and cutoffs) could not be read here and are left blank
#: rather than guessed. See docs/RESULTS.md, section 1.
PAPER = [
    {"k": 10, "optimizer": "GD", "activation": "relu", "scale": 1.0, "mean_eigenvalue": 3.04e-5},
    {"k": 10, "optimizer": "SGD", "activation": "relu", "scale": 1.0, "gap": 2},
    {"k": 10, "optimizer": "SGD", "activation": "relu", "scale": 10.0, "gap": 2},
    {"k": 20, "optimizer": "GD", "activation": "relu", "scale": None, "gap": 4},
]


def top_count(k: int) -> int:
    return max(2 * k, 20)


def paper_cells(k, optimizer, activation, scale) -> dict:
    """The transcribed paper cells of one row (``PAPER``), ``scale=None`` entries included."""
    out = {}
    for cell in PAPER:
        if (cell["k"], cell["optimizer"], cell["activation"]) == (k, optimizer, activation) \
                and cell["scale"] in (scale, None):
            out.update({key: v for key, v in cell.items()
                        if key not in ("k", "optimizer", "activation", "scale")})
            if cell["scale"] is None:
                out["scale_unstated"] = True
    return out


def clusters(k, scale, seed):
    return gaussian_clusters(k, NUM_EXAMPLES, dim=100, scale=scale, rng=seed)


def new_network(k, activation, seed):
    torch.manual_seed(seed)
    return mlp([100, 30, 30, k], activation), torch.nn.CrossEntropyLoss()


def train_network(k, activation, optimizer, scale, seed, steps=STEPS, lr=LR):
    """One row's network for one seed: data, initialization and batches all from ``seed``."""
    x, y = clusters(k, scale, seed)
    model, loss_fn = new_network(k, activation, seed)
    batch = None if optimizer == "GD" else SGD_BATCH
    train(model, loss_fn, x, y, steps=steps, lr=lr, batch_size=batch, rng=seed)
    return model, loss_fn, (x, y)


def measure(model, loss_fn, data, k, seed, tol=TOL, cutoff=None) -> dict:
    """Loss, accuracy, top K by Lanczos, ``tr(H) / M`` by Hutchinson, every count."""
    x, y = data
    loss, accuracy = evaluate(model, loss_fn, x, y)
    op = HessianOperator(ec.float64_copy(model), loss_fn, (x.double(), y), batch_size=len(x))
    result = lanczos_eigsh(op, k=top_count(k), which="LA", tol=tol, rng=seed)
    order = np.argsort(result.eigenvalues)[::-1]
    top = result.eigenvalues[order]
    trace = hutchinson_trace(op, TRACE_PROBES, rng=seed)
    params = num_parameters(model)
    counts = count_outliers(top, cutoff=cutoff)
    return {"num_params": params, "train_loss": loss, "train_accuracy": accuracy,
            **counts.as_dict(), "step_after_k_minus_1": step_after(top, k - 1),
            "mean_eigenvalue": trace.value / params,
            "mean_eigenvalue_stderr": trace.stderr / params,
            "converged": bool(result.all_converged),
            "max_residual_bound": float(result.residual_bounds.max()),
            "top": top}


def spread(values) -> dict:
    """Median, min, max of a per-seed list (NaN-free input)."""
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def aggregate(config, networks) -> dict:
    """One table row: per-seed values, then median and range of every count."""
    k, act, opt, scale = config
    row = {"k": k, "activation": act, "optimizer": opt, "scale": scale,
           "seeds": [n["seed"] for n in networks], "paper": paper_cells(k, opt, act, scale),
           "converged": all(n["converged"] for n in networks),
           "train_accuracy": min(n["train_accuracy"] for n in networks)}
    for key in ("gap", "ratio", "elbow", "below_top", "step_after_k_minus_1",
                "mean_eigenvalue", "train_loss"):
        values = [n[key] for n in networks]
        row[key] = {"per_seed": values, **spread(values)}
    if all("threshold" in n for n in networks):
        values = [n["threshold"] for n in networks]
        row["threshold"] = {"per_seed": values, **spread(values)}
    row["all_k_minus_1"] = {rule: all(n[rule] == k - 1 for n in networks)
                            for rule in ("gap", "ratio", "elbow", "below_top")}
    return row


def configs_of(quick):
    if quick:
        return [(k, "relu", "GD", 10.0) for k in QUICK["classes"]]
    return [(k, act, opt, scale) for scale in (1.0, 10.0) for opt in ("GD", "SGD")
            for act in ("tanh", "relu") for k in CLASSES]


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    seeds = list(range(seed, seed + (QUICK["seeds"] if quick else SEEDS)))
    steps, tol = (QUICK["steps"], QUICK["tol"]) if quick else (STEPS, TOL)
    attrs = {"experiment": NAME, "quick": quick, "seeds": seeds, "learning_rate": LR,
             "steps": steps, "sgd_batch": SGD_BATCH, "num_samples": NUM_EXAMPLES, "tol": tol,
             "trace_probes": TRACE_PROBES,
             "paper": "Sagun, Evci, Guney, Dauphin, Bottou 2018, Sec. 3.1, Table 1",
             "method": "lanczos top K = max(2k, 20); tr(H)/M by Hutchinson"}
    rows, networks = [], []
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for config in configs_of(quick):
            k, act, opt, scale = config
            cutoff = paper_cells(k, opt, act, scale).get("cutoff")
            group = []
            for s in seeds:
                model, loss_fn, data = train_network(k, act, opt, scale, s, steps=steps)
                net = {"k": k, "activation": act, "optimizer": opt, "scale": scale, "seed": s,
                       **measure(model, loss_fn, data, k, s, tol=tol, cutoff=cutoff)}
                group.append(net)
                name = f"runs/k{k}_{act}_{opt}_scale{scale:g}_seed{s}"
                writer.write_arrays(name, {"top_eigenvalues": net["top"]})
                writer.set_attrs(name, {key: v for key, v in net.items() if key != "top"})
            networks.extend(group)
            row = aggregate(config, group)
            rows.append(row)
            echo(row_line(row) + f" [{timer():.0f} s]")
        demo = {} if quick else demo_over_seeds(writer, echo)
        length = {} if quick else training_length(writer, echo)
    table = table_text(rows)
    echo(table)
    summary = summarize(rows)
    echo(summary["text"])
    payload = {"experiment": NAME, "quick": quick, "seeds": seeds, "settings": attrs,
               "paper_cells": PAPER, "rows": rows, "networks": networks, "table": table,
               "summary": summary, "demo_seeds": demo, "training_length": length,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    plot(rows, networks, demo, paths["png"], quick)
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def demo_over_seeds(writer, echo) -> dict:
    """The package demo's network (``clusters_mlp`` at the demo's defaults) for seeds 0-9."""
    k = DEMO["num_classes"]
    per_seed = []
    for s in range(DEMO["seeds"]):
        problem = clusters_mlp(k, DEMO["num_examples"], steps=DEMO["steps"], lr=DEMO["lr"],
                               seed=s)
        net = {"seed": s, **measure(problem.model, problem.loss_fn, problem.data, k, s)}
        top = net["top"]
        ratios = top[:-1] / top[1:]
        net["step_after_k_minus_1_is_largest_below_top"] = bool(
            np.argmax(ratios[1:]) + 2 == k - 1)
        per_seed.append(net)
        writer.write_arrays(f"demo_seeds/seed{s}", {"top_eigenvalues": top})
        echo(f"  [demo seed {s}] gap {net['gap']} ratio {net['ratio']} elbow {net['elbow']} "
             f"below-top {net['below_top']} step after 9th {net['step_after_k_minus_1']:.2f} "
             f"mean eig {net['mean_eigenvalue']:.3g}")
    out = {"settings": {key: v for key, v in DEMO.items()}, "per_seed": per_seed}
    for key in ("gap", "ratio", "elbow", "below_top", "step_after_k_minus_1"):
        out[key] = {"per_seed": [n[key] for n in per_seed],
                    **spread([n[key] for n in per_seed])}
    return out


def training_length(writer, echo) -> dict:
    """k = 10, ReLU, GD at LR, covariance 1, seeds 0-1: the same networks measured after
    100 ... 3,000 steps (training continued; GD is deterministic): scale against shape."""
    out = []
    for scale in (1.0,):
        for s in range(2):
            x, y = clusters(10, scale, s)
            model, loss_fn = new_network(10, "relu", s)
            done = 0
            for steps in LENGTHS:
                train(model, loss_fn, x, y, steps=steps - done, lr=LR, rng=s)
                done = steps
                net = {"scale": scale, "seed": s, "steps": steps,
                       **measure(model, loss_fn, (x, y), 10, s)}
                out.append(net)
                writer.write_arrays(f"length/scale{scale:g}_seed{s}_steps{steps}",
                                    {"top_eigenvalues": net["top"]})
                echo(f"  [length] scale {scale:g} seed {s} steps {steps}: loss "
                     f"{net['train_loss']:.2g} mean eig {net['mean_eigenvalue']:.3g} gap "
                     f"{net['gap']} below-top {net['below_top']} step {net['step_after_k_minus_1']:.2f}")
    return {"lr": LR, "steps": list(LENGTHS), "per_network": out}


def cell(stat, fmt="{:g}") -> str:
    """``median [min-max]``, or the median alone when every seed agrees."""
    med, lo, hi = (fmt.format(stat[key]) for key in ("median", "min", "max"))
    return med if lo == hi else f"{med} [{lo}-{hi}]"


def row_line(row) -> str:
    return (f"k={row['k']:2d} {row['activation']:4s} {row['optimizer']:3s} "
            f"cov={row['scale']:<4g}| gap {cell(row['gap'])}, ratio {cell(row['ratio'])}, "
            f"elbow {cell(row['elbow'])}, below-top {cell(row['below_top'])}, step after "
            f"k-1 {cell(row['step_after_k_minus_1'], '{:.2f}')}, mean eig "
            f"{cell(row['mean_eigenvalue'], '{:.2g}')}, loss "
            f"{cell(row['train_loss'], '{:.1g}')}")


def paper_text(paper) -> str:
    parts = []
    if "gap" in paper:
        parts.append(f"gap {paper['gap']}" + (" (cov unstated)" if paper.get("scale_unstated")
                                               else ""))
    if "mean_eigenvalue" in paper:
        parts.append(f"mean eig {paper['mean_eigenvalue']:.3g}")
    return ", ".join(parts) or "-"


def table_text(rows) -> str:
    """One line per Table 1 row: the transcribed paper cells, then ours (median [range])."""
    lines = ["  k | alg | act  | cov | paper              | gap        | ratio      | elbow"
             "      | below-top  | step k-1         | mean eig"]
    for r in rows:
        lines.append(
            f" {r['k']:2d} | {r['optimizer']:3s} | {r['activation']:4s} | {r['scale']:3g} | "
            f"{paper_text(r['paper']):18s} | {cell(r['gap']):10s} | {cell(r['ratio']):10s} | "
            f"{cell(r['elbow']):10s} | {cell(r['below_top']):10s} | "
            f"{cell(r['step_after_k_minus_1'], '{:.2f}'):16s} | "
            f"{cell(r['mean_eigenvalue'], '{:.2g}')}")
    return "\n".join(lines)


def summarize(rows) -> dict:
    """Per rule: rows whose median count is k - 1, within k +- 1, and k - 1 on every seed."""
    out = {}
    for rule in ("gap", "ratio", "elbow", "below_top"):
        out[rule] = {
            "median_k_minus_1": sum(r[rule]["median"] == r["k"] - 1 for r in rows),
            "median_within_1": sum(abs(r[rule]["median"] - r["k"]) <= 1 for r in rows),
            "every_seed_k_minus_1": sum(r["all_k_minus_1"][rule] for r in rows),
            "rows": len(rows)}
    lines = ["rows (median over seeds) at k-1 / within k+-1 / k-1 on every seed:"]
    for rule, v in out.items():
        lines.append(f"  {rule:9s} {v['median_k_minus_1']:2d} / {v['median_within_1']:2d} / "
                     f"{v['every_seed_k_minus_1']:2d} of {v['rows']}")
    return {"per_rule": out, "within_1": out["gap"]["median_within_1"], "rows": len(rows),
            "text": "\n".join(lines)}


MARKERS = {"gap": "o", "ratio": "s", "elbow": "^", "below_top": "D"}


def plot(rows, networks, demo, path, quick):
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 11.5))
    axes = axes.ravel()
    _plot_counts(axes[0], rows, "relu")
    _plot_counts(axes[1], rows, "tanh")
    _plot_steps(axes[2], rows)
    if demo:
        _plot_demo(axes[3], demo)
    else:
        _plot_scale(axes[3], rows)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    ec.save_figure(fig, path)


def _plot_counts(ax, rows, activation):
    """Median count (range as error bars) against k, per rule, GD rows at both covariances."""
    sel = [r for r in rows if r["activation"] == activation and r["optimizer"] == "GD"]
    if not sel:
        ax.set_axis_off()
        return
    ks = np.array(sorted({r["k"] for r in sel}))
    for j, rule in enumerate(MARKERS):
        for scale, face in ((1.0, "none"), (10.0, None)):
            part = sorted((r for r in sel if r["scale"] == scale), key=lambda r: r["k"])
            if not part:
                continue
            x = np.array([r["k"] for r in part]) * (1 + 0.04 * (j - 1.5))
            med = np.array([r[rule]["median"] for r in part])
            err = np.array([[m - r[rule]["min"], r[rule]["max"] - m]
                            for m, r in zip(med, part)]).T
            ax.errorbar(x, np.maximum(med, 0.8), yerr=err, fmt=MARKERS[rule], ms=5,
                        color=f"C{j}", mfc=face, capsize=2,
                        label=f"{rule.replace('_', '-')}, cov {scale:g}")
    ax.plot(ks, ks - 1, "k-", lw=1, label="k - 1")
    ax.set(xscale="log", yscale="log", xlabel="number of classes k",
           ylabel="outliers (median over seeds, bars: range)",
           title=f"{activation}, GD: count by rule (open: cov 1, filled: cov 10)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xticks([], minor=True)
    ax.legend(ncol=3, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13))


def _plot_steps(ax, rows):
    """The drop after the (k-1)-th eigenvalue, lambda_{k-1} / lambda_k, per row."""
    styles = {("relu", 1.0): "C1", ("relu", 10.0): "C3", ("tanh", 1.0): "C2",
              ("tanh", 10.0): "C0"}
    for (act, scale), color in styles.items():
        for opt, marker, shift in (("GD", "o", 0.97), ("SGD", "s", 1.03)):
            part = sorted((r for r in rows if (r["activation"], r["scale"], r["optimizer"])
                           == (act, scale, opt)), key=lambda r: r["k"])
            if not part:
                continue
            med = np.array([r["step_after_k_minus_1"]["median"] for r in part])
            err = np.array([[m - r["step_after_k_minus_1"]["min"],
                             r["step_after_k_minus_1"]["max"] - m]
                            for m, r in zip(med, part)]).T
            ax.errorbar([r["k"] * shift for r in part], med, yerr=err, fmt=marker + "-",
                        color=color, ms=4, capsize=2, label=f"{opt} {act} cov {scale:g}")
    ax.axhline(1.0, color="k", lw=0.8)
    ks = sorted({r["k"] for r in rows})
    ax.set(xscale="log", yscale="log", xlabel="number of classes k",
           ylabel="lambda_(k-1) / lambda_k", title="step after the (k-1)-th eigenvalue "
           "(median, range over seeds)")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xticks([], minor=True)
    ticks = [1, 1.5, 2, 3, 4, 6]  # plain numbers on the log axis, not 4 x 10^0
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_yticks([], minor=True)
    ax.legend(ncol=2, fontsize=9, loc="upper right", framealpha=0.8)


def _plot_demo(ax, demo):
    for net in demo["per_seed"]:
        top = np.asarray(net["top"])
        ax.semilogy(np.arange(1, len(top) + 1), top / top[0], "o-", ms=3, lw=1,
                    color=plt_color(net["seed"]),
                    label=f"seed {net['seed']}: gap {net['gap']}, below-top {net['below_top']}")
    ax.axvline(9.5, color="k", ls=":", lw=1)
    ax.set(xlabel="rank i", ylabel="lambda_i / lambda_1",
           title="demo settings (k=10, ReLU, GD, cov 1); dotted: after the 9th")
    ax.set_xticks(range(1, 21, 2))
    ax.legend(ncol=2, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13))


def plt_color(i: int) -> str:
    """Ten distinguishable colours (matplotlib's tab10 cycle)."""
    return f"C{i % 10}"


def _plot_scale(ax, rows):
    for j, r in enumerate(rows):
        m = r["mean_eigenvalue"]
        ax.errorbar([r["k"]], [m["median"]], yerr=[[m["median"] - m["min"]],
                                                    [m["max"] - m["median"]]], fmt="o",
                    color=f"C{j}", label=f"k={r['k']}")
    ax.set(yscale="log", xlabel="number of classes k", ylabel="tr(H) / M",
           title="mean eigenvalue (median, range over seeds)")
    ax.legend()


def replot(json_path, png_path=None):
    """Redraw the figure from a written JSON (no recomputation)."""
    import json

    payload = json.loads(Path(json_path).read_text())
    png_path = png_path or Path(json_path).with_suffix(".png")
    plot(payload["rows"], payload["networks"], payload["demo_seeds"], png_path,
         payload["quick"])
    return png_path


if __name__ == "__main__":
    ec.command_line(__doc__, main, lambda out_dir, quick: replot(ec.out_paths(NAME, out_dir, quick)["json"]))
