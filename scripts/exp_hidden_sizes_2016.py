"""Sagun, Bottou and LeCun 2016, Fig. 1 right and Fig. 2: exact Hessian spectra of 784-k-k-10
networks on MNIST as k grows, and of the same architecture on random inputs against MNIST.

[S16] Sec. 2: 1,000 MNIST digits, ReLU, softmax with negative log-likelihood, full-batch
gradient descent; Fig. 1 right: the eigenvalue histograms after training for growing k (its
parameter count ``(784+1)k + (k+1)k + (k+1)10`` is two hidden layers of k); Fig. 2: the
k = 10 network at a random point on MNIST and on random inputs, and after training on random
inputs. Here: k = 2, 3 and 5 (1,606 to 4,015 parameters; the exact float64 Hessian and all its
eigenvalues), GD at learning rate 0.1 for 2,000 steps, Fig. 2 at k = 5; random inputs are
i.i.d. N(0, 1) pixels with random labels. Five seeds (initialization, and the random inputs).

Per spectrum: lambda_max, lambda_min, the fraction of eigenvalues within 1e-3 lambda_max of
zero ("singular"), the fraction below -1e-3 lambda_max. Quick mode: 150 digits, k = 1 and 2,
Fig. 2 at k = 2, 300 steps, two seeds. ``--trained-k K [SEED ...]``: Fig. 1 right at width K
alone (trained spectra only, seeds 0-4 by default), e.g. the paper's k = 10.
``--fig2-k K [SEED ...]``: Fig. 2 at width K alone (MNIST and random inputs at the random
point, random inputs trained; seeds 0-4 by default), its own JSON and a figure of the first
seed, e.g. the paper's k = 10.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.examples.datasets import load_mnist  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402
from lanczos_hessian.storage.runstore import RunStore  # noqa: E402

NAME = "hidden_sizes_2016"
LR = 0.1
FULL = {"n": 1000, "ks": (2, 3, 5), "fig2_k": 5, "steps": 2000, "seeds": 5}
QUICK = {"n": 150, "ks": (1, 2), "fig2_k": 2, "steps": 300, "seeds": 2}


def stats(values: np.ndarray) -> dict:
    """The summary of one exact spectrum (ascending ``values``)."""
    top = float(values[-1])
    return {"lambda_max": top, "lambda_min": float(values[0]),
            "near_zero": float(np.mean(np.abs(values) <= 1e-3 * top)),
            "below": float(np.mean(values < -1e-3 * top))}


def spectrum(k, x, y, seed, steps):
    """All eigenvalues of the exact Hessian of a seeded 784-k-k-10 ReLU MLP after ``steps``
    GD steps (none: the random point), with the final loss and accuracy."""
    torch.manual_seed(seed)
    model = mlp([784, k, k, 10], "relu")
    loss_fn = torch.nn.CrossEntropyLoss()
    if steps:
        train(model, loss_fn, x, y, steps=steps, lr=LR, rng=seed)
    loss, acc = evaluate(model, loss_fn, x, y)
    values = ec.dense_eigenvalues(model, loss_fn, (x, y), batch_size=len(x))
    return values, {"num_params": num_parameters(model), "loss": loss, "accuracy": acc,
                    **stats(values)}


def random_inputs(x, y, seed: int) -> tuple:
    """The random-input set of a seed: i.i.d. N(0, 1) pixels of ``x``'s shape and uniformly
    random labels in 0-9."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=g), torch.randint(0, 10, (len(y),), generator=g)


def fig2_spectra(k, x, y, seed, steps, echo, timer):
    """[S16] Fig. 2 for one seed at width ``k``: the exact spectra of the 784-k-k-10 network at
    its random point on MNIST, at the same point on random inputs, and after ``steps`` GD
    steps on the random inputs; yields ``(key, eigenvalues, row)`` for each."""
    xr, yr = random_inputs(x, y, seed)
    for data, (xx, yy), n_steps in (("MNIST", (x, y), 0), ("random", (xr, yr), 0),
                                    ("random", (xr, yr), steps)):
        point = "trained" if n_steps else "init"
        values, row = spectrum(k, xx, yy, seed, n_steps)
        echo(f"seed {seed} {data} {point} k={k}: lmax {row['lambda_max']:.3g} lmin "
             f"{row['lambda_min']:.3g} | near 0 {row['near_zero']:.3f} [{timer():.0f} s]")
        yield (f"{data}_k{k}_{point}", values,
               {"seed": seed, "k": k, "data": data, "point": point, **row})


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    cfg = QUICK if quick else FULL
    paths = ec.out_paths(NAME, out_dir, quick)
    x, y = load_mnist(cfg["n"], flatten=True)
    seeds = [seed + s for s in range(cfg["seeds"])]
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "seeds": seeds,
             "num_samples": cfg["n"], "hidden": list(cfg["ks"]), "fig2_hidden": cfg["fig2_k"],
             "steps": cfg["steps"], "learning_rate": LR,
             "paper": "Sagun, Bottou, LeCun 2016, Fig. 1 right and Fig. 2"}
    fig1, fig2, drawn = [], [], {}
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for s in seeds:
            for k in cfg["ks"]:
                values, row = spectrum(k, x, y, s, cfg["steps"])
                writer.write_arrays(f"seed{s}/mnist_k{k}_trained", {"eigenvalues": values})
                fig1.append({"seed": s, "k": k, **row})
                if s == seed:
                    drawn[f"MNIST, k = {k}, trained"] = values
                echo(f"seed {s} k={k} ({row['num_params']} p): loss {row['loss']:.2g} | lmax "
                     f"{row['lambda_max']:.3g} | near 0 {row['near_zero']:.3f} | below "
                     f"{row['below']:.4f} [{timer():.0f} s]")
            for key, values, row in fig2_spectra(cfg["fig2_k"], x, y, s, cfg["steps"], echo,
                                                 timer):
                writer.write_arrays(f"seed{s}/{key}", {"eigenvalues": values})
                fig2.append(row)
                if s == seed:
                    drawn[f"{row['data']}, k = {cfg['fig2_k']}, {row['point']}"] = values
    plot(drawn, cfg, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs, "fig1": fig1,
               "fig2": fig2, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def plot(drawn: dict, cfg, path):
    """Histograms (log counts) of the exact spectra of the first seed: Fig. 1 right (trained,
    growing k) and Fig. 2 (k fixed: MNIST at init, random inputs at init and trained)."""
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, keys in ((axes[0], [f"MNIST, k = {k}, trained" for k in cfg["ks"]]),
                     (axes[1], [f"MNIST, k = {cfg['fig2_k']}, init",
                                f"random, k = {cfg['fig2_k']}, init",
                                f"random, k = {cfg['fig2_k']}, trained"])):
        for i, key in enumerate(keys):
            values = drawn[key]
            scaled = values / values[-1]
            ax.hist(scaled, bins=np.linspace(-1, 1, 201), histtype="step", lw=1,
                    color=f"C{i}", label=f"{key} ({values.size} p, lmax {values[-1]:.3g})")
        ax.set(yscale="log", xlabel="lambda / lambda_max (bins of 0.01)", ylabel="count")
    axes[0].set_xlim(-0.1, 1.02)  # after training nothing lies below -0.1 lambda_max
    axes[0].set_title("[S16] Fig. 1 right: trained, growing k (exact)")
    axes[1].set_title("[S16] Fig. 2: MNIST against random inputs (exact)")
    ec.finish_figure(fig, axes, path)


def replot(out_dir=None, quick: bool = False) -> None:
    """Redraw the PNG from the HDF5 file (the first seed's spectra)."""
    import json

    import h5py

    paths = ec.out_paths(NAME, out_dir, quick)
    settings = json.loads(paths["json"].read_text())["settings"]
    cfg = {"ks": settings["hidden"], "fig2_k": settings["fig2_hidden"]}
    k, drawn = cfg["fig2_k"], {}
    with h5py.File(paths["h5"], "r") as f:
        group = f[f"seed{settings['seed']}"]
        for h in cfg["ks"]:
            drawn[f"MNIST, k = {h}, trained"] = group[f"mnist_k{h}_trained/eigenvalues"][()]
        for data, point in (("MNIST", "init"), ("random", "init"), ("random", "trained")):
            drawn[f"{data}, k = {k}, {point}"] = group[f"{data}_k{k}_{point}/eigenvalues"][()]
    plot(drawn, cfg, paths["png"])


def trained_only(k: int, seeds, n: int = 1000, steps: int = 2000, out_dir=None,
                 echo=ec.log) -> dict:
    """Fig. 1 right at one more width ``k`` alone: the exact spectrum of the trained 784-k-k-10
    network (the recipe of :func:`main`) for each seed, summarized by :func:`stats`; written
    to ``exp_hidden_sizes_2016_k<k>.json`` and drawn, every seed, in
    ``exp_hidden_sizes_2016_k<k>.png`` (no HDF5 file)."""
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, False)
    x, y = load_mnist(n, flatten=True)
    rows, drawn = [], {}
    for s in seeds:
        drawn[s], row = spectrum(k, x, y, s, steps)
        rows.append({"seed": s, "k": k, **row})
        echo(f"seed {s} k={k} ({row['num_params']} p): loss {row['loss']:.2g} | acc "
             f"{row['accuracy']:.3f} | lmax {row['lambda_max']:.3g} | near 0 "
             f"{row['near_zero']:.3f} | below {row['below']:.4f} [{timer():.0f} s]")
    payload = {"experiment": NAME, "part": f"k{k} trained only", "num_samples": n,
               "steps": steps, "learning_rate": LR, "seeds": list(seeds), "fig1": rows,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"].with_name(f"exp_{NAME}_k{k}.json"), payload)
    plot_trained(drawn, k, paths["png"].with_name(f"exp_{NAME}_k{k}.png"))
    return payload


def plot_trained(drawn: dict, k: int, path) -> None:
    """Fig. 1 right at width ``k`` alone: histograms (log counts, bins of 0.01 lambda_max) of
    the trained exact spectrum of every seed (``drawn``: seed -> ascending eigenvalues)."""
    plt = ec.pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(6.5, 4))
    for i, (seed, values) in enumerate(drawn.items()):
        ax.hist(values / values[-1], bins=np.linspace(-1, 1, 201), histtype="step", lw=1,
                color=f"C{i}", label=f"seed {seed} ({values.size} p, lmax {values[-1]:.3g})")
    ax.set(yscale="log", xlim=(-0.1, 1.02), ylabel="count",
           xlabel="lambda / lambda_max (bins of 0.01)",
           title=f"[S16] Fig. 1 right at k = {k}: MNIST, trained (exact)")
    ec.finish_figure(fig, [ax], path)


def fig2_only(k: int, seeds, n: int = 1000, steps: int = 2000, out_dir=None,
              echo=ec.log) -> dict:
    """[S16] Fig. 2 at width ``k`` alone (:func:`fig2_spectra` for each seed): written to
    ``exp_hidden_sizes_2016_fig2_k<k>.{json,h5,png}``, the figure drawing the first seed."""
    ec.setup()
    timer = ec.Timer()
    paths = {ext: p.with_name(f"exp_{NAME}_fig2_k{k}.{ext}")
             for ext, p in ec.out_paths(NAME, out_dir, False).items()}
    x, y = load_mnist(n, flatten=True)
    attrs = {"experiment": NAME, "part": f"fig2 k{k}", "num_samples": n, "steps": steps,
             "learning_rate": LR, "seeds": list(seeds), "fig2_hidden": k,
             "paper": "Sagun, Bottou, LeCun 2016, Fig. 2"}
    rows, drawn = [], {}
    with RunStore.create(paths["h5"], attrs, overwrite=True) as writer:
        for s in seeds:
            for key, values, row in fig2_spectra(k, x, y, s, steps, echo, timer):
                writer.write_arrays(f"seed{s}/{key}", {"eigenvalues": values})
                rows.append(row)
                if s == seeds[0]:
                    drawn[f"{row['data']}, k = {k}, {row['point']}"] = values
    plot_fig2(drawn, k, paths["png"])
    payload = {"experiment": NAME, "part": f"fig2 k{k}", "settings": attrs, "fig2": rows,
               "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    return payload


def plot_fig2(drawn: dict, k: int, path) -> None:
    """Fig. 2 alone: histograms (log counts) of one seed's three spectra at width ``k``."""
    plt = ec.pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(6.5, 4))
    for i, key in enumerate([f"MNIST, k = {k}, init", f"random, k = {k}, init",
                             f"random, k = {k}, trained"]):
        values = drawn[key]
        ax.hist(values / values[-1], bins=np.linspace(-1, 1, 201), histtype="step", lw=1,
                color=f"C{i}", label=f"{key} ({values.size} p, lmax {values[-1]:.3g})")
    ax.set(yscale="log", xlabel="lambda / lambda_max (bins of 0.01)", ylabel="count",
           title=f"[S16] Fig. 2 at k = {k}: MNIST against random inputs (exact)")
    ec.finish_figure(fig, [ax], path)


if __name__ == "__main__":
    if "--fig2-k" in sys.argv:  # --fig2-k K [SEED ...]: Fig. 2 at width K alone
        i = sys.argv.index("--fig2-k")
        rest = [int(v) for v in sys.argv[i + 2:] if v.isdigit()]
        fig2_only(int(sys.argv[i + 1]), rest or list(range(FULL["seeds"])))
    elif "--trained-k" in sys.argv:  # --trained-k K [SEED ...]: Fig. 1 right at width K alone
        i = sys.argv.index("--trained-k")
        rest = [int(v) for v in sys.argv[i + 2:] if v.isdigit()]
        trained_only(int(sys.argv[i + 1]), rest or list(range(FULL["seeds"])))
    else:
        ec.command_line(__doc__, main, replot)
