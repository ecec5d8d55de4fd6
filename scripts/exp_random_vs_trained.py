"""The Hessian spectrum at a random point and after training, on MNIST and on random inputs
(Sagun et al. 2018, Fig. 1; Sagun, Bottou and LeCun 2016, Figs. 1-2).

An MLP 784-32-10 with ReLU (25,450 parameters), cross-entropy, on 1,000 real MNIST digits
(standardized) and on 1,000 random inputs (i.i.d. N(0, 1) pixels, the same shape) with random
labels. Full-batch gradient descent, learning rate 0.1, 2,000 steps, from the same seeded
initialization. At initialization and after training: the top 20 and bottom 10 eigenvalues of
the full-dataset Hessian (one Lanczos run, float64, tol 1e-6) and its spectral density by
stochastic Lanczos quadrature (10 Rademacher probes x 60 steps, deflated by the 30 computed
eigenpairs).

The claims: at a random point the bulk is wider and has a sizeable negative part; after
training the spectrum is a bulk concentrated at zero plus a few positive outliers, the bulk
becoming more singular. Quick mode: 300 samples, an MLP 784-16-10, 300 steps, smaller solves.
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
from lanczos_hessian.examples.models import mlp  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "random_vs_trained"
LR = 0.1


def datasets(n, seed):
    x, y = load_mnist(n, flatten=True)
    g = torch.Generator().manual_seed(seed)
    xr = torch.randn(x.shape, generator=g)
    yr = torch.randint(0, 10, (n,), generator=g)
    return {"MNIST": (x, y), "random": (xr, yr)}


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        n, hidden, steps, k_top, k_bottom = 300, 16, 300, 10, 5
        probes, lsteps, tol = 4, 30, 1e-4
    else:
        n, hidden, steps, k_top, k_bottom = 1000, 32, 2000, 20, 10
        probes, lsteps, tol = 10, 60, 1e-6
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": n,
             "widths": [784, hidden, 10], "steps": steps, "learning_rate": LR,
             "paper": "Sagun et al. 2018 Fig. 1; Sagun, Bottou, LeCun 2016 Figs. 1-2"}
    runs = {}
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for name, (x, y) in datasets(n, seed).items():
            torch.manual_seed(seed)
            model = mlp([784, hidden, 10], "relu")
            loss_fn = torch.nn.CrossEntropyLoss()
            for point in ("init", "trained"):
                if point == "trained":
                    history = train(model, loss_fn, x, y, steps=steps, lr=LR, rng=seed)
                    writer.write_arrays(f"{name}_training", {"loss": np.asarray(history)})
                loss, acc = evaluate(model, loss_fn, x, y)
                r = ec.eigs_and_density(ec.float64_copy(model), loss_fn, (x.double(), y),
                                        k_top=k_top, k_bottom=k_bottom, tol=tol,
                                        num_probes=probes, num_steps=lsteps, seed=seed,
                                        batch_size=n, writer=writer, run=f"{name}_{point}")
                r.update(loss=loss, accuracy=acc)
                runs[(name, point)] = r
                echo(f"{name:6s} {point:7s}: loss {loss:.3g} acc {acc:.3f} | top "
                     f"{r['top'][0]:.3g}, 10th {r['top'][9]:.3g}, bottom {r['bottom'][0]:.3g} | "
                     f"outliers gap {r['counts'].gap} | mass < -delta {r['mass_below']:.3f}, "
                     f"|l| <= delta {r['mass_near_zero']:.3f} (delta = 1e-2 lambda_max) "
                     f"[{timer():.0f} s]")
    plot(runs, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "runs": {f"{a}_{b}": {"loss": r["loss"], "accuracy": r["accuracy"],
                                     "top": r["top"], "bottom": r["bottom"],
                                     "outliers": ec.counts_dict(r["counts"]),
                                     "mass_below_minus_delta": r["mass_below"],
                                     "mass_within_delta": r["mass_near_zero"],
                                     "mass_below_1e-3_lmax": r["mass_below_small"],
                                     "delta": r["delta"],
                                     "top_over_bottom": r["top"][0] / abs(r["bottom"][0]),
                                     "converged": r["converged"],
                                     "slq": ec.quadrature_record(r["slq"])}
                        for (a, b), r in runs.items()},
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload



def headline(d: dict) -> dict:
    """The numbers the claims rest on, for the seed spread (``scripts/exp_seeds.py``):
    lambda_max / abs(lambda_min) and the mass within 1e-2 lambda_max of zero at both points,
    and the ratio-rule outlier count after training, for MNIST and for random inputs."""
    out = {}
    for data in ("MNIST", "random"):
        for point in ("init", "trained"):
            r = d["runs"][f"{data}_{point}"]
            out[f"{data} {point}: top / abs(bottom)"] = r["top_over_bottom"]
            out[f"{data} {point}: mass within 1e-2 lambda_max"] = r["mass_within_delta"]
        r = d["runs"][f"{data}_trained"]
        out[f"{data} trained: outliers (ratio rule)"] = r["outliers"]["ratio"]
        out[f"{data} trained: lambda_1 / lambda_10"] = r["top"][0] / r["top"][9]
    return out


#: Kernel widths of the density panels, as fractions of each run's lambda_max: 0.02 is at
#: least the largest gap between neighbouring Gauss nodes of the 10 probes pooled (<= 0.017
#: lambda_max over the drawn range on every run but random-init's top fifth, 0.05), so the
#: curve is the spectrum's and not a row of node lobes.
DENSITY_WIDTH = 0.02


def plot(runs, path):
    """Top eigenvalues; the deflated bulk's density (log scale, Lanczos eigenvalues as ticks,
    not kernels); without a kernel, the fraction of eigenvalues with ``abs(lambda) > t``
    with its Gauss-quadrature brackets (:func:`expcommon.draw_tails`)."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, ((name, point), r) in enumerate(runs.items()):
        style = dict(color=f"C{0 if name == 'MNIST' else 3}", ls="-" if point == "trained" else ":")
        label = f"{name}, {point}"
        axes[0].plot(np.arange(1, len(r["top"]) + 1), r["top"], marker="o", ms=2, label=label,
                     **style)
        lam = abs(r["top"][0])
        grid = np.linspace(-0.6, 1.05, 1651) * lam
        phi = ec.bulk_density(r["slq"], grid, DENSITY_WIDTH * lam)
        axes[1].plot(grid / lam, np.maximum(phi * lam, 1e-7), lw=1, label=label, **style)
        exact = np.concatenate([r["top"], r["bottom"]])
        axes[1].plot(exact / lam, np.full(exact.size, 2e-4 * 3.0 ** i), "|", ms=6,
                     color=style["color"])
        ec.draw_tails(axes[2], r["slq"], lam, exact, style["color"], label, style["ls"],
                      tick_y=2e-5 * 1.6 ** i, absolute=True)
    top = max(r["top"][0] for r in runs.values())
    axes[0].set(title="top eigenvalues (Lanczos)", xlabel="rank", ylabel="eigenvalue",
                yscale="log", ylim=(None, 30 * top))  # headroom: the legend above the lines
    axes[1].set(title=f"bulk density (SLQ, kernel {DENSITY_WIDTH} lambda_max); "
                "ticks: Lanczos", xlabel="lambda / lambda_max", ylabel="density x lambda_max",
                yscale="log", ylim=(1e-4, 300))
    ec.tails_axis(axes[2], "fraction of eigenvalues with abs(lambda) > t\n"
                           "SLQ, no kernel; band: Gauss brackets (99.7%)")
    ec.finish_figure(fig, axes, path)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON alone (its Gauss rules; no recomputation)."""
    import json

    paths = ec.out_paths(NAME, out_dir, quick)
    saved = json.loads(paths["json"].read_text())["runs"]
    plot({tuple(n.split("_")): {"top": np.asarray(r["top"]), "bottom": np.asarray(r["bottom"]),
                                "slq": ec.quadrature_from_record(r["slq"])}
          for n, r in saved.items()}, paths["png"])


if __name__ == "__main__":
    ec.command_line(__doc__, main, replot)
