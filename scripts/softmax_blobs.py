"""Example 2 of Sagun et al. 2018, Appendix B: softmax regression on Gaussian blobs, and the
set-ups that could give the outliers printed in its Fig. 10 (used by
``exp_logistic_regression.py``).

Model: ``C`` classes, logits ``W x`` with ``W`` in ``R^{C x d}`` (no bias), loss
``-log softmax(W x)_y`` averaged over the ``N`` samples. The paper writes
``f(w; (x, y)) = exp(-<w, y, x>) / sum_k exp(-<w, y^k, x>)`` with ``ell(s) = -log(s)``: the
same model with logits ``-W x``, i.e. ``W -> -W``, which changes neither the spectrum at
``W = 0`` nor that of a trained point (the negated one). Its ``M`` counts parameters (the
rows of ``T`` in ``g = T x``), so ``M = C d`` and ``alpha = M / N = C d / N``.

Hessian (exact; parameters ordered (class, input), as torch flattens ``weight``):

    H(W) = (1/N) sum_i (diag(p_i) - p_i p_i^T) kron x_i x_i^T,   p_i = softmax(W x_i).

At ``W = 0`` (``p_i = 1/C``): ``H = (1/C)(I - 1 1^T / C) kron S`` with ``S = X^T X / N``, so
its spectrum is ``eig(S) / C``, each ``C - 1`` times, and ``d`` zeros. For ``C = 2`` at any
``W``, ``H = [[1, -1], [-1, 1]] kron (1/N) sum_i s_i x_i x_i^T`` with ``s_i = p_i (1 - p_i)``:
the nonzero spectrum is twice that of Example 1 (binary logistic regression) at
``v = w_1 - w_2``, and the other ``d`` eigenvalues are exactly zero. Two blobs
``x = +-mu + z``, ``z ~ N(0, I_d)``: ``S`` has one population spike ``1 + ||mu||^2``, so at
``W = 0`` the one outlier sits near ``(1/2)(1 + m^2)(1 + q / m^2)``, ``q = d / N = alpha / 2``
(BBP), beside a Marchenko-Pastur bulk on ``(1/2)(1 +- sqrt(q))^2``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

import expcommon as ec
from lanczos_hessian import HessianOperator
from lanczos_hessian.curvature.dense import dense_matrix

#: [S18] Fig. 10 caption: the outlier for alpha = M / N = 1, 2, 0.02.
PAPER_OUTLIERS = {1.0: 454.4, 2.0: 819.5, 0.02: 92.7}
ALPHAS = (1.0, 2.0, 0.02)
CLASSES = 2
MEAN_NORM = 1.5  # ||mu||, as in Example 1's runs
STEPS, LR = 200, 1.0  # the trained point: full-batch GD from W = 0


# ---- data, model, Hessian ---------------------------------------------------------------------
def blobs(n: int, d: int, seed: int, classes: int = CLASSES, mean_norm: float | None = MEAN_NORM,
          offset: float | None = None, noise: float = 1.0):
    """``(x, y)``: ``n`` float64 inputs ``(n, d)`` from ``classes`` Gaussian blobs (labels
    ``i % classes``), ``x = mu_y + noise * z``, ``z ~ N(0, I_d)``. Means: ``+-mu`` for two
    classes (random ``mu`` of norm ``mean_norm``), else ``classes`` random means of that norm;
    with ``offset``, ``+-offset * (1, ..., 1)`` for two classes (``||mu||^2 = offset^2 d``,
    the [S16] centres (1, 1), (-1, -1) in d dimensions)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if offset is not None:
        if classes != 2:
            raise ValueError(f"a per-coordinate offset is defined for 2 classes, not {classes}")
        means = offset * torch.stack([torch.ones(d), -torch.ones(d)]).double()
    else:
        means = torch.randn(classes, d, generator=gen, dtype=torch.float64)
        if classes == 2:
            means = torch.stack([means[0], -means[0]])
        means = mean_norm * means / means.norm(dim=1, keepdim=True)
    return means[y] + noise * z, y


def model_for(d: int, classes: int = CLASSES) -> torch.nn.Module:
    """``x -> W x``, ``W`` in ``R^{C x d}``, float64, starting at ``W = 0``."""
    model = torch.nn.Linear(d, classes, bias=False).double()
    torch.nn.init.zeros_(model.weight)
    return model


def loss_fn(logits, labels):
    """Mean cross-entropy ``-log softmax(logits)_y``."""
    return torch.nn.functional.cross_entropy(logits, labels)


def summed_loss_fn(logits, labels):
    """Cross-entropy summed over the samples (``N`` times :func:`loss_fn`)."""
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def fit(model, x, y, steps: int = STEPS, lr: float = LR) -> float:
    """Full-batch gradient descent (the loss is convex); returns the final loss."""
    return ec.full_batch_descent(model, loss_fn, x, y, steps, lr)


def hessian(model, x, y, summed: bool = False) -> np.ndarray:
    """The package's exact dense Hessian (float64, ``M = C d``) of the mean loss (of the
    summed loss with ``summed``), symmetrized."""
    op = HessianOperator(model, summed_loss_fn if summed else loss_fn, (x, y),
                         batch_size=max(1, len(x) // 3), reduction="sum" if summed else "mean")
    H = dense_matrix(op, method="products")
    return (H + H.T) / 2


def closed_form(model, x) -> np.ndarray:
    """``(1/N) sum_i (diag(p_i) - p_i p_i^T) kron x_i x_i^T``, block ``(a, b)`` being
    ``(1/N) X^T diag(A_i[a, b]) X``."""
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1).numpy()
    X = x.numpy()
    n, d = X.shape
    classes = p.shape[1]
    H = np.empty((classes * d, classes * d))
    for a in range(classes):
        for b in range(classes):
            weight = (p[:, a] if a == b else 0.0) - p[:, a] * p[:, b]
            H[a * d:(a + 1) * d, b * d:(b + 1) * d] = (X * weight[:, None]).T @ X / n
    return H


def bbp_at_zero(m2: float, q: float, classes: int = CLASSES) -> float:
    """Where the spike ``1 + m2`` of ``S`` puts the outlier of ``H(0) = A kron S``:
    ``(1/C)(1 + m2)(1 + q / m2)`` (for ``m2 > sqrt(q)``)."""
    return (1 + m2) * (1 + q / m2) / classes


def summary(values: np.ndarray) -> dict:
    """The shape of a spectrum (descending ``values``): the top two, their ratio, the count
    of zeros (below ``1e-10 lambda_1``), the median of the others, that median over
    ``lambda_1`` (``bulk_level``) and the share of all eigenvalues below ``lambda_1 / 10``
    ("a bulk close to zero")."""
    top = values[0]
    zero = np.abs(values) < 1e-10 * top
    return {"lambda_1": float(top), "lambda_2": float(values[1]),
            "top_ratio": float(top / values[1]), "num_zero": int(zero.sum()),
            "median_nonzero": float(np.median(values[~zero])),
            "bulk_level": float(np.median(values[~zero]) / top),
            "share_below_tenth": float(np.mean(values < top / 10))}


# ---- Example 2 at the paper's three alphas -------------------------------------------------
def example2_case(alpha: float, num_params: int, seed: int, steps: int = STEPS) -> dict:
    """Two blobs, ``M = num_params`` (``d = M / 2``), ``N = round(M / alpha)``: the package's
    dense Hessian at ``W = 0`` and after ``steps`` GD steps, its distance to the closed form,
    and the shape of its spectrum; at ``W = 0`` also the BBP location and the MP edge."""
    d = num_params // CLASSES
    n = int(round(num_params / alpha))
    x, y = blobs(n, d, seed)
    model = model_for(d)
    q = d / n
    out = {"alpha": alpha, "num_samples": n, "dim": d, "num_params": CLASSES * d, "seed": seed,
           "bbp_prediction": bbp_at_zero(MEAN_NORM ** 2, q),
           "mp_edge": (1 + np.sqrt(q)) ** 2 / CLASSES}
    for point in ("init", "trained"):
        loss = fit(model, x, y, steps) if point == "trained" else float(
            loss_fn(model(x), y).detach())
        H = hessian(model, x, y)
        reference = closed_form(model, x)
        grad = torch.autograd.grad(loss_fn(model(x), y), model.weight)[0]
        values = np.linalg.eigvalsh(H)[::-1]
        out[point] = {"loss": loss, "grad_norm": float(grad.norm()),
                      "weight_norm": float(model.weight.detach().norm()),
                      "check_vs_closed_form": float(np.abs(H - reference).max()
                                                    / np.abs(reference).max()),
                      "eigenvalues": values, **summary(values)}
    out["init"]["beyond_edge"] = int(np.sum(out["init"]["eigenvalues"] > 1.05 * out["mp_edge"]))
    return out


def example2(num_params: int, seeds, echo, steps: int = STEPS) -> dict:
    """``example2_case`` at every alpha of the paper and every seed; per alpha the lists over
    seeds of ``lambda_1``, ``lambda_1 / lambda_2`` and the share below ``lambda_1 / 10``."""
    out = {"num_params": num_params, "classes": CLASSES, "mean_norm": MEAN_NORM,
           "steps": steps, "learning_rate": LR, "seeds": list(seeds), "per_alpha": {}}
    for alpha in ALPHAS:
        cases = [example2_case(alpha, num_params, s, steps) for s in seeds]
        entry = {"paper_outlier": PAPER_OUTLIERS[alpha], "num_samples": cases[0]["num_samples"],
                 "dim": cases[0]["dim"], "bbp_prediction": cases[0]["bbp_prediction"],
                 "mp_edge": cases[0]["mp_edge"], "cases": cases}
        for point in ("init", "trained"):
            for key in ("lambda_1", "top_ratio", "beyond_edge", "bulk_level", "share_below_tenth",
                        "num_zero", "loss", "grad_norm", "check_vs_closed_form"):
                if key in cases[0][point]:  # beyond_edge: at W = 0 only (the MP edge's point)
                    entry[f"{point}_{key}"] = [c[point][key] for c in cases]
        out["per_alpha"][str(alpha)] = entry
        echo(f"  softmax alpha {alpha:g} (M {num_params}, N {entry['num_samples']}): W = 0: "
             f"lambda_1 {np.mean(entry['init_lambda_1']):.4g} (BBP {entry['bbp_prediction']:.4g},"
             f" MP edge {entry['mp_edge']:.3g}), lambda_1 / lambda_2 "
             f"{np.mean(entry['init_top_ratio']):.3g}; trained ({steps} steps, loss "
             f"{np.mean(entry['trained_loss']):.3g}): lambda_1 "
             f"{np.mean(entry['trained_lambda_1']):.4g}, lambda_1 / lambda_2 "
             f"{np.mean(entry['trained_top_ratio']):.3g}, below lambda_1 / 10 "
             f"{np.mean(entry['trained_share_below_tenth']):.2f}; paper {entry['paper_outlier']}")
    return out


# ---- set-ups that could give the paper's scale -----------------------------------------------
#: Each set-up: two blobs, softmax at W = 0; what is held fixed as alpha = M / N varies (``M``
#: or ``N``), the loss (mean or sum over samples), the blob means (``norm``: ||mu|| fixed;
#: ``offset``: +-offset per coordinate, so ||mu||^2 = offset^2 d grows with M) and the noise
#: standard deviation (``noise``; sqrt(10): the paper's Table 1 covariance multiplier 10).
SETUPS = (
    {"name": "as written: mean loss, M fixed, norm(mu) 1.5", "fixed": "M", "loss": "mean"},
    {"name": "summed loss, M fixed, norm(mu) 1.5", "fixed": "M", "loss": "sum"},
    {"name": "mean loss, N fixed, norm(mu) 1.5", "fixed": "N", "loss": "mean"},
    {"name": "summed loss, N fixed, norm(mu) 1.5", "fixed": "N", "loss": "sum"},
    {"name": "mean loss, M fixed, means +-1 per coordinate", "fixed": "M", "loss": "mean",
     "offset": 1.0},
    {"name": "summed loss, M fixed, means +-1 per coordinate", "fixed": "M", "loss": "sum",
     "offset": 1.0},
    {"name": "mean loss, N fixed, means +-1 per coordinate", "fixed": "N", "loss": "mean",
     "offset": 1.0},
    {"name": "summed loss, N fixed, means +-1 per coordinate", "fixed": "N", "loss": "sum",
     "offset": 1.0},
    {"name": "unnormalized: covariance 10, means +-1 per coordinate, N fixed, mean loss",
     "fixed": "N", "loss": "mean", "offset": 1.0, "noise": float(np.sqrt(10))},
    {"name": "FITTED to alpha 1 and 2: mean loss, N fixed, noise variance 2c, means "
             "+-delta per coordinate, delta^2 N / variance = K", "fixed": "N",
     "loss": "mean", "fitted": True},
)
SETUP_SIZES = {"M": 400, "N": 1000}  # the size held fixed (quick: a quarter)


def top_at_zero(setup: dict, alpha: float, seed: int, scale: float = 1.0) -> dict:
    """The largest Hessian eigenvalue at ``W = 0`` for two blobs: ``lambda_max(S) / 2``
    (``S = X^T X / N``, the closed form at ``W = 0``), times ``N`` for the summed loss; and
    ``lambda_1 / lambda_2`` (how far the outlier stands from the bulk)."""
    size = int(SETUP_SIZES[setup["fixed"]] * scale)
    num_params = size if setup["fixed"] == "M" else max(CLASSES, int(round(alpha * size)))
    n = int(round(num_params / alpha)) if setup["fixed"] == "M" else size
    d = num_params // CLASSES
    offset, noise = setup.get("offset"), setup.get("noise", 1.0)
    if setup.get("fitted"):
        fit = shape_fit()
        noise = float(np.sqrt(fit["mean_loss_noise_variance"]))
        offset = float(np.sqrt(fit["K"] * noise ** 2 / n))
    x, _ = blobs(n, d, seed, offset=offset, noise=noise)
    X = x.numpy()
    gram = X.T @ X if d <= n else X @ X.T
    second, top = scipy.linalg.eigvalsh(gram, subset_by_index=[len(gram) - 2, len(gram) - 1])
    return {"num_samples": n, "dim": d, "alpha_actual": CLASSES * d / n,
            "lambda_1": top / CLASSES * (1.0 if setup["loss"] == "sum" else 1.0 / n),
            "top_ratio": top / second, "offset": offset, "noise": noise}


def setup_sweep(seeds, echo, scale: float = 1.0) -> dict:
    """``top_at_zero`` for every set-up, alpha and seed; per set-up the values, the ratios to
    alpha = 1 beside the paper's (1.80 at alpha 2, 0.204 at 0.02), and whether the shape
    (both ratios within 10%) and the size (every value within 10%) match the paper's."""
    paper_ratio = {a: PAPER_OUTLIERS[a] / PAPER_OUTLIERS[1.0] for a in ALPHAS}
    rows = []
    for setup in SETUPS:
        row = {**setup, "per_alpha": {}}
        for alpha in ALPHAS:
            cases = [top_at_zero(setup, alpha, s, scale) for s in seeds]
            row["per_alpha"][str(alpha)] = {
                "lambda_1": [c["lambda_1"] for c in cases], "num_samples": cases[0]["num_samples"],
                "top_ratio": [c["top_ratio"] for c in cases],
                "dim": cases[0]["dim"], "alpha_actual": cases[0]["alpha_actual"],
                "offset": cases[0]["offset"], "noise": cases[0]["noise"],
                "paper": PAPER_OUTLIERS[alpha]}
        base = np.array(row["per_alpha"]["1.0"]["lambda_1"])
        for alpha in ALPHAS:
            entry = row["per_alpha"][str(alpha)]
            entry["ratio_to_alpha_1"] = (np.array(entry["lambda_1"]) / base).tolist()
            entry["paper_ratio_to_alpha_1"] = paper_ratio[alpha]
        row["shape_matches"] = all(
            abs(np.mean(row["per_alpha"][str(a)]["ratio_to_alpha_1"]) / paper_ratio[a] - 1) < 0.1
            for a in ALPHAS)
        row["size_matches"] = all(
            abs(np.mean(row["per_alpha"][str(a)]["lambda_1"]) / PAPER_OUTLIERS[a] - 1) < 0.1
            for a in ALPHAS)
        rows.append(row)
        echo("  " + row["name"] + ": " + ", ".join(
            f"alpha {a:g} (d {row['per_alpha'][str(a)]['dim']}, N "
            f"{row['per_alpha'][str(a)]['num_samples']}) {np.mean(row['per_alpha'][str(a)]['lambda_1']):.4g}"
            for a in ALPHAS) + f"; shape {'matches' if row['shape_matches'] else 'differs'}, "
             f"size {'matches' if row['size_matches'] else 'differs'}")
    return {"seeds": list(seeds), "sizes": {k: int(v * scale) for k, v in SETUP_SIZES.items()},
            "rows": rows, "shape_fit": shape_fit()}


def shape_fit() -> dict:
    """The one family whose shape can follow the paper's: ``N`` fixed, noise variance ``v``,
    means ``+-delta`` per coordinate, so the spike of ``S / v`` is ``1 + K alpha / 2`` with
    ``K = delta^2 N / v``; at ``W = 0`` BBP gives ``c (1 + 1 / K)(1 + K alpha / 2)`` with
    ``c = v / 2`` (mean loss) or ``N v / 2`` (summed loss). ``K`` from the paper's ratio at
    alpha 2, ``c`` from its value at alpha 1 (two numbers fitted, not derived); then the
    value it predicts at alpha 0.02, the noise variance the mean loss needs, and for the
    summed loss with unit variance the ``N``, ``delta`` and ``M`` at alpha 0.02 implied."""
    r = PAPER_OUTLIERS[2.0] / PAPER_OUTLIERS[1.0]  # (1 + K) / (1 + K / 2) = r
    k = (r - 1) / (1 - r / 2)
    c = PAPER_OUTLIERS[1.0] / ((1 + 1 / k) * (1 + k / 2))
    n = 2 * c
    return {"K": k, "prefactor": c, "predicted_at_0.02": c * (1 + 1 / k) * (1 + k * 0.02 / 2),
            "paper_at_0.02": PAPER_OUTLIERS[0.02], "spike_at_alpha_1": 1 + k / 2,
            "mean_loss_noise_variance": 2 * c, "summed_loss_N": n,
            "summed_loss_delta": float(np.sqrt(k / n)), "summed_loss_M_at_0.02": 0.02 * n}
