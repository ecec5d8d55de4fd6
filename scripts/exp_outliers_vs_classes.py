"""Outliers of the Hessian spectrum against the number of classes (Sagun et al. 2018, Sec. 3.1,
Table 1).

Inputs from k Gaussian clusters in 100 dimensions (``synthetic.gaussian_clusters``: class means
``N(0, I)``, samples ``mean + sqrt(scale) * N(0, I)``, then standardized per feature), 1,000
samples, an MLP 100-30-30-k, softmax cross-entropy (mean). For every k in {2, 5, 10, 20, 50},
optimizer in {GD, SGD}, activation in {tanh, ReLU} and input covariance scale in {1, 10}: train
from a seeded initialization, then take the exact Hessian spectrum of the whole training set
and count its outliers among the top ``K = max(2k, 20)`` eigenvalues with the gap, ratio and
elbow rules (``outliers.count_outliers``). The paper's claim: the number of outliers follows
the number of classes k.

Protocol (ours; the paper does not pin it down): learning rate 0.1 for 1,000 steps, GD on the
full batch, SGD on batches of 100 (100 epochs). The counts use the top K eigenvalues from
Lanczos (float64 Hessian, tol 1e-10 relative to ||H||: the same values as the dense spectrum
to that tolerance). The exact dense spectrum (``dense.dense_matrix``, float64) is computed
for the ReLU/GD rows with k <= 10 at both scales, where it checks the Lanczos values and gives
the fraction of negative eigenvalues: a dense spectrum of every one of the 40 networks
(4,200-5,500 parameters) took 1-3 minutes each on this shared 2-core machine, about an hour
in all. Full mode: all 40 rows. Quick mode: ReLU, GD, scale 10, k in {2, 5, 10}, no dense.

The investigation of the package demo (k = 10, ReLU, GD, scale 1, where the gap rule finds one
outlier) is part of the full mode: counts against training length and against the cluster
separation (with standardized inputs, the covariance scale only sets the ratio of the mean
spread to the noise, ``separation / sqrt(scale)``), and two alternative counts (the gap of the
logarithms; the gap rule with the top eigenvalue excluded).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator, lanczos_eigsh  # noqa: E402
from lanczos_hessian.storage.hdf5 import SpectrumWriter  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.analysis.outliers import count_outliers  # noqa: E402
from lanczos_hessian.examples.synthetic import gaussian_clusters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "outliers_vs_classes"
CLASSES = (2, 5, 10, 20, 50)
LR, STEPS, SGD_BATCH, NUM_EXAMPLES = 0.1, 1000, 100, 1000


def top_count(k: int) -> int:
    return max(2 * k, 20)


def train_network(k, activation, optimizer, scale, seed, steps=STEPS, separation=1.0):
    x, y = gaussian_clusters(k, NUM_EXAMPLES, dim=100, scale=scale, separation=separation,
                             rng=seed)
    torch.manual_seed(seed)
    model = mlp([100, 30, 30, k], activation)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = None if optimizer == "GD" else SGD_BATCH
    train(model, loss_fn, x, y, steps=steps, lr=LR, batch_size=batch, rng=seed)
    loss, accuracy = evaluate(model, loss_fn, x, y)
    return model, loss_fn, (x, y), loss, accuracy


def dense_row(k, activation, optimizer, scale, quick) -> bool:
    """Rows that also get the exact dense spectrum (module docstring)."""
    return not quick and activation == "relu" and optimizer == "GD" and k <= 10


def spectrum(model, loss_fn, data, k, seed: int = 0):
    """``(top K descending, their residual bounds, all converged)`` by Lanczos, float64."""
    x, y = data
    op = HessianOperator(ec.float64_copy(model), loss_fn, (x.double(), y), batch_size=len(x))
    result = lanczos_eigsh(op, k=top_count(k), which="LA", tol=1e-10, rng=seed)
    order = np.argsort(result.eigenvalues)[::-1]
    return result.eigenvalues[order], result.residual_bounds[order], bool(result.all_converged)


def counts_of(top) -> dict:
    c = count_outliers(top)
    logs = count_outliers(np.log(np.maximum(top, top[0] * 1e-12)))
    rest = count_outliers(top[1:])
    return {"gap": c.gap, "ratio": c.ratio, "elbow": c.elbow, "log_gap": logs.gap,
            "gap_excluding_top": rest.gap + 1}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        configs = [(k, "relu", "GD", 10.0) for k in (2, 5, 10)]
    else:
        configs = [(k, act, opt, scale) for scale in (1.0, 10.0) for opt in ("GD", "SGD")
                   for act in ("tanh", "relu") for k in CLASSES]
    rows = []
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "learning_rate": LR,
             "steps": STEPS, "sgd_batch": SGD_BATCH, "num_samples": NUM_EXAMPLES,
             "paper": "Sagun, Evci, Guney, Dauphin, Bottou 2018, Sec. 3.1, Table 1",
             "method": "lanczos top-K, tol 1e-10; dense float64 for ReLU/GD rows with k <= 10"}
    with SpectrumWriter(paths["h5"], attrs, overwrite=True) as writer:
        for k, act, opt, scale in configs:
            model, loss_fn, data, loss, acc = train_network(k, act, opt, scale, seed)
            top, bounds, converged = spectrum(model, loss_fn, data, k, seed=seed)
            row = {"k": k, "activation": act, "optimizer": opt, "scale": scale,
                   "num_params": num_parameters(model), "train_loss": loss,
                   "train_accuracy": acc, **counts_of(top), "converged": converged,
                   "max_residual_bound": float(bounds.max()), "top": top}
            full = None
            if dense_row(k, act, opt, scale, quick):
                full = ec.dense_eigenvalues(model, loss_fn, data)
                dense_top = full[::-1][:len(top)]
                row["dense_vs_lanczos_max_abs"] = float(np.abs(dense_top - top).max())
                row["dense_counts"] = counts_of(dense_top)
                row["fraction_negative"] = float(np.mean(full < 0))
                row["min_eigenvalue"] = float(full.min())
            rows.append(row)
            group = f"runs/k{k}_{act}_{opt}_scale{scale:g}"
            arrays = {"top_eigenvalues": top, "residual_bounds": bounds}
            if full is not None:
                arrays["eigenvalues"] = full
            writer.write_arrays(group, arrays)
            writer.set_attrs(group, {key: v for key, v in row.items()
                                     if key not in ("top", "dense_counts")})
            echo(f"k={k:2d} {act:4s} {opt:3s} scale={scale:4g}: loss {loss:.3g} acc {acc:.3f} | "
                 f"gap {row['gap']:2d} ratio {row['ratio']:2d} elbow {row['elbow']:2d} | "
                 f"log-gap {row['log_gap']:2d} gap-excl-top {row['gap_excluding_top']:2d} "
                 + (f"| dense: gap {row['dense_counts']['gap']}, max |dense - lanczos| "
                    f"{row['dense_vs_lanczos_max_abs']:.1e}, negative "
                    f"{row['fraction_negative']:.3f} " if full is not None else "")
                 + f"[{timer():.0f} s]")
        investigation = {} if quick else investigate(seed, writer, echo)
    table = table_text(rows)
    echo(table)
    summary = summarize(rows)
    echo(summary["text"])
    payload = {"experiment": NAME, "quick": quick, "seed": seed, "settings": attrs,
               "rows": [{key: v for key, v in r.items()} for r in rows],
               "table": table, "summary": summary, "investigation": investigation,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    plot(rows, investigation, paths["png"], quick)
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def investigate(seed, writer, echo) -> dict:
    """The demo's single outlier: training length, separation, alternative counts (Lanczos)."""
    out = {"training_length": [], "separation": []}
    for scale in (1.0, 10.0):
        for steps in (100, 300, 1000, 3000):
            model, loss_fn, data, loss, acc = train_network(10, "relu", "GD", scale, seed, steps)
            top = spectrum(model, loss_fn, data, 10, seed=seed)[0]
            row = {"scale": scale, "steps": steps, "train_loss": loss, "train_accuracy": acc,
                   **counts_of(top), "top": top}
            out["training_length"].append(row)
            echo(f"  [length] k=10 relu GD scale {scale:g} steps {steps}: loss {loss:.3g}, gap "
                 f"{row['gap']}, ratio {row['ratio']}, elbow {row['elbow']}, log-gap "
                 f"{row['log_gap']}, gap-excl-top {row['gap_excluding_top']}")
    for ratio in (0.1, 0.2, 1 / np.sqrt(10), 0.5, 1.0, 2.0):
        model, loss_fn, data, loss, acc = train_network(10, "relu", "GD", 1.0, seed,
                                                        separation=ratio)
        top = spectrum(model, loss_fn, data, 10, seed=seed)[0]
        row = {"separation_over_noise": ratio, "train_loss": loss, "train_accuracy": acc,
               **counts_of(top), "top": top}
        out["separation"].append(row)
        echo(f"  [separation] k=10 relu GD separation/noise {ratio:.3g}: loss {loss:.3g}, acc "
             f"{acc:.3f}, gap {row['gap']}, ratio {row['ratio']}, elbow {row['elbow']}")
    writer.write_arrays("investigation", {
        "length_top": np.stack([r["top"] for r in out["training_length"]]),
        "separation_top": np.stack([r["top"] for r in out["separation"]]),
    })
    return out


def table_text(rows) -> str:
    """The paper's Table 1 layout: rows k, columns (optimizer, activation) per scale."""
    scales = sorted({r["scale"] for r in rows})
    combos = [(o, a) for o in ("GD", "SGD") for a in ("tanh", "relu")]
    lines = []
    for scale in scales:
        present = [c for c in combos
                   if any(r["scale"] == scale and (r["optimizer"], r["activation"]) == c
                          for r in rows)]
        header = f"input covariance scale {scale:g}; outliers by gap / ratio / elbow"
        lines.append(header)
        lines.append("   k | " + " | ".join(f"{o} {a:>4s}   " for o, a in present))
        for k in sorted({r["k"] for r in rows}):
            cells = []
            for o, a in present:
                match = [r for r in rows if r["scale"] == scale and r["k"] == k
                         and r["optimizer"] == o and r["activation"] == a]
                cells.append(f"{match[0]['gap']:2d}/{match[0]['ratio']:2d}/{match[0]['elbow']:2d}"
                             if match else "   -    ")
            lines.append(f"  {k:2d} | " + " | ".join(f"{c:10s}" for c in cells))
        lines.append("")
    return "\n".join(lines)


def summarize(rows) -> dict:
    """How many rows have the gap count within the paper's +-1 of k, exactly k, exactly k-1."""
    out = {}
    groups = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["activation"], r["scale"]), []).append(r)
    for (opt, act, scale), group in sorted(groups.items()):
        key = f"{opt}_{act}_scale{scale:g}"
        out[key] = {rule: {"within_1": sum(abs(r[rule] - r["k"]) <= 1 for r in group),
                           "k": sum(r[rule] == r["k"] for r in group),
                           "k_minus_1": sum(r[rule] == r["k"] - 1 for r in group),
                           "rows": len(group)}
                    for rule in ("gap", "ratio", "elbow")}
    lines = ["gap rule within k+-1 (exactly k-1) per setting:"]
    for key, value in out.items():
        g = value["gap"]
        lines.append(f"  {key:22s} {g['within_1']}/{g['rows']} ({g['k_minus_1']} are k-1, "
                     f"{g['k']} are k)")
    total = sum(v["gap"]["within_1"] for v in out.values())
    n = sum(v["gap"]["rows"] for v in out.values())
    lines.append(f"  all: {total}/{n}")
    return {"per_setting": out, "within_1": total, "rows": n, "text": "\n".join(lines)}


def plot(rows, investigation, path, quick):
    plt = ec.pyplot()
    if quick or not investigation:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    else:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        axes = axes.ravel()
    # (a) normalized top eigenvalues, ReLU GD at the largest scale present, one line per k
    scale = max(r["scale"] for r in rows)
    for r in rows:
        if r["activation"] == "relu" and r["optimizer"] == "GD" and r["scale"] == scale:
            top = np.asarray(r["top"])
            axes[0].semilogy(np.arange(1, len(top) + 1), top / top[0], "o-", ms=2,
                             label=f"k={r['k']} (gap: {r['gap']})")
    axes[0].set(title=f"top eigenvalues / largest, ReLU GD, scale {scale:g}", xlabel="rank",
                ylabel="lambda_i / lambda_1")
    axes[0].legend()
    # (b) gap count against k for every setting (GD solid, SGD dashed and shifted)
    keys = sorted({(r["optimizer"], r["activation"], r["scale"]) for r in rows})
    for key in keys:
        sel = [r for r in rows if (r["optimizer"], r["activation"], r["scale"]) == key]
        color = {("relu", 10.0): "C3", ("relu", 1.0): "C1", ("tanh", 10.0): "C0",
                 ("tanh", 1.0): "C2"}[(key[1], key[2])]
        shift = 1.0 if key[0] == "GD" else 1.04
        axes[1].plot([r["k"] * shift for r in sel], [r["gap"] for r in sel],
                     "o-" if key[0] == "GD" else "s--", ms=3, color=color,
                     label=f"{key[0]} {key[1]} scale {key[2]:g}")
    ks = np.array(sorted({r["k"] for r in rows}))
    axes[1].plot(ks, ks, "k:", lw=1, label="k")
    axes[1].plot(ks, ks - 1, "k-", lw=0.5, label="k-1")
    axes[1].set(title="outliers by the gap rule", xlabel="number of classes k",
                ylabel="outliers (gap rule)", xscale="log", yscale="log")
    axes[1].set_xticks(ks, [str(k) for k in ks])
    axes[1].set_xticks([], minor=True)
    axes[1].legend(ncol=2)
    if not quick and investigation:
        for r in investigation["training_length"]:
            top = np.asarray(r["top"])
            axes[2].semilogy(np.arange(1, len(top) + 1), top / top[0], "-",
                             color="C0" if r["scale"] == 1 else "C3",
                             alpha=0.3 + 0.7 * np.log10(r["steps"] / 100) / np.log10(30),
                             label=f"scale {r['scale']:g}, {r['steps']} steps (gap {r['gap']})")
        axes[2].set(title="k=10 ReLU GD: training length", xlabel="rank",
                    ylabel="lambda_i / lambda_1")
        axes[2].legend(fontsize=6)
        for r in investigation["separation"]:
            top = np.asarray(r["top"])
            axes[3].semilogy(np.arange(1, len(top) + 1), top / top[0], "o-", ms=2,
                             label=f"sep/noise {r['separation_over_noise']:.2g} (gap {r['gap']})")
        axes[3].set(title="k=10 ReLU GD 1000 steps: cluster separation", xlabel="rank",
                    ylabel="lambda_i / lambda_1")
        axes[3].legend(fontsize=6)
    for ax in np.ravel(axes):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    ec.save_figure(fig, path)


def replot(json_path, png_path=None):
    """Redraw the figure from a written JSON (no recomputation)."""
    import json

    payload = json.loads(Path(json_path).read_text())
    png_path = png_path or Path(json_path).with_suffix(".png")
    plot(payload["rows"], payload["investigation"], png_path, payload["quick"])
    return png_path


if __name__ == "__main__":
    args = ec.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--replot", action="store_true", help="only redraw the PNG from the JSON"))
    if args.replot:
        replot(ec.out_paths(NAME, args.out_dir, args.quick)["json"])
    else:
        main(quick=args.quick, out_dir=args.out_dir, seed=args.seed)
