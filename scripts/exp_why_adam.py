"""Zhang et al. 2024 ("Why Transformers Need Adam: A Hessian Perspective") at small scale:
the blockwise Hessian spectra of a small GPT against those of a CNN of similar size, and
their heterogeneity, the Jensen-Shannon distance between the blocks' densities.

Models. The byte-level GPT of ``lanczos_hessian.examples.small_gpt`` (pre-norm encoder
layers under a causal mask; 2 layers, width 32, context 32: 34,816 parameters), trained
with AdamW on the standard library's sources as that example does, its Hessian the
token-mean loss over held-out padded paragraphs; blocks Q, K, V, O and MLP of each layer,
the embeddings (token and position) and the head (12 blocks). A CNN on Fashion-MNIST
(the shipped MNIST subset where it is not installed; three 3x3 convolutions of 12, 24, 24
channels with ReLU and 2x2 max-pooling, then 216-96-10 fully connected: 29,746 parameters),
trained with AdamW for as many steps, its Hessian the mean cross-entropy over 128 training
images; one block per layer (5 blocks). Both at initialization and after training.

Measure. Each block's SLQ density (``block_spectra``: all blocks in lockstep, one pass per
step), its Ritz values divided by the block's spectral radius (the largest ``|theta|`` of
its rules), smoothed by a Gaussian of standard deviation ``WIDTH`` = 0.02 on a common grid;
the Jensen-Shannon distance (natural log, in ``[0, sqrt(log 2)] = [0, 0.833]``) between
every pair of blocks (``lanczos_hessian.blocks.block_heterogeneity``), and its mean over
pairs (the paper's averaged measure). Raw (unscaled) eigenvalues, a common grid per model
and a width of 1% of that model's range, are reported beside. The paper's claim, checked on
every seed: the mean distance among the transformer's blocks exceeds the CNN's.

Full mode: seeds 0-4. ``--quick``: one seed, a 1-layer width-16 GPT (10,960 parameters,
7 blocks) against an 8-channel CNN (8,538 parameters), fewer steps and probes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

from lanczos_hessian import HessianOperator, TokenLoss, dict_batch  # noqa: E402
from lanczos_hessian.blocks import Block, block_heterogeneity, block_spectra  # noqa: E402
from lanczos_hessian.examples.datasets import load_fashion_mnist, load_mnist  # noqa: E402
from lanczos_hessian.examples.small_gpt import (SmallGPT, corpus, gpt_blocks,  # noqa: E402
                                                padded_batches, paragraphs, train)

NAME = "why_adam"
WIDTH = 0.02  # kernel standard deviation, in units of each block's spectral radius
RAW_WIDTH = 0.01  # raw eigenvalues: kernel standard deviation, fraction of the model's range
NUM_SEEDS = 5
CONFIG = {
    True: {"gpt": {"width": 16, "layers": 1, "context": 16, "paragraphs": 16},
           "cnn": {"channels": 8, "hidden": 32, "hessian_examples": 48},
           "train_steps": 40, "num_probes": 2, "num_steps": 10, "text_bytes": 100_000},
    False: {"gpt": {"width": 32, "layers": 2, "context": 32, "paragraphs": 48},
            "cnn": {"channels": 12, "hidden": 96, "hessian_examples": 128},
            "train_steps": 400, "num_probes": 3, "num_steps": 25, "text_bytes": 400_000},
}
POINTS = ("init", "trained")


class SmallCNN(torch.nn.Module):
    """Fashion-MNIST CNN: conv(1->c)-pool, conv(c->2c)-pool, conv(2c->2c)-pool (3x3, ReLU),
    then ``18c -> hidden -> 10``."""

    def __init__(self, channels=16, hidden=64):
        super().__init__()
        c = channels
        self.conv1 = torch.nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(c, 2 * c, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.fc1 = torch.nn.Linear(2 * c * 9, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        pool = torch.nn.functional.max_pool2d
        for conv in (self.conv1, self.conv2, self.conv3):
            x = pool(torch.relu(conv(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


CNN_BLOCKS = [Block(name, name) for name in ("conv1", "conv2", "conv3", "fc1", "fc2")]


def gpt_problem(cfg: dict, seed: int, text: bytes):
    """``{point: (float64 model, Hessian, blocks)}`` of the GPT at init and trained, and the
    last training loss."""
    g = cfg["gpt"]
    torch.manual_seed(seed)
    model = SmallGPT(width=g["width"], layers=g["layers"], heads=4, context=g["context"])
    held_out = paragraphs(text[:len(text) // 10], g["context"], g["paragraphs"])
    batches = padded_batches(held_out, 16)
    out = {"init": _copy64(model)}
    loss = train(model, text[len(text) // 10:], cfg["train_steps"], g["context"], seed=seed)
    out["trained"] = _copy64(model)
    return {point: (m, HessianOperator(m, TokenLoss(), batches, unpack=dict_batch("labels")),
                    gpt_blocks(m)) for point, m in out.items()}, loss


def cnn_problem(cfg: dict, seed: int, images):
    """The same for the CNN: AdamW (lr 1e-3, batch 64) on Fashion-MNIST for as many steps as
    the GPT, the Hessian on the first ``hessian_examples`` training images."""
    c = cfg["cnn"]
    x, y = images
    torch.manual_seed(seed)
    model = SmallCNN(c["channels"], c["hidden"])
    out = {"init": _copy64(model)}
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(cfg["train_steps"]):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out["trained"] = _copy64(model)
    n = c["hessian_examples"]
    data = (x[:n].double(), y[:n])
    return {point: (m, HessianOperator(m, torch.nn.CrossEntropyLoss(), data, batch_size=128),
                    CNN_BLOCKS) for point, m in out.items()}, float(loss.detach())


def cnn_images(count: int):
    """``(images, labels)`` of Fashion-MNIST's training split where the Debian package
    ``dataset-fashion-mnist`` is installed, else of the MNIST subset shipped in ``data/``;
    and which."""
    try:
        return load_fashion_mnist("train", count), "Fashion-MNIST (train split)"
    except FileNotFoundError:
        return load_mnist(count), "MNIST (the shipped 10,000-digit subset)"


def _copy64(model):
    import copy

    return copy.deepcopy(model).double().eval()


def measure(H, blocks, cfg: dict, seed: int) -> dict:
    """Blockwise SLQ densities of ``H`` in lockstep and their heterogeneity, scaled and raw."""
    timer = ec.Timer()
    spectra = block_spectra(H, blocks, k=0, num_probes=cfg["num_probes"],
                            num_steps=cfg["num_steps"], seed=seed)
    scaled = block_heterogeneity(spectra, WIDTH)
    nodes = np.concatenate([b.density.nodes[np.isfinite(b.density.nodes)]
                            for b in spectra.blocks])
    raw = block_heterogeneity(spectra, RAW_WIDTH * float(np.ptp(nodes)), scale=None)
    return {"names": scaled.names, "dims": [b.dim for b in spectra.blocks],
            "spectral_radius": scaled.scales, "mean_js": scaled.mean_distance,
            "median_js": float(np.median(scaled.pairs)), "js_matrix": scaled.distances,
            "mean_js_raw": raw.mean_distance, "js_matrix_raw": raw.distances,
            "num_passes": spectra.num_passes, "seconds": timer(), "cpu_seconds": timer.cpu(),
            "_scaled": scaled}


def run_seed(cfg: dict, seed: int, text: bytes, images, echo) -> dict:
    problems = {}
    problems["gpt"], gpt_loss = gpt_problem(cfg, seed, text)
    problems["cnn"], cnn_loss = cnn_problem(cfg, seed, images)
    row = {"seed": seed, "train_loss": {"gpt": gpt_loss, "cnn": cnn_loss}}
    for model_name, points in problems.items():
        row[model_name] = {}
        for point, (model, H, blocks) in points.items():
            result = measure(H, blocks, cfg, seed)
            result["num_params"] = sum(p.numel() for p in model.parameters())
            row[model_name][point] = result
            echo(f"seed {seed} {model_name:3s} {point:7s}: {result['num_params']} parameters, "
                 f"{len(blocks)} blocks, mean JS {result['mean_js']:.3f} (raw "
                 f"{result['mean_js_raw']:.3f}), {result['num_passes']} passes, "
                 f"{result['cpu_seconds']:.0f} CPU s")
    for point in POINTS:
        row[f"claim_{point}"] = bool(row["gpt"][point]["mean_js"] > row["cnn"][point]["mean_js"])
        row[f"claim_raw_{point}"] = bool(row["gpt"][point]["mean_js_raw"]
                                         > row["cnn"][point]["mean_js_raw"])
    return row


def summarize(rows: list) -> dict:
    """Mean, standard deviation, minimum and maximum over seeds of each mean distance, and on
    how many seeds the transformer's exceeds the CNN's."""
    out = {}
    for point in POINTS:
        for key in ("mean_js", "mean_js_raw"):
            for model in ("gpt", "cnn"):
                v = np.array([r[model][point][key] for r in rows])
                out[f"{model}_{point}_{key}"] = {"mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1
                                                 else 0.0, "min": v.min(), "max": v.max()}
            ratio = np.array([r["gpt"][point][key] / r["cnn"][point][key] for r in rows])
            out[f"ratio_{point}_{key}"] = {"mean": ratio.mean(), "min": ratio.min(),
                                           "max": ratio.max()}
        out[f"claim_holds_{point}"] = f"{sum(r[f'claim_{point}'] for r in rows)}/{len(rows)}"
        out[f"claim_raw_holds_{point}"] = (f"{sum(r[f'claim_raw_{point}'] for r in rows)}/"
                                           f"{len(rows)}")
    return out


def main(quick: bool = False, out_dir=None, seed: int = 0, echo=ec.log,
         num_seeds: int | None = None) -> dict:
    ec.setup()
    timer = ec.Timer()
    paths = ec.out_paths(NAME, out_dir, quick)
    cfg = CONFIG[bool(quick)]
    seeds = list(range(seed, seed + (num_seeds or (1 if quick else NUM_SEEDS))))
    text = corpus(cfg["text_bytes"])
    images, dataset = cnn_images(4096 if quick else 20000)
    rows = [run_seed(cfg, s, text, images, echo) for s in seeds]
    plot(rows, paths["png"])
    for row in rows:  # the figure's inputs stay out of the JSON
        for model in ("gpt", "cnn"):
            for point in POINTS:
                row[model][point].pop("_scaled")
    payload = {"experiment": NAME, "quick": quick, "seeds": seeds,
               "paper": "Zhang et al. 2024, Why Transformers Need Adam: A Hessian "
                        "Perspective, Sec. 2 (blockwise spectra, JS distance)",
               "settings": {**cfg, "width": WIDTH, "raw_width_fraction": RAW_WIDTH,
                            "dataset_cnn": dataset,
                            "dataset_gpt": "Python standard library sources, bytes"},
               "summary": summarize(rows), "seeds_results": rows, "seconds": timer(),
               "cpu_seconds": timer.cpu()}
    ec.write_json(paths["json"], payload)
    echo(f"claim (mean JS, GPT > CNN): init {payload['summary']['claim_holds_init']}, trained "
         f"{payload['summary']['claim_holds_trained']} seeds; wrote {paths['png']}, "
         f"{paths['json']} in {timer():.0f} s ({timer.cpu():.0f} CPU s)")
    return payload


def plot(rows: list, path) -> None:
    """Top: seed 0's per-block densities after training (scaled), GPT and CNN, and their JS
    matrices; right: every pairwise distance of every seed, both models, both points."""
    plt = ec.pyplot()
    fig = plt.figure(figsize=(15, 8))
    grid = fig.add_gridspec(2, 3, width_ratios=[1.3, 1, 1.1])
    first = rows[0]
    top = np.sqrt(np.log(2))
    for r, model in enumerate(("gpt", "cnn")):
        het = first[model]["trained"]["_scaled"]
        ax = fig.add_subplot(grid[r, 0])
        ax.set_prop_cycle(color=[plt.cm.tab20(i) for i in range(20)])  # 12 blocks, distinct
        for name, phi in zip(het.names, het.densities):
            ax.semilogy(het.grid, np.maximum(phi, 1e-8), lw=1, label=_short(name))
        ax.set(ylim=(1e-5, None), xlabel="eigenvalue of H_bb / spectral radius of H_bb",
               ylabel="density", title=f"{model.upper()} blocks, trained (seed {first['seed']})")
        ax.legend(fontsize=ec.MIN_FONT_PT, ncol=2)
        ax.grid(alpha=0.3)
        ax = fig.add_subplot(grid[r, 1])
        im = ax.imshow(het.distances, vmin=0, vmax=top, cmap="viridis")
        short = [_short(name) for name in het.names]
        ax.set_xticks(range(len(short)), short, rotation=90)
        ax.set_yticks(range(len(short)), short)
        ax.set_title(f"{model.upper()} JS distances (mean {het.mean_distance:.3f})")
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = fig.add_subplot(grid[:, 2])
    positions, labels = 0, []
    for point in POINTS:
        for model, color in (("gpt", "C3"), ("cnn", "C0")):
            for row in rows:
                m = row[model][point]["js_matrix"]
                pairs = np.asarray(m)[np.triu_indices(len(m), 1)]
                jitter = np.random.default_rng(row["seed"]).uniform(-0.25, 0.25, len(pairs))
                ax.plot(positions + jitter, pairs, ".", color=color, alpha=0.4, ms=4)
                ax.plot([positions - 0.3, positions + 0.3], [pairs.mean()] * 2, color="k")
            labels.append(f"{model.upper()}\n{point}")
            positions += 1
    ax.set_xticks(range(len(labels)), labels)
    ax.set(ylabel="JS distance between two blocks (scaled spectra)", ylim=(0, top),
           title=f"all pairs, {len(rows)} seeds (bars: mean per seed)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    ec.save_figure(fig, path)


def _short(name: str) -> str:
    """``layers.0.self_attn.q`` -> ``L0.q``, for the figure's labels."""
    return name.replace("layers.", "L").replace(".self_attn", "")


if __name__ == "__main__":
    parser_args = ec.parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument(
        "--num-seeds", type=int, default=None, help="seeds from --seed (default 5; quick 1)"))
    main(quick=parser_args.quick, out_dir=parser_args.out_dir, seed=parser_args.seed,
         num_seeds=parser_args.num_seeds)
