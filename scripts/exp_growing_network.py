"""Growing the network at fixed data (Sagun et al. 2018, Sec. 3.2, Figs. 3 and 5).

1,000 real MNIST digits (flattened, standardized), MLPs 784-h-10 with one hidden ReLU layer of
h = 10, 30, 50 and 70 units (7,960 to 55,660 parameters), cross-entropy, the same learning rate
(0.1) and number of full-batch GD steps (1,000) from seeded initializations. For each: the top
120 and bottom 20 eigenvalues of the full-dataset Hessian (one Lanczos run, float64, tol 1e-4
relative to ||H||), and the SLQ density deflated by them (10 probes x 60 steps). The figure
draws the negative part of the spectrum against its rank as a percentage of the parameters
(the fraction of all M eigenvalues below t, for t up to -1e-3 lambda_max: the Gauss rules'
staircase and its brackets, no kernel) from the bottom check (``--bottom``, below) when its
JSON is there: the bottom 20 solved to 1e-6 norm(H), below the spacing of the bottom
eigenvalues, and the SLQ deflated by them; the tol-1e-4 bottom of the main run is not the 20
most negative eigenvalues (RESULTS.md, section 3).

The paper's claim: fixing the data and growing the network leaves the top (outlier)
eigenvalues where they are and only scales the bulk; the negative eigenvalues, ranked by
percentage, fall on similar curves for every size. Quick mode: h = 10 and 30, 300 samples,
300 steps, top 30 and bottom 5.
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
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "growing_network"
LR = 0.1
PERCENT = np.geomspace(1e-5, 0.5, 241)  # rank fractions p of all M eigenvalues


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        n, widths, steps, k_top, k_bottom = 300, (10, 30), 300, 30, 5
        probes, lsteps = 4, 30
    else:
        n, widths, steps, k_top, k_bottom = 1000, (10, 30, 50, 70), 1000, 120, 20
        probes, lsteps = 10, 60
    x, y = load_mnist(n, flatten=True)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": n,
             "hidden": list(widths), "steps": steps, "learning_rate": LR,
             "paper": "Sagun et al. 2018, Sec. 3.2, Figs. 3 and 5"}
    percent = PERCENT
    runs, rules = [], []
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for h in widths:
            torch.manual_seed(seed)
            model = mlp([784, h, 10], "relu")
            loss_fn = torch.nn.CrossEntropyLoss()
            train(model, loss_fn, x, y, steps=steps, lr=LR, rng=seed)
            loss, acc = evaluate(model, loss_fn, x, y)
            r = ec.eigs_and_density(ec.float64_copy(model), loss_fn, (x.double(), y),
                                    k_top=k_top, k_bottom=k_bottom, tol=1e-4,
                                    num_probes=probes, num_steps=lsteps, seed=seed,
                                    batch_size=n, writer=writer, run=f"h{h}")
            q = ec.quantiles(r["slq"], percent)
            writer.write_arrays(f"h{h}", {"negative_quantiles": q, "percent": percent})
            row = {"hidden": h, "num_params": num_parameters(model), "loss": loss,
                   "accuracy": acc, "top": r["top"], "bottom": r["bottom"],
                   "outliers": ec.counts_dict(r["counts"]),
                   "mass_below_1e-2_lmax": r["mass_below"],
                   "mass_below_1e-3_lmax": r["mass_below_small"],
                   "quantiles": q, "converged": r["converged"], "num_matvecs": r["num_matvecs"],
                   "seconds": r["seconds"]}
            runs.append(row)
            rules.append(r["slq"])
            echo(f"h={h:3d} ({row['num_params']} params): loss {loss:.3g} acc {acc:.3f} | top-3 "
                 f"{np.array2string(r['top'][:3], precision=3)} 10th {r['top'][9]:.3g} | bottom "
                 f"{r['bottom'][0]:.3g} | mass below -1e-3 lmax {r['mass_below_small']:.3f} | gap "
                 f"{r['counts'].gap} | {r['num_matvecs']} matvecs [{timer():.0f} s]")
    summary = summarize(runs)
    echo(summary["text"])
    plot([dict(row, slq=rule) for row, rule in zip(runs, rules)], percent, paths["png"],
         bottom_rows(paths["json"], runs, quick) if seed == 0 else None)
    payload = {"experiment": NAME, "quick": quick, "settings": attrs, "runs": runs,
               "summary": summary, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def summarize(runs) -> dict:
    top10 = np.stack([r["top"][:10] for r in runs])
    spread = (top10.max(0) - top10.min(0)) / top10.mean(0)
    tail = np.stack([r["top"][-10:] for r in runs])
    lines = [f"top-10 eigenvalues, relative spread across widths: "
             f"{np.array2string(spread, precision=2)}",
             f"ranks {len(runs[0]['top']) - 9}-{len(runs[0]['top'])} (bulk edge) by width: "
             f"{np.array2string(tail.mean(1), precision=4)}",
             f"mass below -1e-3 lambda_max by width: "
             f"{[round(r['mass_below_1e-3_lmax'], 4) for r in runs]}",
             f"bottom eigenvalue by width: {[round(float(r['bottom'][0]), 5) for r in runs]}"]
    return {"text": "\n".join(lines), "top10_relative_spread": spread,
            "bulk_edge_mean": tail.mean(1)}



def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``): the
    largest relative spread of the top-10 eigenvalues across the widths h >= 30 (and across
    all widths), lambda_1 and the mass below -1e-3 lambda_max of each width."""
    runs = d["runs"]
    wide = [r for r in runs if r["hidden"] >= 30]
    out = {"top-10 spread across h >= 30 (max over ranks)": float(
               np.max(summarize(wide)["top10_relative_spread"])) if len(wide) > 1 else np.nan,
           "top-10 spread across all widths (max)": float(
               np.max(summarize(runs)["top10_relative_spread"]))}
    for r in runs:
        out[f"h = {r['hidden']}: lambda_1"] = r["top"][0]
    for r in runs:
        out[f"h = {r['hidden']}: mass below -1e-3 lambda_max"] = r["mass_below_1e-3_lmax"]
    return out


def plot(runs, percent, path, bottom=None):
    """Top eigenvalues (linear, log-log); the negative side ranked by percentage
    (:func:`negative_side`): from ``bottom`` (the rows of :func:`bottom_check`, the bottom 20
    solved to 1e-6 norm(H) and the SLQ deflated by them) when given, else from the runs' own
    tol-1e-4 bottom and SLQ."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    source = {r["hidden"]: (r["fine"], r["slq"]) for r in bottom} if bottom else {}
    for i, r in enumerate(runs):
        label = f"784-{r['hidden']}-10 ({r['num_params']} p)"
        top = r["top"]
        axes[0].plot(np.arange(1, len(top) + 1), top, "-", lw=1, color=f"C{i}", label=label)
        axes[1].loglog(np.arange(1, len(top) + 1), top, "-", lw=1, color=f"C{i}", label=label)
        values, rule = source[r["hidden"]] if bottom else (r["bottom"], r["slq"])
        negative_side(axes[2], np.asarray(values), rule, f"C{i}", label)
    tol = "1e-6" if bottom else "1e-4"
    axes[0].set(title="top eigenvalues (Fig. 3)", xlabel="rank", ylabel="eigenvalue")
    axes[1].set(title="the same, log-log", xlabel="rank", ylabel="eigenvalue")
    axes[2].set(title=f"negative side by rank (Fig. 5); x: Lanczos bottom,\n"
                      f"tol {tol} norm(H); line: SLQ deflated by them",
                xlabel="rank / M (%); band: Gauss brackets (99.7%)", ylabel="eigenvalue",
                xscale="log", xlim=(None, 2.0))
    ec.finish_figure(fig, axes, path)


def negative_side(ax, bottom, rule, color, label):
    """Fig. 5 for one network: the Lanczos bottom eigenvalues (x) at rank ``i / M``, and the
    fraction of all ``M`` eigenvalues below ``t`` for ``t`` from the lowest of them to 0.8
    times the highest (:func:`expcommon.tail_fractions` of the SLQ deflated by them: its
    Gauss-rule staircase as a line, its bracket as a band), no kernel."""
    m = rule.dim
    t = np.linspace(1.05 * bottom.min(), 0.8 * bottom.max(), 800)
    value, lower, upper = ec.tail_fractions(rule, t)
    ax.fill_betweenx(t, 100 * np.maximum(lower, 0.5 / m), 100 * np.maximum(upper, 0.5 / m),
                     color=color, alpha=0.15, lw=0)
    ax.plot(100 * np.maximum(value, 0.5 / m), t, "-", lw=1, color=color, label=label)
    ax.plot(100 * np.arange(1, bottom.size + 1) / m, np.sort(bottom), "x", ms=3, color=color)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON files alone: the main run's top eigenvalues and the
    bottom check's rules (``exp_growing_network_bottom.json``, seed 0), which the right
    panel draws."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    runs = json.loads(paths["json"].read_text())["runs"]
    bottom = bottom_rows(paths["json"], runs, quick)
    if bottom is None:
        raise SystemExit(f"no bottom check with saved rules beside {paths['json']}: run "
                         f"`python scripts/exp_growing_network.py --bottom"
                         f"{' --quick' if quick else ''}` first")
    plot(runs, PERCENT, paths["png"], bottom)


def bottom_rows(main_json, runs, quick) -> list | None:
    """The rows of the bottom check beside ``main_json`` (same mode, seed 0, every width of
    ``runs``, rules saved), with their rules as quadratures; None if there is none."""
    import json

    path = Path(main_json).with_name(f"exp_{NAME}_bottom.json")
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    rows = {r["hidden"]: r for r in data["runs"] if "slq" in r}
    if data["quick"] != quick or any(r["hidden"] not in rows for r in runs):
        return None
    return [dict(rows[r["hidden"]], slq=ec.quadrature_from_record(rows[r["hidden"]]["slq"]))
            for r in runs]


def bottom_check(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log,
                 widths=None) -> dict:
    """The bottom 20 eigenvalues solved below the eigenvalue spacing, against the tol-1e-4 run.

    For each width (trained as in :func:`main`): the 20 smallest eigenpairs at tol 1e-4
    relative to ||H|| (the main run's accuracy) and at tol 1e-6, and the SLQ deflated by the
    tol-1e-6 pairs (10 probes x 60 steps); ``slq_below_20th`` is ``M`` times the SLQ mass below
    the 20th accurate eigenvalue, the number of eigenvalues the quadrature still sees beyond
    the deflated ones (0 when the 20 are the 20 most negative and fully deflated; the
    deflated pairs themselves, atoms of mass 1/M in the estimate, are not counted).
    ``widths`` (default: all of the mode's) selects some of them.
    Written to ``exp_growing_network_bottom.json`` for seed 0 and to
    ``exp_growing_network_bottom_seed<N>.json`` for another seed (one SLQ HDF5 file per width
    and seed beside it)."""
    from lanczos_hessian import run as runs_api
    from lanczos_hessian.curvature.operators import HessianOperator

    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    n, all_widths, steps = (300, (10, 30), 300) if quick else (1000, (10, 30, 50, 70), 1000)
    widths = all_widths if not widths else widths
    probes, lsteps = (4, 30) if quick else (10, 60)
    x, y = load_mnist(n, flatten=True)
    suffix = f"_seed{seed}" if seed else ""
    rows = []
    for h in widths:
        torch.manual_seed(seed)
        model = mlp([784, h, 10], "relu")
        loss_fn = torch.nn.CrossEntropyLoss()
        train(model, loss_fn, x, y, steps=steps, lr=LR, rng=seed)
        op = HessianOperator(ec.float64_copy(model), loss_fn, (x.double(), y), batch_size=n)
        t = ec.Timer()
        coarse = runs_api.eigs(op, k=20, which="SA", tol=1e-4, seed=seed, progress=False)
        coarse_seconds = t()
        h5 = paths["h5"].with_name(f"exp_{NAME}_bottom_h{h}{suffix}.h5")
        t = ec.Timer()
        fine, bulk = runs_api.slq(op, h5, num_probes=probes, num_steps=lsteps, k_bottom=20,
                                  tol=1e-6, seed=seed, overwrite=True, progress=False)
        fine_values = np.sort(fine.eigenvalues)
        coarse_values = np.sort(coarse.eigenvalues)
        twentieth = float(fine_values[-1])
        below = bulk.fraction_below(twentieth)  # the deflated pairs are atoms of 1/M in it
        deflated_below = int(np.sum(fine_values < twentieth))
        row = {"hidden": h, "num_params": op.shape[0], "coarse": coarse_values,
               "coarse_matvecs": coarse.num_matvecs, "coarse_seconds": coarse_seconds,
               "coarse_max_bound": float(np.max(coarse.residual_bounds)),
               "fine": fine_values, "fine_matvecs": fine.num_matvecs,
               "fine_converged": bool(np.all(fine.converged)),
               "fine_max_bound": float(np.max(fine.residual_bounds)),
               "coarse_minus_fine": coarse_values - fine_values,
               "coarse_above_fine_20th": int(np.sum(coarse_values > twentieth + 1e-6)),
               "slq_below_20th": {"count": below.value * op.shape[0] - deflated_below,
                                  "lower": below.lower * op.shape[0] - deflated_below,
                                  "upper": below.upper * op.shape[0] - deflated_below,
                                  "resolved": bool(below.resolved)},
               "slq_lowest_node": float(np.nanmin(bulk.nodes)),
               "slq": ec.quadrature_record(bulk),
               "seconds": t(), "passes": bulk.num_passes}
        rows.append(row)
        echo(f"h={h}: tol 1e-4 bottom {coarse_values[0]:.5f} .. {coarse_values[-1]:.5f} "
             f"({coarse.num_matvecs} products); tol 1e-6 {fine_values[0]:.5f} .. "
             f"{twentieth:.5f} ({fine.num_matvecs} products, converged "
             f"{row['fine_converged']}); max |coarse - fine| "
             f"{np.max(np.abs(row['coarse_minus_fine'])):.2e}; SLQ below the 20th: "
             f"{row['slq_below_20th']['count']:.1f} [{row['slq_below_20th']['lower']:.1f}, "
             f"{row['slq_below_20th']['upper']:.1f}] [{timer():.0f} s]")
    out = paths["json"].with_name(f"exp_{NAME}_bottom{suffix}.json")
    if out.exists():  # keep the widths of earlier invocations (same mode and seed)
        import json

        earlier = json.loads(out.read_text())
        if (earlier["quick"], earlier["seed"]) == (quick, seed):
            rows = [r for r in earlier["runs"] if r["hidden"] not in widths] + rows
            rows.sort(key=lambda r: r["hidden"])
    payload = {"experiment": NAME, "part": "bottom", "quick": quick, "seed": seed,
               "num_samples": n, "steps": steps, "runs": rows,
               "seconds": sum(r["seconds"] + r["coarse_seconds"] for r in rows),
               "cpu_seconds_last_invocation": timer.cpu()}
    ec.write_json(out, payload)
    return payload


if __name__ == "__main__":
    if "--bottom" in sys.argv:  # the bottom-end check: --bottom [--quick] [--seed N] [WIDTH ...]
        args = sys.argv[1:]
        seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
        if "--seed" in args:
            del args[args.index("--seed"):args.index("--seed") + 2]
        bottom_check(quick="--quick" in args, seed=seed,
                     widths=[int(v) for v in args if v.isdigit()])
    else:
        ec.command_line(__doc__, main, replot)
