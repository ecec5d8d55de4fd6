"""The Hessian of a 1M-parameter network on the whole Fashion-MNIST training set: top
outliers against the number of classes, the bulk density and the negative mass.

An MLP 784-1024-256-10 with ReLU (1,068,810 parameters), cross-entropy, trained on all
60,000 Fashion-MNIST training images (standardized) by plain SGD (learning rate 0.1, batches of
128, 10 epochs, seeded). At the trained point, with the package's run path
(:func:`lanczos_hessian.run.slq`, one HDF5 file that commits after every pass):

* the top 15 eigenpairs of the full-dataset Hessian (thick-restart Lanczos, float32 products
  accumulated in float64, tolerance 1e-3 relative to the norm), counted as outliers by the
  gap, ratio and elbow rules against C = 10 classes ([S18] Sec. 3.1: about C outliers);
* the bulk: stochastic Lanczos quadrature deflated by those 15 (3 Rademacher probes x 30
  steps in lockstep, one pass per step for all probes), its smoothed density with the band
  of the quadrature's resolution and the probes' error;
* the negative mass: the fraction of eigenvalues below 0 with its bracket
  (:meth:`~lanczos_hessian.linalg.density.QuadratureStatistics.fraction_below`), and when
  that is unresolved the nearest threshold below 0 that the rules resolve.

It records the wall and CPU seconds and the data passes of each phase. The run resumes:
the trained weights are kept in ``out/checkpoints/`` and the spectrum file resumes from its
last committed pass (``--resume``), so a killed run loses at most one pass.

Quick mode: 2,000 images, an MLP 784-64-10, 3 epochs, top 12, SLQ 3 x 20 (about 10 s).
Other seeds: ``--seed N --out-dir DIR`` (so that seed 0's documented files are kept); their
JSON copied to ``docs/exp_fashion_mnist_1m_seed<N>.json``, ``--summary`` tabulates every
documented seed (mean, standard deviation, range) in ``exp_fashion_mnist_1m_seeds.json`` and
draws their top eigenvalues.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import run as runs  # noqa: E402
from lanczos_hessian.analysis.spectrum import read_spectrum  # noqa: E402
from lanczos_hessian.curvature.operators import HessianOperator  # noqa: E402
from lanczos_hessian.examples.datasets import load_fashion_mnist  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "fashion_mnist_1m"
NUM_CLASSES = 10
#: The settings the trained weights depend on (a checkpoint is reused when these agree).
TRAINING_KEYS = ("num_train", "widths", "epochs", "batch", "lr")
CHECKPOINTS = ec.ROOT / "out" / "checkpoints"

FULL = {"num_train": None, "widths": [784, 1024, 256, 10], "epochs": 10, "batch": 128,
        "lr": 0.1, "k_top": 15, "tol": 1e-3, "probes": 3, "steps": 30, "pass_batch": 6000}
QUICK = {"num_train": 2000, "widths": [784, 64, 10], "epochs": 3, "batch": 128,
         "lr": 0.1, "k_top": 12, "tol": 1e-3, "probes": 3, "steps": 20, "pass_batch": 1000}


def trained_model(config: dict, x, y, seed: int, quick: bool, echo, directory) -> tuple:
    """The trained network and its training record: loaded from the checkpoint in
    ``directory`` when one with the same settings exists, else trained (seeded) and
    checkpointed there."""
    path = Path(directory) / f"exp_{NAME}_{'quick' if quick else 'full'}_seed{seed}.pt"
    training = {key: config[key] for key in TRAINING_KEYS}
    torch.manual_seed(seed)
    model = mlp(config["widths"], "relu")
    if path.exists():
        saved = torch.load(path, weights_only=False)
        if {key: saved["config"][key] for key in TRAINING_KEYS} == training:
            model.load_state_dict(saved["state"])
            echo(f"trained weights from {path}")
            return model, saved["record"]
    steps = config["epochs"] * (len(x) // config["batch"])
    timer = ec.Timer()
    history = train(model, torch.nn.CrossEntropyLoss(), x, y, steps=steps, lr=config["lr"],
                    batch_size=config["batch"], rng=seed)
    record = {"steps": steps, "seconds": timer(), "cpu_seconds": timer.cpu(),
              "loss_history": np.asarray(history[:: max(1, steps // 200)])}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": training, "state": model.state_dict(), "record": record}, path)
    echo(f"trained {steps} steps in {record['seconds']:.0f} s")
    return model, record


def spectrum_numbers(spectrum, k_top: int) -> dict:
    """The outliers, the bulk and the negative mass of a spectrum file, each with its error."""
    top = spectrum.top_eigenvalues()[:k_top]
    counts = spectrum.outlier_counts(k_top)
    q = spectrum.quadrature
    lam = float(top[0])
    negative = q.fraction_below(0.0)
    t = q.nearest_resolved_threshold(0.0, "below")
    trace = q.trace()

    def fraction(f):
        return {"value": f.value, "lower": f.lower, "upper": f.upper,
                "resolution": f.resolution, "resolved": bool(f.resolved)}

    return {
        "top": top, "residual_bounds": np.sort(spectrum.residual_bounds)[::-1][:k_top]
        if spectrum.residual_bounds is not None else None,
        "outliers": {"gap": counts.gap, "ratio": counts.ratio, "elbow": counts.elbow},
        "verdict": list(spectrum.outlier_verdict(k_top)),
        "ratio_C_over_C_plus_1": float(top[NUM_CLASSES - 1] / top[NUM_CLASSES]),
        "ratio_C_minus_1_over_C": float(top[NUM_CLASSES - 2] / top[NUM_CLASSES - 1]),
        "trace": {"value": trace.value, "stderr": trace.stderr},
        "top_C_trace_share": float(np.sum(top[:NUM_CLASSES]) / trace.value),
        "support": [float(np.nanmin(q.nodes)), float(np.nanmax(q.nodes))],
        "negative_mass": fraction(negative),
        "nearest_resolved_threshold": float(t),
        "mass_below_nearest_resolved": fraction(q.fraction_below(t)) if t == t else None,
        "mass_below_1e-3_lambda_max": fraction(q.fraction_below(-1e-3 * lam)),
        "mass_below_1e-2_lambda_max": fraction(q.fraction_below(-1e-2 * lam)),
        "mass_within_1e-3_lambda_max": fraction(q.fraction_within(1e-3 * lam)),
        "statistics": [s.as_row() for s in spectrum.statistics(k_top)],
    }


def main(quick: bool = False, out_dir=None, seed: int = 0, resume: bool = False,
         echo=ec.log, checkpoints=CHECKPOINTS) -> dict:
    ec.setup()
    config = QUICK if quick else FULL
    paths = ec.out_paths(NAME, out_dir, quick)
    x, y = load_fashion_mnist("train", config["num_train"], flatten=True)
    xt, yt = load_fashion_mnist("test", None if not quick else 1000, flatten=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    model, record = trained_model(config, x, y, seed, quick, echo, checkpoints)
    train_loss, train_acc = evaluate(model, loss_fn, x, y)
    test_loss, test_acc = evaluate(model, loss_fn, xt, yt)
    echo(f"{num_parameters(model):,} parameters; train loss {train_loss:.4f} acc "
         f"{train_acc:.4f}; test acc {test_acc:.4f}")

    op = HessianOperator(model, loss_fn, (x, y), batch_size=config["pass_batch"])
    resumed = resume and paths["h5"].exists()
    timer = ec.Timer()
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": len(x),
             "problem": f"fashion-mnist-mlp-{'-'.join(map(str, config['widths']))}",
             "paper": "Sagun et al. 2018 Sec. 3.1 at a non-toy size"}
    pairs, bulk = runs.slq(op, paths["h5"], num_probes=config["probes"],
                           num_steps=config["steps"], k_top=config["k_top"], tol=config["tol"],
                           seed=seed, resume=resumed, overwrite=not resumed,
                           progress=not quick, attrs=attrs)
    seconds, cpu = timer(), timer.cpu()
    numbers = spectrum_numbers(read_spectrum(paths["h5"]), config["k_top"])
    payload = {
        "experiment": NAME, "quick": quick, "seed": seed, "config": config,
        "num_params": num_parameters(model), "num_train": len(x), "num_test": len(xt),
        "training": {**record, "train_loss": train_loss, "train_accuracy": train_acc,
                     "test_loss": test_loss, "test_accuracy": test_acc},
        "spectrum": numbers,
        "cost": {"resumed": resumed, "seconds_this_process": seconds, "cpu_seconds": cpu,
                 "passes_total": bulk.num_passes, "matvecs_total": bulk.num_matvecs,
                 "passes_eigs": pairs.num_passes, "matvecs_eigs": pairs.num_matvecs,
                 "passes_slq": bulk.num_passes - pairs.num_passes,
                 "eigs_converged": bool(np.all(pairs.converged)),
                 "timings": dict(getattr(bulk, "timings", {}) or {}),
                 "seconds_per_pass_this_process": seconds / max(1, op.num_applications),
                 "passes_this_process": op.num_applications,
                 "seconds_per_vector_this_process": op.time_in_products
                 / max(1, op.num_vectors)},
    }
    ec.write_json(paths["json"], payload)
    plot(payload, read_spectrum(paths["h5"]), paths["png"])
    report(payload, echo)
    return payload


def report(d: dict, echo) -> None:
    s, c = d["spectrum"], d["cost"]
    neg = s["negative_mass"]
    echo(f"top 3 {np.round(np.asarray(s['top'][:3], dtype=float), 3).tolist()}"
         f"; 10th / 11th {s['ratio_C_over_C_plus_1']:.2f}; outliers gap/ratio/elbow "
         f"{s['outliers']['gap']}/{s['outliers']['ratio']}/{s['outliers']['elbow']}")
    echo(f"mass below 0: {neg['value']:.4f} [{neg['lower']:.4f}, {neg['upper']:.4f}] "
         f"(resolution +-{neg['resolution']:.4f}); below -1e-3 lambda_max "
         f"{s['mass_below_1e-3_lambda_max']['value']:.4f}")
    echo(f"{c['passes_total']} passes ({c['passes_eigs']} eigensolver), "
         f"{c['seconds_this_process']:.0f} s this process")


def plot(d: dict, spectrum, path) -> None:
    """Four panels: the top eigenvalues by rank against C; the density over the whole
    spectrum (log scale, outliers as atoms of mass 1/n); the bulk (the central 99% of the
    measure) with its band; the fraction below t near zero, where the negative mass is read.
    One kernel width, 1/60 of the bulk's support (the extreme Gauss nodes after deflation):
    the package's default, 1/50 of the central 98% of the measure, is narrower than the node
    spacing when most of the mass is the atom at zero."""
    from matplotlib.ticker import MaxNLocator

    plt = ec.pyplot()
    s = d["spectrum"]
    top = np.asarray(s["top"], dtype=float)
    q = spectrum.quadrature
    lo, hi = s["support"]
    width = (hi - lo) / 60
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
    ax = axes[0]
    ranks = np.arange(1, len(top) + 1)
    ax.plot(ranks, top, "o-", label="top eigenvalues (Lanczos)")
    ax.set_ylim(0, None)
    ax.axvline(NUM_CLASSES + 0.5, color="k", ls="--", lw=1,
               label=f"C = {NUM_CLASSES} classes")
    ax.axvline(s["outliers"]["ratio"] + 0.5, color="C3", ls=":", lw=1.5,
               label=f"ratio rule: {s['outliers']['ratio']} outliers")
    ax.set(xlabel="rank", ylabel="eigenvalue", title=f"top {len(top)} of "
           f"{d['num_params']:,} ({d['num_train']:,} images)")
    floor = 0.1 / (q.dim * width)
    grid = np.linspace(lo - 5 * width, top[0] * 1.05, 3000)
    _, phi = q.density(grid, width)
    ax = axes[1]
    ax.semilogy(grid, np.maximum(phi, floor), color="C0")
    ax.set_ylim(floor, None)
    ax.set(xlabel="eigenvalue", ylabel="density (fraction per unit)",
           title=f"whole spectrum, kernel {width:.2g}")
    grid = np.linspace(lo - 4 * width, hi + 4 * width, 600)
    _, phi, lower, upper = q.density_band(grid, width)
    ax = axes[2]
    ax.fill_between(grid, np.maximum(lower, floor), np.maximum(upper, floor), alpha=0.3,
                    color="C0", lw=0, label="band: resolution + probes")
    ax.semilogy(grid, np.maximum(phi, floor), color="C0", label="SLQ (deflated by the top)")
    ax.set_ylim(floor, None)
    ax.set(xlabel="eigenvalue", ylabel="density (fraction per unit)",
           title="the bulk (deflated Gauss nodes' range)")
    ax = axes[3]
    lam = top[0]
    z = np.linspace(min(1.1 * lo, -0.05 * lam), 0.02 * lam, 601)
    below = [q.fraction_below(t) for t in z]
    ax.fill_between(z / lam, [f.lower for f in below], [f.upper for f in below], alpha=0.3,
                    color="C2", lw=0, label="bracket (resolution + probes)")
    ax.plot(z / lam, [f.value for f in below], color="C2", label="SLQ estimate")
    ax.axvline(0, color="k", lw=0.8)
    t = s["nearest_resolved_threshold"]
    if t == t:
        ax.axvline(t / lam, color="C3", ls=":", lw=1.2,
                   label=f"nearest resolved threshold ({t / lam:.2g} lambda_max)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(0, 1.2)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    neg = s["negative_mass"]
    ax.set(xlabel="t / lambda_max", ylabel="fraction of eigenvalues below t",
           title=f"below 0: {neg['value']:.3f} in [{neg['lower']:.3f}, {neg['upper']:.3f}]")
    ec.finish_figure(fig, axes, path)


def replot(out_dir=None, quick: bool = False) -> None:
    """Redraw the PNG from the written JSON and HDF5 files."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    payload = json.loads(paths["json"].read_text())
    plot(payload, read_spectrum(paths["h5"]), paths["png"])


def seed_row(d: dict) -> dict:
    """One seed's numbers for the table over seeds (from its written JSON)."""
    s, c, t = d["spectrum"], d["cost"], d["training"]
    top = np.asarray(s["top"], dtype=float)
    below = s["mass_below_nearest_resolved"] or {}
    neg = s["negative_mass"]
    return {"seed": d["seed"], "train_accuracy": t["train_accuracy"],
            "test_accuracy": t["test_accuracy"], "train_loss": t["train_loss"],
            "lambda_1": float(top[0]), "lambda_10": float(top[NUM_CLASSES - 1]),
            "top_over_lambda_1": (top / top[0]).tolist(),
            "gap": s["outliers"]["gap"], "ratio": s["outliers"]["ratio"],
            "elbow": s["outliers"]["elbow"],
            "lambda_9 / lambda_10": s["ratio_C_minus_1_over_C"],
            "lambda_10 / lambda_11": s["ratio_C_over_C_plus_1"],
            "largest consecutive ratio": float(np.max(top[:-1] / top[1:])),
            "top-10 share of the trace": s["top_C_trace_share"],
            "mass within 1e-3 lambda_1": s["mass_within_1e-3_lambda_max"]["value"],
            "mass below 0": neg["value"], "mass below 0 bracket": [neg["lower"], neg["upper"]],
            "mass below 0 resolved": neg["resolved"],
            "nearest resolved threshold / lambda_1": s["nearest_resolved_threshold"] / top[0],
            "mass below it": below.get("value", float("nan")),
            "mass below it bracket": [below.get("lower", float("nan")),
                                      below.get("upper", float("nan"))],
            "passes": c["passes_total"], "seconds": c["seconds_this_process"],
            "cpu_seconds": c["cpu_seconds"], "training_seconds": t["seconds"]}


SUMMARY_KEYS = ("train_accuracy", "test_accuracy", "lambda_1", "lambda_10", "gap", "ratio",
                "elbow", "lambda_9 / lambda_10", "lambda_10 / lambda_11",
                "largest consecutive ratio", "top-10 share of the trace",
                "mass within 1e-3 lambda_1", "nearest resolved threshold / lambda_1",
                "mass below it", "passes", "seconds", "cpu_seconds")


def seed_summary(payloads, out_json=None, out_png=None, echo=ec.log) -> dict:
    """The full runs of several seeds side by side: each seed's :func:`seed_row`, and per
    number its mean, standard deviation (n - 1; 0 for one seed), min and max over the seeds;
    optionally written to ``out_json`` with a figure of every seed's top eigenvalues."""
    rows = sorted((seed_row(d) for d in payloads), key=lambda r: r["seed"])
    stats = {}
    for key in SUMMARY_KEYS:
        v = np.asarray([r[key] for r in rows], dtype=float)
        stats[key] = {"mean": float(np.mean(v)),
                      "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                      "min": float(np.min(v)), "max": float(np.max(v))}
    out = {"experiment": NAME, "part": "seeds", "seeds": [r["seed"] for r in rows],
           "num_seeds": len(rows), "rows": rows, "stats": stats}
    for key in SUMMARY_KEYS:
        st = stats[key]
        echo(f"{key}: {st['mean']:.4g} +- {st['std']:.2g} [{st['min']:.4g}, {st['max']:.4g}] "
             f"({', '.join(f'{r[key]:.4g}' for r in rows)})")
    if out_json is not None:
        ec.write_json(out_json, out)
    if out_png is not None:
        plot_seeds(rows, out_png)
    return out


def plot_seeds(rows, path) -> None:
    """Every seed: the top eigenvalues over lambda_1 by rank, and the consecutive ratios
    lambda_i / lambda_(i+1) (a C-group would show as a peak at i = C)."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, r in enumerate(rows):
        top = np.asarray(r["top_over_lambda_1"], dtype=float)
        ranks = np.arange(1, len(top) + 1)
        label = f"seed {r['seed']} (ratio rule {r['ratio']})"
        axes[0].plot(ranks, top, "o-", ms=3, color=f"C{i}", label=label)
        axes[1].plot(ranks[:-1], top[:-1] / top[1:], "o-", ms=3, color=f"C{i}", label=label)
    for ax in axes:
        ax.axvline(NUM_CLASSES + (0.5 if ax is axes[0] else 0), color="k", ls="--", lw=1)
    axes[0].set(xlabel="rank", ylabel="lambda_i / lambda_1",
                title=f"top eigenvalues, {len(rows)} seeds (dashed: C = {NUM_CLASSES})")
    axes[1].set(xlabel="rank i", ylabel="lambda_i / lambda_(i+1)",
                title="consecutive ratios (a C-group: a peak at i = C)")
    ec.finish_figure(fig, axes, path)


def summary_paths(directory=ec.DOCS) -> list:
    """The documented full runs: seed 0's JSON and every ``exp_<name>_seed<N>.json``."""
    directory = Path(directory)
    return [directory / f"exp_{NAME}.json",
            *sorted(directory.glob(f"exp_{NAME}_seed[0-9]*.json"))]


def headline(d: dict) -> dict:
    """The numbers the claims rest on: the outlier counts, lambda_10 / lambda_11, the mass
    below 0 and below -1e-3 lambda_max."""
    s = d["spectrum"]
    return {"outliers (ratio rule)": s["outliers"]["ratio"],
            "outliers (gap rule)": s["outliers"]["gap"],
            "lambda_10 / lambda_11": s["ratio_C_over_C_plus_1"],
            "mass below 0": s["negative_mass"]["value"],
            "mass below -1e-3 lambda_max": s["mass_below_1e-3_lambda_max"]["value"]}


if __name__ == "__main__":
    def options(parser):
        parser.add_argument("--resume", action="store_true",
                            help="continue the spectrum file from its last committed pass "
                                 "(the trained weights are reused from their checkpoint)")
        parser.add_argument("--replot", action="store_true",
                            help="only redraw the PNG from the written files")
        parser.add_argument("--summary", action="store_true",
                            help="the table over seeds from the documented full runs "
                                 "(docs/exp_fashion_mnist_1m.json and _seed<N>.json), "
                                 "written to _seeds.json and _seeds.png")

    args = ec.parse_args(__doc__.splitlines()[0], extra=options)
    if args.summary:
        import json

        found = [json.loads(path.read_text()) for path in summary_paths()]
        seed_summary(found, ec.DOCS / f"exp_{NAME}_seeds.json",
                     ec.DOCS / f"exp_{NAME}_seeds.png")
    elif args.replot:
        replot(args.out_dir, args.quick)
    else:
        main(quick=args.quick, out_dir=args.out_dir, seed=args.seed, resume=args.resume)
