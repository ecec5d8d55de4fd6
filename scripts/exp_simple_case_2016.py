"""The simple case of Sagun, Bottou and LeCun 2016 ("Eigenvalues of the Hessian in deep learning:
singularity and beyond", Sec. 3, Figs. 7-9): two 2-D Gaussian blobs, small networks.

Networks: 2-h-h-2 MLPs with tanh, ``h`` in {2, 6, 10, 14, 18}, which have
``h^2 + 6h + 2`` = 18, 74, 162, 282 and 434 parameters, the paper's counts (a 2-h-2 MLP has
``5h + 2`` parameters and cannot give 18). Two outputs; cross-entropy on the labels or mean
squared error on one-hot targets. Data: ``synthetic.two_blobs`` (centres at +-distance/2 on
the first axis, unit standard deviation), 1,000 samples, distance 4 unless varied.
Training: full-batch gradient descent, learning rate 0.1.

* Fig. 7: the exact Hessian spectrum of each network and loss at steps 0, 10, 100 and
  1,000 of training (dense, float64).
* Fig. 8: the top Hessian eigenvalue over 1,000 random initializations of the 162-parameter
  network (the paper used 5,000), at initialization and after 300 GD steps on 300 samples.
  On this shared 2-core CPU, under load, 50 networks on 500 samples took 5 s per 50 vmapped
  GD steps and 18 s for their 50 exact Hessians, so 5,000 networks on 1,000 samples for
  1,000 steps (several hours) were out of reach. All networks of one size are trained at
  once, ``torch.func.vmap`` over parameters stacked by ``torch.func.stack_module_state``
  (``functional_call`` of one base module), and every network's exact Hessian comes from a
  vmapped ``torch.func.hessian`` of the whole-data loss as a function of its flat parameter
  vector (checked against the package's dense Hessian for one network).
* Fig. 9: the top eigenvalues after training (300 steps, 300 samples) as the blobs move
  closer (distance 6 down to 0.5), for the same 100 initializations at every distance.

Quick mode: 200 samples, 200 steps, 16 networks for Fig. 8 and 8 per distance for Fig. 9.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, hessian, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian.storage.hdf5 import SpectrumWriter  # noqa: E402
from lanczos_hessian.examples.models import mlp, num_parameters  # noqa: E402
from lanczos_hessian.examples.synthetic import two_blobs  # noqa: E402
from lanczos_hessian.examples.training import train  # noqa: E402

NAME = "simple_case_2016"
WIDTHS = (2, 6, 10, 14, 18)  # 18, 74, 162, 282, 434 parameters
LR = 0.1


def network(h: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return mlp([2, h, h, 2], "tanh").double()


def loss_and_targets(kind, y):
    if kind == "ce":
        return torch.nn.CrossEntropyLoss(), y
    return torch.nn.MSELoss(), torch.nn.functional.one_hot(y, 2).double()


def blobs(n, distance, seed):
    x, y = two_blobs(n, distance=distance, std=1.0, rng=seed)
    return x.double(), y


# ---- many networks at once ----------------------------------------------------------------------
class Ensemble:
    """``B`` networks of one architecture as stacked parameters, trained and analysed by vmap."""

    def __init__(self, h: int, seeds, loss_fn):
        models = [network(h, int(s)) for s in seeds]
        self.params, _ = stack_module_state(models)
        self.params = {n: p.detach().clone() for n, p in self.params.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.names = list(self.params)
        self.shapes = [models[0].get_parameter(n).shape for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.loss_fn = loss_fn
        self.dim = sum(self.sizes)

    def _loss(self, params, x, y):
        return self.loss_fn(functional_call(self.base, params, (x,)), y)

    def train(self, x, y, steps: int, lr: float = LR):
        step = vmap(grad(self._loss), in_dims=(0, None, None))
        for _ in range(steps):
            g = step(self.params, x, y)
            self.params = {n: p - lr * g[n] for n, p in self.params.items()}

    def losses(self, x, y) -> np.ndarray:
        return vmap(self._loss, in_dims=(0, None, None))(self.params, x, y).detach().numpy()

    def flat(self) -> torch.Tensor:
        return torch.cat([self.params[n].reshape(len(self.params[n]), -1) for n in self.names], 1)

    def _flat_loss(self, w, x, y):
        parts = torch.split(w, self.sizes)
        params = {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}
        return self._loss(params, x, y)

    def hessians(self, x, y, chunk: int = 32) -> torch.Tensor:
        """``(B, M, M)`` exact Hessians of the whole-data loss, ``chunk`` networks at a time."""
        fn = vmap(hessian(self._flat_loss), in_dims=(0, None, None))
        W = self.flat()
        return torch.cat([fn(W[i:i + chunk], x, y) for i in range(0, len(W), chunk)])

    def eigenvalues(self, x, y, chunk: int = 32) -> np.ndarray:
        out = []
        W = self.flat()
        fn = vmap(hessian(self._flat_loss), in_dims=(0, None, None))
        for i in range(0, len(W), chunk):
            out.append(torch.linalg.eigvalsh(fn(W[i:i + chunk], x, y)).numpy())
        return np.concatenate(out)


# ---- the three figures ------------------------------------------------------------------------
def during_training(n, steps, seed, echo):
    """Fig. 7: dense spectra at a few steps, every size and both losses."""
    x, y = blobs(n, 4.0, seed)
    checkpoints = sorted({0, 10, min(100, steps), steps})
    out = []
    for kind in ("ce", "mse"):
        loss_fn, targets = loss_and_targets(kind, y)
        for h in WIDTHS:
            model = network(h, seed)
            done, spectra = 0, {}
            for c in checkpoints:
                train(model, loss_fn, x, targets, steps=c - done, lr=LR, rng=seed)
                done = c
                spectra[c] = ec.dense_eigenvalues(model, loss_fn, (x, targets))
            final = spectra[steps]
            top = final.max()
            row = {"loss": kind, "h": h, "num_params": num_parameters(model), "spectra": spectra,
                   "final_loss": float(loss_fn(model(x), targets).detach()),
                   "top": float(top),
                   "num_large": int(np.sum(final > 0.1 * top)),
                   "num_near_zero": int(np.sum(np.abs(final) <= 1e-3 * top)),
                   "fraction_near_zero": float(np.mean(np.abs(final) <= 1e-3 * top)),
                   "fraction_near_zero_init": float(np.mean(np.abs(spectra[0])
                                                            <= 1e-3 * spectra[0].max())),
                   "num_negative": int(np.sum(final < -1e-3 * top))}
            out.append(row)
            echo(f"  [fig7] {kind:3s} {row['num_params']:3d} params: loss {row['final_loss']:.3g}, "
                 f"top {top:.3g}, > 0.1 top: {row['num_large']}, |l| <= 1e-3 top: "
                 f"{row['num_near_zero']} ({row['fraction_near_zero']:.2f}; at init "
                 f"{row['fraction_near_zero_init']:.2f}), < -1e-3 top: {row['num_negative']}")
    return out


def many_initializations(n, num_nets, steps, h, seed, echo):
    """Fig. 8: the top eigenvalue over ``num_nets`` initializations, at init and trained."""
    x, y = blobs(n, 4.0, seed)
    out = {}
    for kind in ("ce", "mse"):
        loss_fn, targets = loss_and_targets(kind, y)
        seeds = 1000 + np.arange(num_nets)
        ens = Ensemble(h, seeds, loss_fn)
        timer = ec.Timer()
        init = ens.eigenvalues(x, targets)
        ens.train(x, targets, steps)
        final = ens.eigenvalues(x, targets)
        losses = ens.losses(x, targets)
        # one network against the package's dense Hessian (float64, products)
        model = network(h, int(seeds[0]))
        train(model, loss_fn, x, targets, steps=steps, lr=LR)
        reference = ec.dense_eigenvalues(model, loss_fn, (x, targets))
        check = float(np.max(np.abs(reference - final[0])) / np.abs(reference).max())
        out[kind] = {"top_init": init[:, -1], "top_trained": final[:, -1],
                     "second_trained": final[:, -2], "final_loss": losses,
                     "num_large_trained": (final > 0.1 * final[:, -1:]).sum(1),
                     "check_vs_dense_relative": check, "seconds": timer()}
        ti, tt = init[:, -1], final[:, -1]
        echo(f"  [fig8] {kind:3s} {num_nets} nets of {ens.dim} params, {steps} steps in "
             f"{timer():.0f} s: top eigenvalue at init {np.median(ti):.3g} (IQR "
             f"{np.subtract(*np.percentile(ti, [75, 25])):.3g}, cv {ti.std() / ti.mean():.2f}); "
             f"trained {np.median(tt):.3g} (IQR {np.subtract(*np.percentile(tt, [75, 25])):.3g}"
             f", cv {tt.std() / tt.mean():.2f}); vmapped vs dense {check:.1e}")
    return out


def separability(n, num_nets, steps, h, seed, distances, echo):
    """Fig. 9: the top eigenvalues after training against the distance of the blobs."""
    out = []
    loss_fn = torch.nn.CrossEntropyLoss()
    for distance in distances:
        x, y = blobs(n, distance, seed)
        ens = Ensemble(h, 1000 + np.arange(num_nets), loss_fn)
        ens.train(x, y, steps)
        values = ens.eigenvalues(x, y)
        losses = ens.losses(x, y)
        top = values[:, ::-1][:, :5]
        out.append({"distance": distance, "top5_median": np.median(top, 0),
                    "top5_q25": np.percentile(top, 25, 0), "top5_q75": np.percentile(top, 75, 0),
                    "final_loss_median": float(np.median(losses)),
                    "fraction_negative_median": float(np.median(np.mean(values < 0, 1)))})
        echo(f"  [fig9] distance {distance:g}: median loss {np.median(losses):.3g}, median top-5 "
             f"{np.array2string(np.median(top, 0), precision=3)}")
    return out


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        n, steps, num_nets, distances, nets9, n8, steps8 = 200, 200, 16, (0.5, 6.0), 8, 200, 200
    else:
        n, steps, num_nets, distances, nets9, n8, steps8 = (1000, 1000, 1000, (0.5, 1.0, 2.0,
                                                            3.0, 4.0, 6.0), 100, 300, 300)
    h8 = 10  # 162 parameters for Figs. 8 and 9
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "num_samples": n,
             "steps": steps, "fig8_fig9_num_samples": n8, "fig8_fig9_steps": steps8,
             "fig8_networks": num_nets, "fig9_networks_per_distance": nets9,
             "learning_rate": LR, "activation": "tanh",
             "architectures": [f"2-{h}-{h}-2" for h in WIDTHS],
             "paper": "Sagun, Bottou, LeCun 2016, Sec. 3, Figs. 7-9"}
    fig7 = during_training(n, steps, seed, echo)
    fig8 = many_initializations(n8, num_nets, steps8, h8, seed, echo)
    fig9 = separability(n8, nets9, steps8, h8, seed, distances, echo)
    with SpectrumWriter(paths["h5"], attrs, overwrite=True) as writer:
        for row in fig7:
            group = f"fig7/{row['loss']}_{row['num_params']}"
            writer.write_arrays(group, {f"step_{c}": v for c, v in row["spectra"].items()})
            writer.set_attrs(group, {k: v for k, v in row.items() if k != "spectra"})
        for kind, value in fig8.items():
            writer.write_arrays(f"fig8/{kind}", {k: v for k, v in value.items()
                                                 if isinstance(v, np.ndarray)})
        writer.write_arrays("fig9", {
            "distance": np.array([r["distance"] for r in fig9]),
            "top5_median": np.stack([r["top5_median"] for r in fig9]),
            "top5_q25": np.stack([r["top5_q25"] for r in fig9]),
            "top5_q75": np.stack([r["top5_q75"] for r in fig9])})
    summary = summarize(fig7, fig8, fig9)
    echo(summary["text"])
    plot(fig7, fig8, fig9, steps, steps8, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "fig7": [{k: v for k, v in r.items() if k != "spectra"} for r in fig7],
               "fig8": {kind: {"top_init_median": float(np.median(v["top_init"])),
                               "top_init_cv": float(v["top_init"].std() / v["top_init"].mean()),
                               "top_trained_median": float(np.median(v["top_trained"])),
                               "top_trained_cv": float(v["top_trained"].std()
                                                       / v["top_trained"].mean()),
                               "top_trained_quantiles": np.percentile(v["top_trained"],
                                                                      [5, 25, 50, 75, 95]),
                               "final_loss_median": float(np.median(v["final_loss"])),
                               "check_vs_dense_relative": v["check_vs_dense_relative"],
                               "num_networks": len(v["top_init"]), "seconds": v["seconds"]}
                        for kind, v in fig8.items()},
               "fig9": fig9, "summary": summary, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def summarize(fig7, fig8, fig9) -> dict:
    lines = []
    for kind in ("ce", "mse"):
        rows = [r for r in fig7 if r["loss"] == kind]
        lines.append(f"{kind}: params {[r['num_params'] for r in rows]}; eigenvalues > 0.1 top "
                     f"{[r['num_large'] for r in rows]}; near zero "
                     f"{[r['num_near_zero'] for r in rows]}")
    tops = [float(np.mean(r["top5_median"][:2])) for r in fig9]
    d = [r["distance"] for r in fig9]
    lines.append(f"fig9: mean of the top-2 median eigenvalues against distance {d}: "
                 f"{np.round(tops, 4).tolist()}")
    return {"text": "\n".join(lines), "fig9_top2": tops, "fig9_distance": d}


def plot(fig7, fig8, fig9, steps, steps8, path):
    plt = ec.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    for j, kind in enumerate(("ce", "mse")):
        ax = axes[j, 0]
        for i, row in enumerate(r for r in fig7 if r["loss"] == kind):
            for c, style in ((0, ":"), (steps, "-")):
                v = np.sort(row["spectra"][c])[::-1]
                ax.plot(np.arange(1, len(v) + 1), v, style, color=f"C{i}", lw=1,
                        label=f"{row['num_params']} p" + (" (init)" if c == 0 else ""))
        ax.set(title=f"Fig. 7 ({kind}): ordered eigenvalues, init (dotted) and trained",
               xlabel="rank", ylabel="eigenvalue", xscale="log", yscale="symlog")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.legend(ncol=2, fontsize=6)
    for j, kind in enumerate(("ce", "mse")):
        ax = axes[j, 1]
        v = fig8[kind]
        bins = np.geomspace(min(v["top_init"].min(), v["top_trained"].min()),
                            max(v["top_init"].max(), v["top_trained"].max()), 50)
        ax.hist(v["top_init"], bins=bins, alpha=0.6, label="at initialization")
        ax.hist(v["top_trained"], bins=bins, alpha=0.6, label=f"after {steps8} GD steps")
        ax.set(title=f"Fig. 8 ({kind}): top eigenvalue, {len(v['top_init'])} initializations",
               xlabel="top Hessian eigenvalue", ylabel="networks", xscale="log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.legend()
    ax = axes[0, 2]
    d = np.array([r["distance"] for r in fig9])
    med = np.stack([r["top5_median"] for r in fig9])
    lo = np.stack([r["top5_q25"] for r in fig9])
    hi = np.stack([r["top5_q75"] for r in fig9])
    for i in range(med.shape[1]):
        ax.errorbar(d, med[:, i], yerr=[med[:, i] - lo[:, i], hi[:, i] - med[:, i]], fmt="o-",
                    ms=3, capsize=2, label=f"lambda_{i + 1}")
    ax.set(title="Fig. 9: top eigenvalues (trained, CE) vs blob distance", xlabel="distance "
           "between the blob centres (std 1)", ylabel="eigenvalue (median, IQR)", yscale="log")
    ax.legend()
    ax = axes[1, 2]
    ax.plot(d, [r["final_loss_median"] for r in fig9], "o-")
    ax.set(title="Fig. 9: median training loss", xlabel="distance", ylabel="loss", yscale="log")
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.tight_layout()
    ec.save_figure(fig, path)


if __name__ == "__main__":
    args = ec.parse_args(__doc__.splitlines()[0])
    main(quick=args.quick, out_dir=args.out_dir, seed=args.seed)
