"""Large batch, then small batch: two solutions in one basin (Sagun et al. 2018, Sec. 4.1,
Figs. 8-9).

The paper trains a bare AlexNet (no dropout, no batch-norm) on CIFAR-10 with a large batch,
continues from that solution with a small batch at the same learning rate, and evaluates
the loss and accuracy on the straight line through both end points, extended beyond them:
the line shows no barrier between the two (they lie in one basin, connected through its flat
directions) even though the small-batch run first climbed and then descended along its own
path. CIFAR-10 is not available offline here, so this runs on **Fashion-MNIST** (the Debian
package's files) with ``models.alexnet_bare(1, 10, 28)`` (1,384,586 parameters); and because
one full-dataset Hessian-vector product of this network costs seconds per few hundred images
on this 2-core CPU, on a 512-image training subset (balanced) and a 512-image test subset.

Protocol: SGD at learning rate 0.05: 600 steps with batches of 256 (the large-batch point
w_LB, 300 epochs of the subset), then 300 steps with batches of 16 from w_LB (the
small-batch point w_SB); training and
test loss and accuracy at ``w(t) = (1 - t) w_LB + t w_SB`` for 21 values of t in [-0.5, 1.5]
(``geometry.line_profile``, whole subsets); the top 2 eigenvalues at both ends of the Hessian
of the loss on the first 128 training images (one product of this network on 128 images took
about 5 s here; Lanczos, tol 1e-2, at most 20 products each: the residual bounds are
reported). Quick mode: 64 + 64 images, 10 + 10 steps (batches 32 and 4), 9 line points, the
top eigenvalue on the 64 images with at most 8 products.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator, lanczos_eigsh  # noqa: E402
from lanczos_hessian.examples.datasets import load_fashion_mnist  # noqa: E402
from lanczos_hessian.analysis.geometry import line_profile  # noqa: E402
from lanczos_hessian.storage.hdf5 import SpectrumWriter  # noqa: E402
from lanczos_hessian.examples.models import alexnet_bare, num_parameters  # noqa: E402
from lanczos_hessian.curvature.params import ParameterSpace  # noqa: E402
from lanczos_hessian.examples.training import evaluate, train  # noqa: E402

NAME = "same_basin"
LR = 0.05


def top_eigenvalues(model, loss_fn, data, k, max_matvecs, seed):
    op = HessianOperator(model, loss_fn, data, batch_size=128)
    import warnings

    with warnings.catch_warnings():  # an unconverged budget is reported, not raised
        warnings.simplefilter("ignore")
        r = lanczos_eigsh(op, k=k, which="LA", tol=1e-2, rng=seed, max_matvecs=max_matvecs,
                          ncv=max(2 * k + 1, 10))
    order = np.argsort(r.eigenvalues)[::-1]
    return r.eigenvalues[order], r.residual_bounds[order], int(r.num_matvecs)


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    if quick:
        n, (bl, sl), (bs, ss), points, k, budget, nh = 64, (32, 10), (4, 10), 9, 1, 8, 64
    else:
        n, (bl, sl), (bs, ss), points, k, budget, nh = 512, (256, 600), (16, 300), 21, 2, 20, 128
    x, y = load_fashion_mnist("train", n)
    xt, yt = load_fashion_mnist("test", n)
    attrs = {"experiment": NAME, "quick": quick, "seed": seed, "dataset": "Fashion-MNIST",
             "num_train": n, "num_test": n, "model": "alexnet_bare(1, 10, 28)",
             "learning_rate": LR, "large_batch": bl, "large_steps": sl, "small_batch": bs,
             "small_steps": ss, "hessian_samples": nh,
             "paper": "Sagun et al. 2018, Sec. 4.1, Figs. 8-9 (CIFAR-10 there; Fashion-MNIST "
             "here, CIFAR-10 is not available offline)"}
    torch.manual_seed(seed)
    model = alexnet_bare(1, 10, 28)
    loss_fn = torch.nn.CrossEntropyLoss()
    space = ParameterSpace.of(model)
    history_lb = train(model, loss_fn, x, y, steps=sl, lr=LR, batch_size=bl, rng=seed)
    w_lb = space.flat_parameters(model)
    ends = {"LB": evaluate(model, loss_fn, x, y) + evaluate(model, loss_fn, xt, yt)}
    echo(f"large batch {bl} x {sl} steps: train loss {ends['LB'][0]:.3g} acc {ends['LB'][1]:.3f}, "
         f"test acc {ends['LB'][3]:.3f} [{timer():.0f} s]")
    # the small-batch path, with its full-dataset training loss every few steps
    path_loss = []

    def record(step, m):
        if step % max(ss // 15, 1) == 0 or step == ss - 1:
            path_loss.append((step + 1, evaluate(m, loss_fn, x, y)[0]))

    history_sb = train(model, loss_fn, x, y, steps=ss, lr=LR, batch_size=bs, rng=seed + 1,
                       callback=record)
    w_sb = space.flat_parameters(model)
    ends["SB"] = evaluate(model, loss_fn, x, y) + evaluate(model, loss_fn, xt, yt)
    echo(f"then small batch {bs} x {ss} steps: train loss {ends['SB'][0]:.3g} acc "
         f"{ends['SB'][1]:.3f}, test acc {ends['SB'][3]:.3f}; |w_SB - w_LB| = "
         f"{float(torch.linalg.vector_norm(w_sb - w_lb)):.3g} [{timer():.0f} s]")
    t = np.linspace(-0.5, 1.5, points)
    profile = line_profile(model, loss_fn, {"train": (x, y), "test": (xt, yt)}, w_lb, w_sb, t,
                           batch_size=256)
    echo(f"line: train loss {np.array2string(profile.losses['train'], precision=3)} "
         f"[{timer():.0f} s]")
    hessian = {}
    for name, w in (("LB", w_lb), ("SB", w_sb)):
        from lanczos_hessian.analysis.geometry import set_flat_parameters

        set_flat_parameters(model, space, w)
        values, bounds, matvecs = top_eigenvalues(model, loss_fn, (x[:nh], y[:nh]), k, budget,
                                                  seed)
        hessian[name] = {"top": values, "residual_bounds": bounds, "num_matvecs": matvecs}
        echo(f"Hessian at {name}: top {np.array2string(values, precision=4)} (residual bounds "
             f"{np.array2string(bounds, precision=2)}, {matvecs} products) [{timer():.0f} s]")
    inside = (t >= 0) & (t <= 1)
    train_line = profile.losses["train"]
    barrier = float(train_line[inside].max() - max(train_line[t == 0][0], train_line[t == 1][0]))
    summary = {"barrier_train_loss": barrier,
               "max_train_loss_on_segment": float(train_line[inside].max()),
               "path_max_loss": max(v for _, v in path_loss) if path_loss else float("nan"),
               "top_ratio_LB_over_SB": float(hessian["LB"]["top"][0] / hessian["SB"]["top"][0])}
    echo(f"barrier on the segment (max train loss minus the larger end): {barrier:.3g}; "
         f"top eigenvalue LB/SB {summary['top_ratio_LB_over_SB']:.2f}")
    with SpectrumWriter(paths["h5"], {**attrs, "num_params": num_parameters(model)},
                        overwrite=True) as writer:
        writer.write_arrays("line", profile.as_arrays())
        writer.write_arrays("training", {"loss_large_batch": np.asarray(history_lb),
                                         "loss_small_batch": np.asarray(history_sb),
                                         "path_full_loss": np.asarray(path_loss)})
        for name, h in hessian.items():
            writer.write_arrays(f"hessian_{name}", {"eigenvalues": h["top"],
                                                     "residual_bounds": h["residual_bounds"]})
        writer.set_attrs("line", summary)
    plot(t, profile, path_loss, hessian, ends, paths["png"])
    payload = {"experiment": NAME, "quick": quick, "settings": attrs,
               "ends": {k_: dict(zip(("train_loss", "train_accuracy", "test_loss",
                                      "test_accuracy"), v)) for k_, v in ends.items()},
               "line": profile.as_arrays(), "small_batch_path": path_loss, "hessian": hessian,
               "summary": summary, "seconds": timer(), "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"wrote {paths['h5']}, {paths['png']}, {paths['json']} in {timer():.0f} s")
    return payload


def plot(t, profile, path_loss, hessian, ends, path):
    plt = ec.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, style in (("train", "-"), ("test", "--")):
        axes[0].plot(t, profile.losses[name], style, marker="o", ms=3, label=f"{name} loss")
        axes[1].plot(t, profile.accuracies[name], style, marker="o", ms=3,
                     label=f"{name} accuracy")
    for ax in axes[:2]:
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.axvline(1, color="k", lw=0.6, ls=":")
        ax.set(xlabel="t: w = (1 - t) w_LB + t w_SB")
    axes[0].set(title="loss on the line through both ends (Fig. 8)", yscale="log")
    axes[1].set(title="accuracy on the line (Fig. 8)")
    if path_loss:
        steps, values = zip(*path_loss)
        axes[2].plot(steps, values, "o-", ms=3, label="full training loss on the SB path")
    axes[2].set(title="full training loss along the small-batch path from w_LB\n"
                "(Hessian lambda_max: " +
                ", ".join(f"{n} {h['top'][0]:.3g}" for n, h in hessian.items()) + ")",
                xlabel="small-batch step", ylabel="training loss", yscale="log")
    ec.finish_figure(fig, axes, path)


def replot(out_dir=None, quick=False):
    """Redraw the PNG from the JSON (no recomputation)."""
    import json

    from lanczos_hessian.analysis.geometry import LineProfile

    paths = ec.out_paths(NAME, out_dir, quick)
    d = json.loads(paths["json"].read_text())
    line = d["line"]
    profile = LineProfile(t=np.asarray(line["t"]),
                          losses={k: np.asarray(line[f"loss_{k}"]) for k in ("train", "test")},
                          accuracies={k: np.asarray(line[f"accuracy_{k}"])
                                      for k in ("train", "test")}, norm=line["norm"])
    plot(profile.t, profile, [tuple(p) for p in d["small_batch_path"]], d["hessian"], d["ends"],
         paths["png"])


if __name__ == "__main__":
    args = ec.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--replot", action="store_true", help="only redraw the PNG from the JSON"))
    if args.replot:
        replot(args.out_dir, args.quick)
    else:
        main(quick=args.quick, out_dir=args.out_dir, seed=args.seed)
