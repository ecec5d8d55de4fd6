"""The Hessian of logistic regression (Sagun et al. 2018, Appendix B, Fig. 10): a convex model
whose bulk is a Marchenko-Pastur law, and whose outlier comes from the data's structure.

Model: ``p(x) = sigma(w . x)``, ``w`` in ``R^d`` (no bias), mean binary cross-entropy over ``N``
samples. Its Hessian is exactly

    H(w) = (1/N) sum_i s_i x_i x_i^T,   s_i = sigma(w . x_i) (1 - sigma(w . x_i)),

so at ``w = 0`` (``s_i = 1/4``) it is a quarter of the sample covariance ``X^T X / N``. Data:

* **one blob**: ``x_i ~ N(0, I_d)``, labels independent fair coins. ``X^T X / N`` is a Wishart
  matrix, so the spectrum of ``H(0)`` follows the Marchenko-Pastur law with aspect ratio
  ``q = d / N`` and variance ``v = 1/4``: density ``sqrt((l+ - l)(l - l-)) / (2 pi v q l)``
  on ``[l-, l+] = v (1 -+ sqrt(q))^2``.
* **two blobs**: ``x_i = y_i mu + z_i`` with ``y_i = +-1`` the label, ``z_i ~ N(0, I_d)`` and
  ``||mu|| = m``. The population covariance ``I + mu mu^T`` has one spike ``1 + m^2``; for
  ``m^2 > sqrt(q)`` the sample covariance has one eigenvalue outside the bulk, at about
  ``(1 + m^2)(1 + q / m^2)`` (Baik, Ben Arous and Peche 2005), so ``H(0)`` has one outlier
  near a quarter of that while its bulk stays Marchenko-Pastur.

Sizes: ``d = 200``, ``N = 4000`` (quick: 50 and 1,000), so ``q = 0.05`` and ``||mu|| = 1.5``:
the two blobs are then not linearly separable and gradient descent converges to a finite
minimum (at ``q = 0.2`` they are separable, the loss tends to 0 and ``||w||`` grows without
bound, so there is no trained point to speak of). Both at ``w = 0`` and after full-batch
gradient descent (learning rate 1, ``STEPS`` steps from ``w = 0``, gradient norm reported), where the weights ``s_i`` are no longer equal: the bulk is then compared with the
Marchenko-Pastur law of variance ``mean(s_i)`` (a reference, not a theorem), and the outlier
moves. The Hessian is the package's exact dense float64 matrix (``dense_matrix`` of
``HessianOperator``), checked against the closed form above.

The paper's Fig. 10 (two blobs) prints outliers at 454.4, 819.5 and 92.7 for ``alpha = M / N``
= 1, 2 and 0.02 (``PAPER``). ``alpha_sweep`` runs those three ratios at ``w = 0`` (where the
Hessian is exactly a quarter of the sample covariance, so the closed form is used), with
``d = SWEEP_DIM`` fixed and ``N = d / alpha``, over ``SWEEP_SEEDS`` seeds, and sets our
outlier, its BBP prediction and the bulk edge beside the paper's value, and the scale-free
ratios ``outlier(alpha) / outlier(1)`` beside the paper's. For ``alpha >= 1`` the two blobs
are linearly separable (``d >= N``), so there is no trained point there. The paper gives
neither d, N, the blobs' means nor the point ``w``; its caption says "tanh unit", its
Example 1 the sigmoid of ``<w, x>``, which is what the parts above run.

Example 2 (Fig. 10 right) as written, in ``softmax_blobs``: a linear softmax classifier
``W`` in ``R^{2 x d}`` on the two blobs, mean cross-entropy, ``M = 2 d`` parameters, so
``alpha = M / N = 2 d / N``; ``M = SOFTMAX_PARAMS`` fixed and ``N = M / alpha``, at ``W = 0``
and after ``softmax_blobs.STEPS`` GD steps, over ``SWEEP_SEEDS`` seeds (``example2`` in the
JSON). Then ``setups`` in the JSON: the largest eigenvalue at ``W = 0`` under each
``softmax_blobs.SETUPS`` (loss summed or averaged, ``M`` or ``N`` held fixed, blob means of
fixed norm or with a fixed offset per coordinate, covariance 10) beside the paper's values,
and ``shape_fit``: the two constants a set-up would need to follow the paper's ratios.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402
import softmax_blobs as sb  # noqa: E402

from lanczos_hessian import HessianOperator  # noqa: E402
from lanczos_hessian.curvature.dense import dense_matrix  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "logistic_regression"
MEAN_NORM = 1.5  # ||mu|| of the two blobs: m^2 = 2.25 > sqrt(q), and not separable
LR = 1.0
STEPS = 1000
#: [S18] Fig. 10 caption: the outlier of the two-blob spectrum for each alpha = M / N.
PAPER = {"source": "Sagun et al. 2018, Appendix B, Fig. 10 caption",
         "outliers_by_alpha": {1.0: 454.4, 2.0: 819.5, 0.02: 92.7}}
ALPHAS = (1.0, 2.0, 0.02)
SWEEP_DIM, SWEEP_SEEDS = 400, 5
QUICK_SWEEP = {"dim": 100, "seeds": 2}
SOFTMAX_PARAMS = {"full": 400, "quick": 100}  # M = 2 d of Example 2 (same M as the sweep's d)


# ---- the law --------------------------------------------------------------------------------------
def mp_edges(q: float, variance: float) -> tuple:
    """``(l-, l+)``: the support of the Marchenko-Pastur law of ratio ``q <= 1``."""
    return variance * (1 - np.sqrt(q)) ** 2, variance * (1 + np.sqrt(q)) ** 2


def mp_density(x, q: float, variance: float) -> np.ndarray:
    """The Marchenko-Pastur density of ratio ``q = d / N <= 1`` and variance ``variance``."""
    lo, hi = mp_edges(q, variance)
    x = np.asarray(x, dtype=float)
    inside = (x > lo) & (x < hi)
    out = np.zeros_like(x)
    out[inside] = (np.sqrt((hi - x[inside]) * (x[inside] - lo))
                   / (2 * np.pi * variance * q * x[inside]))
    return out


def mp_cdf(x, q: float, variance: float, grid_size: int = 20_001) -> np.ndarray:
    """The Marchenko-Pastur distribution function, by the trapezoidal rule on a fine grid."""
    lo, hi = mp_edges(q, variance)
    grid = np.linspace(lo, hi, grid_size)
    dens = mp_density(grid, q, variance)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    return np.interp(x, grid, cdf / cdf[-1])


def spike_location(m2: float, q: float, variance: float) -> float:
    """Where the outlier of ``variance * X^T X / N`` sits for a population spike ``1 + m2``
    (``m2 > sqrt(q)``): ``variance (1 + m2)(1 + q / m2)``."""
    return variance * (1 + m2) * (1 + q / m2)


# ---- data, model, Hessian ---------------------------------------------------------------------
def data(kind: str, n: int, d: int, seed: int):
    """``(x, y)``: float64 inputs ``(n, d)`` and 0/1 labels ``(n,)`` of one or two blobs."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if kind == "one_blob":
        labels = labels[torch.randperm(n, generator=gen)]
    else:
        mu = torch.randn(d, generator=gen, dtype=torch.float64)
        x = x + (2 * labels - 1).double()[:, None] * (MEAN_NORM * mu / mu.norm())
    return x, labels


def model_for(d: int) -> torch.nn.Module:
    model = torch.nn.Linear(d, 1, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    return model


def loss_fn(logits, labels):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.double())


def fit(model, x, y, steps: int, lr: float = LR) -> float:
    """Full-batch gradient descent (the loss is convex); returns the final loss."""
    return ec.full_batch_descent(model, loss_fn, x, y, steps, lr)


def hessian(model, x, y) -> np.ndarray:
    """The package's exact dense Hessian (float64), symmetrized."""
    H = dense_matrix(HessianOperator(model, loss_fn, (x, y), batch_size=len(x), reduction="mean"),
                     method="products")
    return (H + H.T) / 2


def closed_form(model, x) -> np.ndarray:
    """``(1/N) X^T diag(s) X`` with ``s_i = sigma(w . x_i)(1 - sigma(w . x_i))``."""
    with torch.no_grad():
        p = torch.sigmoid(model(x)[:, 0])
        s = (p * (1 - p)).numpy()
    X = x.numpy()
    return (X * s[:, None]).T @ X / len(X), s


# ---- the paper's three aspect ratios at w = 0 ----------------------------------------------
def sweep_case(alpha: float, dim: int, seed: int) -> dict:
    """Two blobs, ``N = round(dim / alpha)``, ``H(0) = X^T X / (4 N)`` (closed form, exact at
    w = 0): the top two eigenvalues, the nonzero bulk's edges against Marchenko-Pastur of
    ratio ``alpha`` and variance 1/4, and the BBP location of the spike."""
    n = int(round(dim / alpha))
    x, y = data("two_blobs", n, dim, seed)
    H, _ = closed_form(model_for(dim), x)
    values = np.linalg.eigvalsh((H + H.T) / 2)[::-1]
    q = dim / n
    lo, hi = mp_edges(q, 0.25)
    nonzero = values[: min(n, dim)]
    return {"alpha": alpha, "num_samples": n, "dim": dim, "seed": seed,
            "lambda_1": float(values[0]), "lambda_2": float(values[1]),
            "mp_edges": [lo, hi], "bulk_min": float(nonzero[-1]),
            "beyond_edge": int(np.sum(values > 1.05 * hi)),
            "bbp_prediction": spike_location(MEAN_NORM ** 2, q, 0.25),
            "bbp_threshold_met": MEAN_NORM ** 2 > np.sqrt(q)}


def alpha_sweep(dim: int, seeds, echo) -> dict:
    """``sweep_case`` for every alpha of the paper and every seed, with the paper's value and
    the ratios ``lambda_1(alpha) / lambda_1(1)`` (ours per seed, the paper's from its caption)."""
    cases = [sweep_case(a, dim, s) for a in ALPHAS for s in seeds]
    out = {"dim": dim, "seeds": list(seeds), "mean_norm": MEAN_NORM, "per_alpha": {}}
    base = {c["seed"]: c["lambda_1"] for c in cases if c["alpha"] == 1.0}
    for alpha in ALPHAS:
        part = [c for c in cases if c["alpha"] == alpha]
        lam = np.array([c["lambda_1"] for c in part])
        ratio = np.array([c["lambda_1"] / base[c["seed"]] for c in part])
        paper = PAPER["outliers_by_alpha"][alpha]
        out["per_alpha"][str(alpha)] = {
            "paper_outlier": paper, "paper_ratio_to_alpha_1": paper / PAPER["outliers_by_alpha"][1.0],
            "lambda_1": lam.tolist(), "ratio_to_alpha_1": ratio.tolist(),
            "bbp_prediction": part[0]["bbp_prediction"], "mp_edges": part[0]["mp_edges"],
            "beyond_edge": [c["beyond_edge"] for c in part],
            "num_samples": part[0]["num_samples"], "cases": part}
        echo(f"  alpha {alpha:g} (d {dim}, N {part[0]['num_samples']}): lambda_1 "
             f"{np.median(lam):.4g} [{lam.min():.4g}, {lam.max():.4g}], BBP "
             f"{part[0]['bbp_prediction']:.4g}, MP edge {part[0]['mp_edges'][1]:.3g}, beyond "
             f"edge {[c['beyond_edge'] for c in part]}; paper {paper}; ratio to alpha 1: ours "
             f"{np.median(ratio):.3f}, paper {paper / PAPER['outliers_by_alpha'][1.0]:.3f}")
    return out


# ---- one case ------------------------------------------------------------------------------------
def analyse(values: np.ndarray, q: float, variance: float) -> dict:
    """Bulk against the MP law of ``(q, variance)``: eigenvalues beyond ``1.05 l+`` are
    outliers; the bulk's Kolmogorov distance to the law is ``max |F_emp - F_MP|``."""
    lo, hi = mp_edges(q, variance)
    outliers = values[values > 1.05 * hi][::-1]
    bulk = np.sort(values[values <= 1.05 * hi])
    empirical = np.arange(1, len(bulk) + 1) / len(bulk)
    ks = float(np.max(np.abs(empirical - mp_cdf(bulk, q, variance))))
    return {"mp_edges": [lo, hi], "bulk_min": float(bulk.min()), "bulk_max": float(bulk.max()),
            "num_outliers": len(outliers), "outliers": outliers, "ks_distance": ks,
            "lambda_max": float(values.max())}


def run_case(kind, n, d, seed, echo) -> dict:
    x, y = data(kind, n, d, seed)
    q = d / n
    model = model_for(d)
    out = {}
    for point in ("init", "trained"):
        loss = fit(model, x, y, STEPS) if point == "trained" else float(
            loss_fn(model(x), y).detach())
        H = hessian(model, x, y)
        reference, s = closed_form(model, x)
        check = float(np.abs(H - reference).max() / np.abs(reference).max())
        values = np.linalg.eigvalsh(H)
        variance = float(s.mean())
        grad = torch.autograd.grad(loss_fn(model(x), y), model.weight)[0]
        row = {"loss": loss, "grad_norm": float(grad.norm()), "mean_weight_s": variance, "check_vs_closed_form": check,
               "eigenvalues": values, **analyse(values, q, variance)}
        if kind == "two_blobs":
            row["spike_prediction_at_mean_s"] = spike_location(MEAN_NORM ** 2, q, variance)
        out[point] = row
        echo(f"  {kind:9s} {point:7s}: loss {loss:.3g} |g| {row['grad_norm']:.1e}, mean s {variance:.3g}, MP edges "
             f"[{row['mp_edges'][0]:.3g}, {row['mp_edges'][1]:.3g}], bulk [{row['bulk_min']:.3g}, "
             f"{row['bulk_max']:.3g}], outliers {np.round(row['outliers'], 3).tolist()}"
             + (f" (BBP at mean s: {row['spike_prediction_at_mean_s']:.3g})"
                if kind == "two_blobs" else "")
             + f", KS {row['ks_distance']:.3f}, vs closed form {check:.1e}")
    return out


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log,
         sweep_seeds: int | None = None) -> dict:
    """All parts; ``sweep_seeds`` (default 5, quick 2) seeds from ``seed`` for the parts at
    the paper's alphas (Example 1's sweep, Example 2, the set-ups)."""
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    n, d = (1000, 50) if quick else (4000, 200)  # q = d / N = 0.05 in both
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": n, "dim": d,
             "aspect_ratio": d / n, "mean_norm": MEAN_NORM, "learning_rate": LR,
             "steps": STEPS, "paper": "Sagun et al. 2018, Appendix B, Fig. 10"}
    cases = {kind: run_case(kind, n, d, seed, echo) for kind in ("one_blob", "two_blobs")}
    sweep_dim, num_seeds = ((QUICK_SWEEP["dim"], QUICK_SWEEP["seeds"]) if quick
                            else (SWEEP_DIM, SWEEP_SEEDS))
    seeds = range(seed, seed + (sweep_seeds or num_seeds))
    sweep = alpha_sweep(sweep_dim, seeds, echo)
    echo("Example 2 (softmax) at the paper's alphas:")
    softmax = sb.example2(SOFTMAX_PARAMS["quick" if quick else "full"], seeds, echo)
    echo("set-ups at W = 0 against the paper's 454.4, 819.5, 92.7:")
    setups = sb.setup_sweep(seeds, echo, scale=0.25 if quick else 1.0)
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for kind, points in cases.items():
            writer.write_arrays(kind, {p: r["eigenvalues"] for p, r in points.items()})
        for alpha, entry in softmax["per_alpha"].items():
            writer.write_arrays(f"softmax_alpha_{alpha}", {
                p: entry["cases"][0][p]["eigenvalues"] for p in ("init", "trained")})
    plot(cases, d / n, attrs, paths["png"], sweep, softmax, setups)
    for entry in softmax["per_alpha"].values():
        for case in entry["cases"]:
            for point in ("init", "trained"):
                del case[point]["eigenvalues"]
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "paper": {"source": PAPER["source"], "outlier_values_by_alpha":
                         {str(a): v for a, v in PAPER["outliers_by_alpha"].items()}},
               "alpha_sweep": sweep, "example2": softmax, "setups": setups,
               "cases": {kind: {p: {k: v for k, v in r.items() if k != "eigenvalues"}
                                for p, r in points.items()} for kind, points in cases.items()},
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def seed_run(seed: int, out_dir) -> dict:
    """One seed for ``scripts/exp_seeds.py``: the single-seed cases, and the parts at the
    paper's alphas for this seed only (the documented run covers seeds 0-4 there)."""
    return main(out_dir=out_dir, seed=seed, sweep_seeds=1)


def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``): for
    each data set and point, the number of eigenvalues beyond 1.05 x the Marchenko-Pastur
    edge and the Kolmogorov distance to Marchenko-Pastur; for two blobs at w = 0, the largest
    eigenvalue relative to the BBP prediction."""
    out = {}
    for kind, case in d["cases"].items():
        for point, r in case.items():
            out[f"{kind}, {point}: eigenvalues beyond 1.05 x MP edge"] = r["num_outliers"]
            out[f"{kind}, {point}: KS distance to MP"] = r["ks_distance"]
    init = d["cases"]["two_blobs"]["init"]
    out["two_blobs, init: lambda_max / BBP prediction"] = (
        init["lambda_max"] / init["spike_prediction_at_mean_s"])
    for alpha, entry in d.get("example2", {}).get("per_alpha", {}).items():
        case = entry["cases"][0]  # the run's own seed
        for point in ("init", "trained"):
            out[f"softmax alpha {float(alpha):g}, {point}: lambda_1"] = case[point]["lambda_1"]
            out[f"softmax alpha {float(alpha):g}, {point}: lambda_1 / lambda_2"] = (
                case[point]["top_ratio"])
    return out


def plot(cases, q, attrs, path, sweep=None, softmax=None, setups=None):
    plt = ec.pyplot()
    columns = 2 + (sweep is not None) + (softmax is not None)
    fig, axes = plt.subplots(2, columns, figsize=(6 * columns + (5 if softmax else 0), 8))
    for j, (kind, points) in enumerate(cases.items()):
        for i, (point, r) in enumerate(points.items()):
            ax = axes[i, j]
            values, (lo, hi) = r["eigenvalues"], r["mp_edges"]
            right = max(1.15 * values.max(), 1.3 * hi,
                        1.1 * r.get("spike_prediction_at_mean_s", 0.0))
            bins = np.arange(0, right + hi / 40, hi / 40)
            ax.hist(values, bins=bins, density=True, alpha=0.6, label=f"{len(values)} "
                    "eigenvalues (exact)")
            grid = np.linspace(lo, hi, 800)
            ax.plot(grid, mp_density(grid, q, r["mean_weight_s"]), "k-", lw=1.5,
                    label=f"Marchenko-Pastur, q = {q:g}, variance {r['mean_weight_s']:.3g}")
            if len(r["outliers"]):
                ax.axvline(r["outliers"][0], color="C3", lw=1.2, ls="--",
                           label=f"largest eigenvalue {r['outliers'][0]:.3g} ({len(r['outliers'])}"
                                 " beyond 1.05 x MP edge)")
            if "spike_prediction_at_mean_s" in r:
                ax.axvline(r["spike_prediction_at_mean_s"], color="C2", lw=1.2, ls=":",
                           label=f"BBP prediction {r['spike_prediction_at_mean_s']:.3g}")
            where = "w = 0" if point == "init" else f"after {attrs['steps']} GD steps"
            ax.set(title=f"{kind.replace('_', ' ')}, {where} (loss {r['loss']:.3g})",
                   xlabel="eigenvalue of the Hessian", ylabel="density", xlim=(0, right))
            ax.legend()
            ax.grid(alpha=0.3)
    if sweep:
        _plot_sweep(axes[0, 2], axes[1, 2], sweep)
    if softmax:
        _plot_softmax(axes[0, -1], softmax)
        _plot_setups(axes[1, -1], setups)
    fig.suptitle(f"Logistic regression, d = {attrs['dim']}, N = {attrs['num_samples']} "
                 f"([S18] App. B, Fig. 10)")
    fig.tight_layout()
    ec.save_figure(fig, path)


def _plot_sweep(ax_values, ax_ratio, sweep):
    """Top: our lambda_1 at w = 0 per alpha (each seed), BBP and the MP edge; the paper's
    printed outliers on the same axis. Bottom: lambda_1(alpha) / lambda_1(1), ours and the
    paper's."""
    alphas = sorted(float(a) for a in sweep["per_alpha"])
    per = {a: sweep["per_alpha"][str(a)] for a in alphas}
    for a in alphas:
        ax_values.plot([a] * len(per[a]["lambda_1"]), per[a]["lambda_1"], "o", color="C0",
                       mfc="none")
        ax_ratio.plot([a] * len(per[a]["ratio_to_alpha_1"]), per[a]["ratio_to_alpha_1"], "o",
                      color="C0", mfc="none")
    ax_values.plot(alphas, [per[a]["bbp_prediction"] for a in alphas], "C2:",
                   label="BBP prediction (ours)")
    ax_values.plot(alphas, [per[a]["mp_edges"][1] for a in alphas], "k--", lw=1,
                   label="MP bulk edge (ours)")
    ax_values.plot(alphas, [per[a]["paper_outlier"] for a in alphas], "C3s-",
                   label="paper's printed outliers")
    ax_values.plot([], [], "o", color="C0", mfc="none",
                   label=f"ours, lambda_1 at w = 0 (d = {sweep['dim']}, each seed)")
    ax_values.set(xscale="log", yscale="log", xlabel="alpha = M / N",
                  ylabel="largest eigenvalue", title="two blobs at the paper's alpha values")
    ax_ratio.plot(alphas, [per[a]["paper_ratio_to_alpha_1"] for a in alphas], "C3s-",
                  label="paper")
    ax_ratio.plot([], [], "o", color="C0", mfc="none", label="ours (each seed)")
    ax_ratio.set(xscale="log", yscale="log", xlabel="alpha = M / N",
                 ylabel="outlier(alpha) / outlier(alpha = 1)", title="scale-free comparison")
    ticks = [0.2, 0.5, 0.7, 1, 1.4, 2]
    ax_ratio.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax_ratio.set_yticks([], minor=True)
    for ax in (ax_values, ax_ratio):
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)


def _plot_softmax(ax, softmax):
    """Example 2: the ordered spectrum ``lambda_i / lambda_1`` against ``i / M`` at each
    alpha, at W = 0 (solid) and trained (dashed), the first seed."""
    for k, (alpha, entry) in enumerate(softmax["per_alpha"].items()):
        case = entry["cases"][0]
        for point, style in (("init", "-"), ("trained", "--")):
            values = case[point]["eigenvalues"]
            where = "W = 0" if point == "init" else f"{softmax['steps']} GD steps"
            ax.plot(np.arange(len(values)) / len(values), values / values[0], style,
                    color=f"C{k}", lw=1.3, label=f"alpha {float(alpha):g} (N {case['num_samples']}),"
                    f" {where}: lambda_1 {values[0]:.3g}")
    ax.set(xlabel="rank i / M", ylabel="lambda_i / lambda_1", ylim=(-0.05, 1.05),
           title=f"Example 2: softmax, two blobs, M = 2 d = {softmax['num_params']}")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.grid(alpha=0.3)


def _plot_setups(ax, setups):
    """The largest eigenvalue at W = 0 under each set-up (mean over seeds) against alpha,
    the paper's printed values, and the fitted two-constant curve."""
    alphas = sorted(float(a) for a in PAPER["outliers_by_alpha"])
    for k, row in enumerate(setups["rows"]):
        means = [np.mean(row["per_alpha"][str(a)]["lambda_1"]) for a in alphas]
        ax.plot(alphas, means, "o-" if row["fixed"] == "N" else "^--", color=f"C{k % 10}",
                lw=1, ms=4, label=textwrap.fill(f"{k + 1}. {row['name']}", 60))
    fit = setups["shape_fit"]
    grid = np.geomspace(0.02, 2, 50)
    ax.plot(grid, fit["prefactor"] * (1 + 1 / fit["K"]) * (1 + fit["K"] * grid / 2), ":",
            color="gray", lw=2, label=f"fit: 2 constants from alpha 1 and 2 (K {fit['K']:.3g})")
    ax.plot(alphas, [PAPER["outliers_by_alpha"][a] for a in alphas], "ks", ms=8,
            label="paper (Fig. 10 caption)")
    ax.set(xscale="log", yscale="log", xlabel="alpha = M / N",
           ylabel="largest eigenvalue at W = 0", title="set-ups tried (mean over seeds)")
    ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.grid(alpha=0.3)


if __name__ == "__main__":
    ec.command_line(__doc__, main)
