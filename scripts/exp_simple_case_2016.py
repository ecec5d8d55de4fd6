"""The simple case of Sagun, Bottou and LeCun 2016 ("Eigenvalues of the Hessian in deep learning:
singularity and beyond", Sec. 3, Figs. 7-9): two 2-D Gaussian blobs, small ReLU networks.

Networks: 2-h-h-2 MLPs with ReLU (the paper's non-linearity), ``h`` in {2, 6, 10, 14, 18},
which have ``h^2 + 6h + 2`` = 18, 74, 162, 282 and 434 parameters, the paper's counts (a
2-h-2 MLP has ``5h + 2`` parameters and cannot give 18). Two outputs; cross-entropy (CE) on
the labels or mean squared error (MSE, mean over samples and both outputs) on one-hot
targets. Data: the paper's two blobs, centres ``(1, 1)`` and ``(-1, -1)`` (distance 2.83),
isotropic Gaussian with standard deviation ``STD = 1`` (the paper does not print it) unless
varied; drawn by ``synthetic.two_blobs`` at distance ``2 sqrt(2)`` and rotated by 45 degrees.

Training and stopping rule: full-batch gradient descent at learning rate 0.1 until the norm of
the full-data gradient ``||grad L(w)||_2 <= GRAD_TOL = 1e-3`` or a step cap, whichever comes
first; each network stops on its own (its parameters are frozen once it meets the rule). The
paper trains GD at a constant step with no stated stopping rule and reports end gradient
norms of order 1e-4; 1e-3 and the step caps are our choice, and every table reports the
gradient norm each network reached and whether it met the rule.

Outliers ("the two isolated eigenvalues" of the paper): the three rules of
:func:`lanczos_hessian.analysis.outliers.count_outliers` (largest gap, largest ratio, elbow) on
the 10 largest eigenvalues of the exact Hessian, reported as distributions over seeds.

* Figs. 4-5 (the JSON's ``table`` and the HDF5 group ``fig7``): exact Hessian spectra
  (float64) of every size and both losses, ``seeds`` seeds each, at initialization and at
  the stopping point; lambda_max, outlier counts, near-zero and negative fractions, weight
  norms ``||w||_2``.
* Fig. 7 (``during_training``): the exact spectrum of the 162-parameter CE network during
  training, at the steps ``CHECKPOINTS``, every seed.
* Fig. 8: the top eigenvalue over many initializations of the 162-parameter network, at
  initialization and at the stopping point (histograms, log axis).
* Fig. 9: the top eigenvalues at the stopping point as the blobs' standard deviation grows
  (the centres stay at (1, 1) and (-1, -1)), the same initializations at every spread, with the gradient norm and the fraction
  of negative eigenvalues reached (so that "less separable -> larger lambda" is read at
  comparable training progress).

Every network of one size is trained at once: the ``B`` networks are batched weight tensors
(``torch.baddbmm``), and the loss summed over networks has a block-diagonal Hessian, so one
double-backward pass per coordinate gives that row of all ``B`` exact Hessians (checked
against the package's dense Hessian of an ``nn.Sequential`` copy for one network).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.analysis.outliers import count_outliers  # noqa: E402
from lanczos_hessian.examples.models import mlp  # noqa: E402
from lanczos_hessian.examples.synthetic import two_blobs  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "simple_case_2016"
WIDTHS = (2, 6, 10, 14, 18)  # 18, 74, 162, 282, 434 parameters
ACTIVATION = "relu"
LR = 0.1
GRAD_TOL = 1e-3
TOP_K = 10  # eigenvalues given to the outlier rules
LOSSES = ("ce", "mse")

FULL = {"n": 1000, "seeds": 5, "max_steps": 5_000, "fig8_n": 300, "fig8_nets": 200,
        "fig8_max_steps": 3_000, "fig9_nets": 20, "fig9_max_steps": 3_000,
        "stds": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0), "checkpoints": (0, 10, 30, 100, 300, 1000, 3000)}
QUICK = {"n": 150, "seeds": 5, "max_steps": 800, "fig8_n": 150, "fig8_nets": 16,
         "fig8_max_steps": 800, "fig9_nets": 5, "fig9_max_steps": 800,
         "stds": (0.5, 3.0), "checkpoints": (0, 30, 300)}


STD = 1.0  # the blobs' standard deviation where it is not varied
CENTRE_DISTANCE = 2 * 2 ** 0.5  # between (1, 1) and (-1, -1)


def blobs(n, std, seed):
    """The paper's blobs: centres (1, 1) and (-1, -1), isotropic standard deviation ``std``
    (``two_blobs`` puts them at ``(+-sqrt(2), 0)``; a 45-degree rotation moves them there)."""
    x, y = two_blobs(n, distance=CENTRE_DISTANCE, std=std, rng=seed)
    c = 2 ** -0.5
    rotation = torch.tensor([[c, c], [-c, c]], dtype=x.dtype)
    return (x @ rotation).double(), y


def targets_for(kind, y):
    return y if kind == "ce" else torch.nn.functional.one_hot(y, 2).double()


# ---- many networks at once ----------------------------------------------------------------------
class Ensemble:
    """``B`` independent 2-h-h-2 ReLU MLPs as batched float64 tensors.

    Layer ``l`` has weights ``W_l`` of shape ``(B, fan_in, fan_out)`` and biases ``(B, 1,
    fan_out)``, initialized as ``torch.nn.Linear`` does (uniform in ``+-1/sqrt(fan_in)``),
    network ``b`` from seed ``seeds[b]``. ``losses`` returns the ``B`` whole-data losses
    ``L_b(w_b)``; since ``sum_b L_b`` separates over networks, its gradient and Hessian are
    the per-network ones (the Hessian block-diagonal).
    """

    def __init__(self, h: int, seeds, kind: str):
        self.h, self.kind = h, kind
        nets = [self._init(h, int(s)) for s in seeds]
        self.params = [torch.stack([net[i] for net in nets]) for i in range(len(nets[0]))]
        self.num_params = sum(p[0].numel() for p in self.params)

    @staticmethod
    def _init(h, seed):
        gen = torch.Generator().manual_seed(seed)
        out = []
        for fan_in, fan_out in ((2, h), (h, h), (h, 2)):
            bound = fan_in ** -0.5
            out.append((2 * torch.rand(fan_in, fan_out, generator=gen, dtype=torch.float64)
                        - 1) * bound)
            out.append((2 * torch.rand(1, fan_out, generator=gen, dtype=torch.float64)
                        - 1) * bound)
        return out

    def __len__(self):
        return self.params[0].shape[0]

    def outputs(self, params, x):
        z = x.expand(len(self), -1, -1)
        for i in range(0, len(params), 2):
            z = torch.baddbmm(params[i + 1], z, params[i])
            if i < len(params) - 2:
                z = torch.relu(z)
        return z

    def losses(self, x, t, params=None):
        z = self.outputs(self.params if params is None else params, x)
        if self.kind == "ce":
            return torch.nn.functional.cross_entropy(
                z.transpose(1, 2), t.expand(len(self), -1), reduction="none").mean(1)
        return ((z - t) ** 2).mean((1, 2))

    def flat(self, tensors) -> torch.Tensor:
        return torch.cat([p.reshape(len(self), -1) for p in tensors], 1)

    def gradient_norms(self, x, t) -> np.ndarray:
        params = [p.detach().requires_grad_() for p in self.params]
        grads = torch.autograd.grad(self.losses(x, t, params).sum(), params)
        return self.flat(grads).norm(dim=1).numpy()

    def weight_norms(self) -> np.ndarray:
        return self.flat(self.params).norm(dim=1).numpy()

    def train(self, x, t, max_steps: int, lr: float = LR, tol: float = GRAD_TOL) -> dict:
        """Full-batch GD; network ``b`` stops (is frozen) at the first step where
        ``||grad L_b|| <= tol``. Returns the steps taken and final gradient norms."""
        params = [p.detach().clone().requires_grad_() for p in self.params]
        steps = np.full(len(self), max_steps)
        active = torch.ones(len(self), dtype=torch.float64)
        for step in range(max_steps + 1):
            grads = torch.autograd.grad(self.losses(x, t, params).sum(), params)
            norms = self.flat(grads).norm(dim=1)
            newly = (norms <= tol) & (active > 0)
            steps[newly.numpy()] = step
            active = active * (~newly).double()
            if step == max_steps or not active.any():
                break
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * active.view(-1, *[1] * (p.dim() - 1)) * g
        self.params = [p.detach() for p in params]
        norms = self.gradient_norms(x, t)
        return {"steps": steps, "grad_norm": norms, "met_rule": norms <= tol}

    def hessians(self, x, t) -> torch.Tensor:
        """``(B, M, M)`` exact Hessians: row ``j`` of every network from one backward pass
        of ``sum_b dL_b/dw_bj`` (the Hessian of the sum is block-diagonal)."""
        params = [p.detach().clone().requires_grad_() for p in self.params]
        grads = torch.autograd.grad(self.losses(x, t, params).sum(), params, create_graph=True)
        g = self.flat(grads)
        rows = [self.flat(torch.autograd.grad(g[:, j].sum(), params, retain_graph=True))
                for j in range(g.shape[1])]
        H = torch.stack(rows, 1).detach()
        return (H + H.transpose(1, 2)) / 2

    def eigenvalues(self, x, t) -> np.ndarray:
        """``(B, M)`` eigenvalues, descending."""
        return torch.linalg.eigvalsh(self.hessians(x, t)).numpy()[:, ::-1].copy()

    def as_module(self, b: int) -> torch.nn.Module:
        """Network ``b`` as an ``nn.Sequential`` (for the check against the package)."""
        model = mlp([2, self.h, self.h, 2], ACTIVATION).double()
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for i, layer in enumerate(linears):
                layer.weight.copy_(self.params[2 * i][b].T)
                layer.bias.copy_(self.params[2 * i + 1][b, 0])
        return model


def spectrum_stats(values: np.ndarray) -> dict:
    """Statistics of one descending spectrum: lambda_max, the top ``TOP_K``, the outlier
    counts of the three rules, the number above ``0.1 lambda_max``, and the fractions with
    ``|lambda| <= 1e-3 lambda_max`` (near zero) and ``lambda < -1e-3 lambda_max`` (negative)."""
    top = values[0]
    counts = count_outliers(values[:TOP_K])
    return {"lambda_max": float(top), "top": values[:TOP_K], "gap": counts.gap,
            "ratio": counts.ratio, "elbow": counts.elbow,
            "num_large": int(np.sum(values > 0.1 * top)),
            "fraction_near_zero": float(np.mean(np.abs(values) <= 1e-3 * top)),
            "fraction_negative": float(np.mean(values < -1e-3 * top))}


def spread(values) -> dict:
    """Mean, median, minimum and maximum over networks (seeds), and the values themselves."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max()), "per_seed": v.tolist()}


# ---- the three figures ------------------------------------------------------------------------
def sizes_and_losses(cfg, seed, echo):
    """Fig. 7: every size and loss, ``cfg['seeds']`` seeds, exact spectra at init and end."""
    x, y = blobs(cfg["n"], STD, seed)
    seeds = seed * 1000 + np.arange(cfg["seeds"])
    rows = []
    for kind in LOSSES:
        t = targets_for(kind, y)
        for h in WIDTHS:
            timer = ec.Timer()
            ens = Ensemble(h, seeds, kind)
            init_eigs, init_norm = ens.eigenvalues(x, t), ens.weight_norms()
            info = ens.train(x, t, cfg["max_steps"])
            eigs = ens.eigenvalues(x, t)
            stats = [spectrum_stats(e) for e in eigs]
            row = {"loss": kind, "h": h, "num_params": ens.num_params,
                   "seeds": seeds, "steps": info["steps"], "grad_norm": info["grad_norm"],
                   "met_rule": info["met_rule"], "final_loss": ens.losses(x, t).detach().numpy(),
                   "weight_norm_init": init_norm, "weight_norm_trained": ens.weight_norms(),
                   "init": [spectrum_stats(e) for e in init_eigs], "trained": stats,
                   "spectra_init": init_eigs, "spectra_trained": eigs, "seconds": timer()}
            rows.append(row)
            echo(f"  [fig7] {kind:3s} {ens.num_params:3d} p: steps {info['steps'].tolist()}, "
                 f"|g| {np.array2string(info['grad_norm'], formatter={'float': '{:.1e}'.format})}, lambda_max "
                 f"{np.array2string(np.array([s['lambda_max'] for s in stats]), precision=3)}, "
                 f"gap/ratio/elbow {[(s['gap'], s['ratio'], s['elbow']) for s in stats]}, "
                 f"neg {np.median([s['fraction_negative'] for s in stats]):.2f} "
                 f"[{timer():.0f} s]")
    return rows


def many_initializations(cfg, seed, echo):
    """Fig. 8: the top eigenvalue over ``fig8_nets`` initializations of the 162-parameter
    network, at initialization and at the stopping point; one network checked against the
    package's dense Hessian."""
    x, y = blobs(cfg["fig8_n"], STD, seed)
    out = {}
    for kind in LOSSES:
        timer = ec.Timer()
        t = targets_for(kind, y)
        ens = Ensemble(10, 100_000 + seed * 10_000 + np.arange(cfg["fig8_nets"]), kind)
        init = ens.eigenvalues(x, t)
        info = ens.train(x, t, cfg["fig8_max_steps"])
        final = ens.eigenvalues(x, t)
        loss_fn = torch.nn.CrossEntropyLoss() if kind == "ce" else torch.nn.MSELoss()
        reference = ec.dense_eigenvalues(ens.as_module(0), loss_fn, (x, t))[::-1]
        check = float(np.max(np.abs(reference - final[0])) / np.abs(reference).max())
        out[kind] = {"top_init": init[:, 0], "top_trained": final[:, 0],
                     "grad_norm": info["grad_norm"], "met_rule": info["met_rule"],
                     "steps": info["steps"],
                     "fraction_negative": np.mean(final < -1e-3 * final[:, :1], 1),
                     "final_loss": ens.losses(x, t).detach().numpy(),
                     "check_vs_dense_relative": check, "seconds": timer()}
        echo(f"  [fig8] {kind:3s} {len(ens)} nets: lambda_max init median "
             f"{np.median(init[:, 0]):.3g}, trained {np.median(final[:, 0]):.3g}; met rule "
             f"{info['met_rule'].mean():.2f}; vs dense {check:.1e} [{timer():.0f} s]")
    return out


def during_training(cfg, seed, echo):
    """The paper's Fig. 7: exact spectra of the 162-parameter CE network (``cfg['seeds']``
    initializations) at the steps ``cfg['checkpoints']`` of GD (each network frozen once it
    meets the stopping rule, as everywhere here)."""
    x, y = blobs(cfg["n"], STD, seed)
    ens = Ensemble(10, 300_000 + seed * 1000 + np.arange(cfg["seeds"]), "ce")
    out, done = [], 0
    for step in cfg["checkpoints"]:
        if step > done:
            ens.train(x, y, step - done)
            done = step
        values = ens.eigenvalues(x, y)
        top = values[:, :1]
        out.append({"step": step, "spectra": values,
                    "lambda_max": values[:, 0], "loss": ens.losses(x, y).detach().numpy(),
                    "grad_norm": ens.gradient_norms(x, y),
                    "fraction_near_zero": np.mean(np.abs(values) <= 1e-3 * top, 1),
                    "fraction_negative": np.mean(values < -1e-3 * top, 1)})
        echo(f"  [during] step {step}: lambda_max median {np.median(values[:, 0]):.3g}, near "
             f"zero {np.median(out[-1]['fraction_near_zero']):.2f}, negative "
             f"{np.median(out[-1]['fraction_negative']):.3f}")
    return out


def separability(cfg, seed, echo):
    """Fig. 9: CE networks trained to the stopping rule on blobs of growing spread."""
    rows = []
    seeds = 200_000 + seed * 10_000 + np.arange(cfg["fig9_nets"])
    for std in cfg["stds"]:
        x, y = blobs(cfg["fig8_n"], std, seed)
        ens = Ensemble(10, seeds, "ce")
        info = ens.train(x, y, cfg["fig9_max_steps"])
        values = ens.eigenvalues(x, y)
        top = values[:, :5]
        rows.append({"std": std, "top1": spread(top[:, 0]),
                     "grad_norm": spread(info["grad_norm"]), "top5_median": np.median(top, 0),
                     "top5_q25": np.percentile(top, 25, 0), "top5_q75": np.percentile(top, 75, 0),
                     "final_loss_median": float(np.median(ens.losses(x, y).detach().numpy())),
                     "grad_norm_median": float(np.median(info["grad_norm"])),
                     "met_rule_fraction": float(info["met_rule"].mean()),
                     "fraction_negative_median": float(np.median(
                         np.mean(values < -1e-3 * values[:, :1], 1)))})
        echo(f"  [fig9] std = {std:g}: top-5 median "
             f"{np.array2string(rows[-1]['top5_median'], precision=3)}, |g| median "
             f"{rows[-1]['grad_norm_median']:.1e}, negative {rows[-1]['fraction_negative_median']:.3f}")
    return rows


# ---- summary, files, figure -------------------------------------------------------------------
def table_rows(fig7) -> list:
    """One row per (loss, size): medians and ranges over seeds."""
    out = []
    for r in fig7:
        tr = r["trained"]
        out.append({"loss": r["loss"], "num_params": r["num_params"],
                    "lambda_max_init": spread([s["lambda_max"] for s in r["init"]]),
                    "lambda_max": spread([s["lambda_max"] for s in tr]),
                    "gap": [s["gap"] for s in tr], "ratio": [s["ratio"] for s in tr],
                    "elbow": [s["elbow"] for s in tr],
                    "num_large": [s["num_large"] for s in tr],
                    "fraction_near_zero": spread([s["fraction_near_zero"] for s in tr]),
                    "fraction_near_zero_init": spread([s["fraction_near_zero"] for s in r["init"]]),
                    "fraction_negative": spread([s["fraction_negative"] for s in tr]),
                    "grad_norm": spread(r["grad_norm"]), "met_rule": int(np.sum(r["met_rule"])),
                    "steps": spread(r["steps"]), "final_loss": spread(r["final_loss"]),
                    "weight_norm_init": spread(r["weight_norm_init"]),
                    "weight_norm_trained": spread(r["weight_norm_trained"]),
                    "num_seeds": len(tr)})
    return out


def summarize(table, fig9) -> dict:
    lines = []
    two = {}
    for kind in LOSSES:
        rows = [r for r in table if r["loss"] == kind]
        counts = {rule: [c for r in rows for c in r[rule]] for rule in ("gap", "ratio", "elbow")}
        two[kind] = {rule: float(np.mean(np.array(c) == 2)) for rule, c in counts.items()}
        lines.append(f"{kind}: lambda_max median by size "
                     f"{[round(r['lambda_max']['median'], 3) for r in rows]}; fraction of "
                     f"(size, seed) with exactly 2 outliers: {two[kind]}")
    tops = [float(r["top5_median"][0]) for r in fig9]
    d = [r["std"] for r in fig9]
    lines.append(f"fig9: median lambda_max against std {d}: {np.round(tops, 4).tolist()}")
    return {"text": "\n".join(lines), "fraction_two_outliers": two, "fig9_top1": tops,
            "fig9_std": d}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    cfg = QUICK if quick else FULL
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "learning_rate": LR,
             "activation": ACTIVATION, "grad_tol": GRAD_TOL, "top_k": TOP_K,
             "architectures": [f"2-{h}-{h}-2" for h in WIDTHS],
             "paper": "Sagun, Bottou, LeCun 2016, Sec. 3, Figs. 4-5, 7-9",
             "centres": [[1.0, 1.0], [-1.0, -1.0]], "std": STD,
             **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    fig7 = sizes_and_losses(cfg, seed, echo)
    fig8 = many_initializations(cfg, seed, echo)
    fig9 = separability(cfg, seed, echo)
    during = during_training(cfg, seed, echo)
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for r in fig7:
            writer.write_arrays(f"fig7/{r['loss']}_{r['num_params']}",
                                {"init": r["spectra_init"], "trained": r["spectra_trained"],
                                 "grad_norm": r["grad_norm"], "steps": r["steps"]})
        for kind, v in fig8.items():
            writer.write_arrays(f"fig8/{kind}", {k: val for k, val in v.items()
                                                 if isinstance(val, np.ndarray)})
        for r in during:
            writer.write_arrays(f"during/step{r['step']}", {"spectra": r["spectra"]})
    table = table_rows(fig7)
    summary = summarize(table, fig9)
    echo(summary["text"])
    plot(fig7, fig8, fig9, paths["png"], during)
    payload = {"experiment": NAME, "quick": quick, "settings": attrs, "table": table,
               "fig8": {kind: {"top_init": spread(v["top_init"]),
                               "top_init_cv": float(v["top_init"].std() / v["top_init"].mean()),
                               "top_trained": spread(v["top_trained"]),
                               "top_trained_cv": float(v["top_trained"].std()
                                                       / v["top_trained"].mean()),
                               "top_trained_quantiles": np.percentile(v["top_trained"],
                                                                      [5, 25, 50, 75, 95]),
                               "met_rule_fraction": float(v["met_rule"].mean()),
                               "grad_norm": spread(v["grad_norm"]),
                               "fraction_negative": spread(v["fraction_negative"]),
                               "final_loss": spread(v["final_loss"]),
                               "check_vs_dense_relative": v["check_vs_dense_relative"],
                               "num_networks": len(v["top_init"]), "seconds": v["seconds"]}
                        for kind, v in fig8.items()},
               "fig9": fig9, "during_training": [
                   {k: (spread(v) if isinstance(v, np.ndarray) and k != "spectra" else v)
                    for k, v in r.items() if k != "spectra"} for r in during],
               "summary": summary, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def plot(fig7, fig8, fig9, path, during=None):
    from matplotlib.ticker import FuncFormatter, LogLocator

    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 4 if during else 3, figsize=(20 if during else 15, 8.5))
    for j, kind in enumerate(LOSSES):
        ax = axes[j, 0]
        for i, r in enumerate(x for x in fig7 if x["loss"] == kind):
            v = r["spectra_trained"][0]
            ax.plot(np.arange(1, len(v) + 1), v, "-", color=f"C{i}", lw=1.2,
                    label=f"{r['num_params']} params")
            v0 = r["spectra_init"][0]
            ax.plot(np.arange(1, len(v0) + 1), v0, ":", color=f"C{i}", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set(title=f"Figs. 4-5 ({kind.upper()}): ordered eigenvalues, seed 0\n"
                     "solid: stopping point, dotted: initialization",
               xlabel="rank", ylabel="eigenvalue (symlog, linear below 1e-4)")
        ax.legend(ncol=1)
    for j, kind in enumerate(LOSSES):
        ax = axes[j, 1]
        v = fig8[kind]
        lo = min(v["top_init"].min(), v["top_trained"].min())
        hi = max(v["top_init"].max(), v["top_trained"].max())
        bins = np.geomspace(lo, hi, 50)
        ax.hist(v["top_init"], bins=bins, alpha=0.6, label="at initialization")
        ax.hist(v["top_trained"], bins=bins, alpha=0.6, label="at the stopping point")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set(title=f"Fig. 8 ({kind.upper()}): lambda_max over {len(v['top_init'])} "
                     "initializations (162 params)",
               xlabel="largest Hessian eigenvalue (log scale)", ylabel="networks")
        ax.legend()
    d = np.array([r["std"] for r in fig9])
    med = np.stack([r["top5_median"] for r in fig9])
    lo_, hi_ = np.stack([r["top5_q25"] for r in fig9]), np.stack([r["top5_q75"] for r in fig9])
    ax = axes[0, 2]
    for i in range(med.shape[1]):
        ax.errorbar(d, med[:, i], yerr=[med[:, i] - lo_[:, i], hi_[:, i] - med[:, i]],
                    fmt="o-", ms=3, capsize=2, label=f"lambda_{i + 1}")
    ax.set(title="Fig. 9: top-5 eigenvalues at the stopping point (CE)",
           xlabel="standard deviation of the blobs (centres (1, 1), (-1, -1))",
           ylabel="eigenvalue (median, IQR; log)", yscale="log")
    ax.legend(ncol=2)
    ax = axes[1, 2]
    ax.plot(d, [r["final_loss_median"] for r in fig9], "o-", label="training loss")
    ax.plot(d, [r["grad_norm_median"] for r in fig9], "s-", label="gradient norm")
    ax.plot(d, [max(r["fraction_negative_median"], 1e-4) for r in fig9], "^-",
            label="fraction < -1e-3 lambda_max (floor 1e-4)")
    ax.axhline(GRAD_TOL, color="k", ls="--", lw=1, label=f"stopping rule |g| = {GRAD_TOL:g}")
    ax.set(title="Fig. 9: where training stopped (medians)", xlabel="standard deviation of "
           "the blobs", ylabel="value (log scale)", yscale="log",
           ylim=(1e-4, 30))  # headroom: the legend above the curves
    ax.legend(loc="upper right")
    if during:
        _plot_during(axes[0, 3], axes[1, 3], during)
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.tight_layout()
    ec.save_figure(fig, path)


def _plot_during(ax_spectra, ax_summary, during):
    """The paper's Fig. 7: ordered spectra of one network (seed 0) at each checkpoint, and the
    medians over seeds of lambda_max and the near-zero and negative fractions."""
    for i, r in enumerate(during):
        v = r["spectra"][0]
        ax_spectra.plot(np.arange(1, len(v) + 1), v, "-", color=f"C{i}", lw=1.1,
                        label=f"step {r['step']}")
    ax_spectra.set_xscale("log")
    ax_spectra.set_yscale("symlog", linthresh=1e-4)
    ax_spectra.set(title="Fig. 7: ordered eigenvalues during training\n(162 params, CE, seed 0)",
                   xlabel="rank", ylabel="eigenvalue (symlog, linear below 1e-4)")
    ax_spectra.legend(fontsize=9)
    steps = np.array([max(r["step"], 1) for r in during])
    ax_summary.plot(steps, [np.median(r["lambda_max"]) for r in during], "o-",
                    label="lambda_max")
    ax_summary.plot(steps, [np.median(r["fraction_near_zero"]) for r in during], "s-",
                    label="fraction abs(lambda) <= 1e-3 lambda_max")
    ax_summary.plot(steps, [max(np.median(r["fraction_negative"]), 1e-3) for r in during], "^-",
                    label="fraction < -1e-3 lambda_max (floor 1e-3)")
    ax_summary.set(xscale="log", yscale="log", xlabel="GD step (step 0 drawn at 1)",
                   ylabel="median over seeds", title="Fig. 7: during training (medians)")
    ax_summary.legend(fontsize=9)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the written HDF5 and JSON files (no recomputation)."""
    import json

    import h5py

    paths = ec.out_paths(NAME, out_dir, quick)
    payload = json.loads(paths["json"].read_text())
    fig7 = []
    with h5py.File(paths["h5"], "r") as handle:
        for r in payload["table"]:
            group = handle[f"fig7/{r['loss']}_{r['num_params']}"]
            fig7.append({"loss": r["loss"], "num_params": r["num_params"],
                         "spectra_init": group["init"][()],
                         "spectra_trained": group["trained"][()]})
        fig8 = {kind: {k: handle[f"fig8/{kind}/{k}"][()] for k in ("top_init", "top_trained")}
                for kind in LOSSES}
        during = [{"step": r["step"], "spectra": handle[f"during/step{r['step']}/spectra"][()],
                   **{k: np.array([r[k]["median"]]) for k in
                      ("lambda_max", "fraction_near_zero", "fraction_negative")}}
                  for r in payload.get("during_training", [])]
    fig9 = [{k: np.asarray(v) if isinstance(v, list) else v for k, v in r.items()}
            for r in payload["fig9"]]
    plot(fig7, fig8, fig9, paths["png"], during)


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
