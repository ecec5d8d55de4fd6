"""Training inside random affine subspaces, and the curvature that decides it (Fort and
Ganguli 2019, property 4; the "Goldilocks zone" of Fort and Scherlis 2019).

The claim: training confined to a random low-dimensional affine subspace ``w = w_init + P
theta`` (``P`` an ``M x d`` matrix with orthonormal columns, only ``theta`` in R^d trained)
succeeds when the subspace passes through a *Goldilocks zone*, a range of initialization
radii where the Hessian has an excess of positive curvature in random directions, and fails
outside it. This measures both, on a grid of radii:

* ``w_init = r * w_0`` with ``w_0`` the default (PyTorch) initialization and ``r`` a scale
  factor (r = 1 is the usual initialization);
* the **curvature in the subspace** at ``w_init``: ``H_P = P^T H P`` (d x d, from one block
  product of the package's :class:`HessianOperator` with the d columns of P, float32
  products accumulated in float64), its normalized trace ``tr(H_P) / ||H_P||_F`` (Fort and
  Scherlis' measure: sqrt(d) when every eigenvalue is equal and positive, 0 for a
  sign-symmetric spectrum) and its fraction of positive eigenvalues;
* **training in the subspace**: Adam on ``theta`` (full batch, 500 steps, theta starting at
  0), then the full training accuracy (chance is 0.10) and the distance moved
  ``||P theta|| / ||w_init||``. Two step rules: a fixed learning rate 0.01, and 0.01 x r, the
  same step relative to the radius (with the fixed rate, runs started at small r walk tens to
  hundreds of radii away, so their end point no longer depends on where they started).

Data and network: 1,000 MNIST digits, MLP 784-32-10 with ReLU (25,450 parameters), cross
entropy; d in {10, 100}; r in {0.03, 0.1, 0.3, 1, 3, 10}; seeds 0-4 (the seed draws w_0 and
P). Quick mode: 300 digits, MLP 784-16-10, d in {10, 50}, r in {0.1, 1, 10}, 200 steps, seeds
0-1.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator  # noqa: E402
from lanczos_hessian.curvature.params import ParameterSpace  # noqa: E402
from lanczos_hessian.examples.datasets import load_mnist  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "goldilocks"
LR = 0.01
STEP_RULES = ("fixed", "scaled")  # Adam lr = LR, or LR * r (the same step relative to r)
FULL = {"n": 1000, "hidden": 32, "dims": (10, 100), "radii": (0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
        "steps": 500, "seeds": (0, 1, 2, 3, 4)}
QUICK = {"n": 300, "hidden": 16, "dims": (10, 50), "radii": (0.1, 1.0, 10.0), "steps": 200,
         "seeds": (0, 1)}


def random_subspace(num_params: int, dim: int, seed: int) -> torch.Tensor:
    """``(M, d)`` float64 with orthonormal columns: a uniformly random d-dimensional subspace
    (QR of a Gaussian matrix)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    Q, _ = torch.linalg.qr(torch.randn(num_params, dim, generator=gen, dtype=torch.float64))
    return Q


def subspace_curvature(model, loss_fn, data, P: torch.Tensor) -> dict:
    """Curvature of the full-data loss restricted to span(P) at the model's point:
    ``H_P = P^T H P`` from one block product, its normalized trace and positive fraction."""
    op = HessianOperator(model, loss_fn, data, batch_size=len(data[0]), progress=False)
    HP = P.T @ op.apply(P).to(torch.float64).cpu()
    HP = (HP + HP.T) / 2
    values = torch.linalg.eigvalsh(HP).numpy()
    frob = float(torch.linalg.matrix_norm(HP))
    return {"normalized_trace": float(torch.trace(HP)) / frob if frob > 0 else float("nan"),
            "positive_fraction": float(np.mean(values > 0)),
            "lambda_max": float(values[-1]), "lambda_min": float(values[0])}


def train_in_subspace(model, loss_fn, data, P: torch.Tensor, steps: int, lr: float) -> dict:
    """Adam (learning rate ``lr``, full batch) on ``theta`` with the weights ``w_init + P theta``;
    the model's own parameters stay at ``w_init``. Returns the final full training loss and
    accuracy, the best accuracy along the way and ``||P theta|| / ||w_init||``, how far the
    walk in the subspace went relative to the starting radius."""
    space = ParameterSpace.of(model)
    w_init = space.flat_parameters(model).to(torch.float32)
    P32 = P.to(torch.float32)
    theta = torch.zeros(P.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([theta], lr=lr)
    x, y = data
    best = 0.0
    for step in range(steps + 1):
        params = space.split(w_init + P32 @ theta)
        logits = functional_call(model, params, (x,))
        loss = loss_fn(logits, y)
        accuracy = float((logits.argmax(1) == y).float().mean())
        best = max(best, accuracy)
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    travel = float(torch.linalg.vector_norm(P32 @ theta.detach()))
    return {"loss": float(loss.detach()), "accuracy": accuracy, "best_accuracy": best,
            "travel_over_radius": travel / float(torch.linalg.vector_norm(w_init))}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    cfg = QUICK if quick else FULL
    x, y = load_mnist(cfg["n"], flatten=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    seeds = tuple(seed + s for s in cfg["seeds"])
    rows = []
    for s in seeds:
        torch.manual_seed(s)
        model = mlp([784, cfg["hidden"], 10], "relu")
        space = ParameterSpace.of(model)
        w0 = space.flat_parameters(model)
        for d in cfg["dims"]:
            P = random_subspace(len(w0), d, s)
            for r in cfg["radii"]:
                with torch.no_grad():
                    for name, value in space.split(r * w0).items():
                        dict(model.named_parameters())[name].copy_(value)
                curvature = subspace_curvature(model, loss_fn, (x, y), P)
                fits = {}
                for rule in STEP_RULES:
                    lr = LR * r if rule == "scaled" else LR
                    fits[rule] = train_in_subspace(model, loss_fn, (x, y), P, cfg["steps"], lr)
                    rows.append({"seed": s, "dim": d, "radius": r, "rule": rule, "lr": lr,
                                 **curvature, **fits[rule]})
                echo(f"seed {s} d {d:3d} r {r:5g}: tr(H_P)/||H_P||_F "
                     f"{curvature['normalized_trace']:6.2f}, positive "
                     f"{curvature['positive_fraction']:.2f} | trained in the subspace, "
                     + "; ".join(f"lr {rule}: acc {f['accuracy']:.3f}, moved "
                                 f"{f['travel_over_radius']:.2g} x ||w_init||"
                                 for rule, f in fits.items()) + f" [{timer():.0f} s]")
    settings = {"experiment": NAME, "quick": quick, "seed": seed, "seeds": list(seeds),
                "n": cfg["n"], "hidden": cfg["hidden"], "dims": list(cfg["dims"]),
                "radii": list(cfg["radii"]), "steps": cfg["steps"], "learning_rate": LR,
                "step_rules": {"fixed": f"Adam lr {LR}", "scaled": f"Adam lr {LR} x r"},
                "optimizer": "Adam, full batch", "num_params": num_parameters(model),
                "paper": "Fort and Ganguli 2019 (property 4); Fort and Scherlis 2019"}
    summary = summarize(rows, cfg)
    columns = ["seed", "dim", "radius", "lr", "normalized_trace", "positive_fraction", "lambda_max",
               "lambda_min", "loss", "accuracy", "best_accuracy", "travel_over_radius"]
    with RunStore.create(paths["h5"], settings, overwrite=True) as writer:
        for rule in STEP_RULES:
            part = [r for r in rows if r["rule"] == rule]
            writer.write_arrays(f"runs_{rule}", {c: np.asarray([r[c] for r in part],
                                                               dtype=np.float64)
                                                 for c in columns})
    payload = {"experiment": NAME, "quick": quick, "settings": settings, "runs": rows,
               "summary": summary, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    plot(payload, paths["png"])
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def summarize(rows, cfg) -> dict:
    """Per (step rule, d, r): median and range over seeds of the accuracy, the curvature
    measures and the distance moved; per step rule, the rank correlation of the normalized
    trace with the accuracy over all its runs."""
    table = [cell([row for row in rows if (row["rule"], row["dim"], row["radius"]) == key],
                  key)
             for key in itertools.product(STEP_RULES, cfg["dims"], cfg["radii"])]
    spearmans = {}
    for rule in STEP_RULES:
        part = [row for row in rows if row["rule"] == rule]
        spearmans[rule] = spearman([row["normalized_trace"] for row in part],
                                   [row["accuracy"] for row in part])
    return {"table": table, "spearman_trace_accuracy": spearmans}


def cell(part, key) -> dict:
    """Mean, median, minimum and maximum over the seeds of one (rule, d, r) cell, and the
    seeds' values."""
    entry = dict(zip(("rule", "dim", "radius"), key))
    for name in ("accuracy", "normalized_trace", "positive_fraction", "travel_over_radius"):
        v = np.array([row[name] for row in part])
        entry[name] = {"mean": float(v.mean()), "median": float(np.median(v)),
                       "min": float(v.min()), "max": float(v.max()), "per_seed": v.tolist()}
    return entry


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def headline(d: dict) -> dict:
    """Per step rule and (d, r): the median accuracy, and the median normalized trace (which
    does not depend on the rule); per rule, the rank correlation of the two."""
    out = {}
    for e in d["summary"]["table"]:
        where = f"d = {e['dim']}, r = {e['radius']:g}"
        out[f"{where}: accuracy, lr {e['rule']}"] = e["accuracy"]["median"]
        out[f"{where}: tr(H_P) / ||H_P||_F"] = e["normalized_trace"]["median"]
    for rule, value in d["summary"]["spearman_trace_accuracy"].items():
        out[f"Spearman(normalized trace, accuracy), lr {rule}"] = value
    return out


def plot(d, path):
    """Accuracy after training in the subspace (both step rules), the curvature measures and
    the distance moved, against the radius: colour = subspace dimension, solid = fixed lr,
    dashed = lr scaled with r (median over seeds, bars: range)."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    panels = (("accuracy", "training accuracy after training in the subspace", STEP_RULES),
              ("normalized_trace", "tr(H_P) / ||H_P||_F at w_init", ("fixed",)),
              ("positive_fraction", "fraction of positive eigenvalues of H_P", ("fixed",)),
              ("travel_over_radius", "distance moved in the subspace / ||w_init||",
               STEP_RULES))
    styles = {"fixed": ("o-", f"lr {LR:g}"), "scaled": ("s--", f"lr {LR:g} x r")}
    for ax, (key, title, rules) in zip(axes, panels):
        for i, dim in enumerate(d["settings"]["dims"]):
            for rule in rules:
                part = [e for e in d["summary"]["table"]
                        if e["dim"] == dim and e["rule"] == rule]
                r = np.array([e["radius"] for e in part])
                med = np.array([e[key]["median"] for e in part])
                err = np.array([[m - e[key]["min"], e[key]["max"] - m]
                                for m, e in zip(med, part)]).T
                fmt, name = styles[rule]
                label = f"d = {dim}, {name}" if len(rules) > 1 else f"d = {dim}"
                ax.errorbar(r, med, yerr=err, fmt=fmt, ms=4, capsize=3, color=f"C{i}",
                            label=label)
        ax.set(xscale="log", xlabel="initialization radius r (w_init = r w_0)", title=title,
               ylabel=key.replace("_", " "))
        ax.axvline(1.0, color="k", lw=0.7, ls=":")
    axes[0].axhline(0.1, color="0.5", lw=0.8, ls="--", label="chance")
    axes[2].set_ylim(0, 1.02)
    axes[3].set_yscale("log")
    ec.finish_figure(fig, axes, path)


def replot(out_dir=None, quick=False):
    """Recompute the summary over seeds from the JSON's runs (no training), rewrite the
    JSON and redraw the PNG."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    payload = json.loads(paths["json"].read_text())
    payload["summary"] = summarize(payload["runs"], payload["settings"])
    ec.write_json(paths["json"], payload)
    plot(payload, paths["png"])


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
