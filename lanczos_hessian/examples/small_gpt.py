"""A small GPT trained on the Python standard library's sources, and its Hessian spectra.

``python -m lanczos_hessian.examples.small_gpt [--quick] [--out DIR]`` trains a byte-level
GPT (pre-norm ``nn.TransformerEncoderLayer`` blocks under a causal mask, learned position
embeddings; 2 layers, width 32, about 35k parameters) with AdamW on text read from this
interpreter's standard library (no download), then, on a held-out set of padded, ragged
paragraphs (labels -100 on the padding), in one command:

1. the top-k and bottom-k eigenvalues of the full-data Hessian of the token-mean loss
   (:class:`~lanczos_hessian.curvature.objective.TokenLoss`), ``DIR/gpt_spectrum.h5``;
2. its SLQ spectral density, ``DIR/gpt_density.h5``;
3. the blockwise spectra of the query, key, value and output projections and the MLP of
   each layer, the embeddings and the head, in lockstep (one pass per step for all blocks),
   ``DIR/gpt_blocks.h5`` with a figure of the per-block densities ``DIR/gpt_blocks.png``.

``--quick`` shrinks everything (training steps, data, Lanczos steps) to run in about a
minute on a laptop CPU; the default takes a few minutes.
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

import torch

from ..blocks import Block, block_spectra, preset_blocks
from ..curvature.data import dict_batch
from ..curvature.objective import TokenLoss
from ..curvature.operators import HessianOperator


class SmallGPT(torch.nn.Module):
    """Byte-level decoder: ``(B, L)`` token ids -> ``(B, L, 256)`` logits."""

    def __init__(self, width=32, layers=2, heads=4, context=64, vocab=256):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Embedding(context, width)
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0,
                                             batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        n = input_ids.shape[1]
        h = self.embed(input_ids) + self.position(torch.arange(n, device=input_ids.device))
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=h.device), diagonal=1)
        padding = None if attention_mask is None else attention_mask == 0
        for layer in self.layers:
            h = layer(h, src_mask=causal, is_causal=True, src_key_padding_mask=padding)
        return self.head(self.norm(h))


def corpus(max_bytes: int) -> bytes:
    """Text of the standard library's own modules (this interpreter's), in sorted order."""
    root, text = Path(sysconfig.get_paths()["stdlib"]), bytearray()
    for path in sorted(root.glob("*.py")):
        text += path.read_bytes()
        if len(text) >= max_bytes:
            break
    return bytes(text[:max_bytes])


def paragraphs(text: bytes, context: int, count: int, min_length: int = 8) -> list:
    """Up to ``count`` paragraphs (blank-line separated), cut to ``context`` bytes."""
    chunks = [p.strip(b"\n")[:context] for p in text.split(b"\n\n")]
    return [c for c in chunks if len(c) >= min_length][:count]


def padded_batches(chunks: list, batch_size: int) -> list:
    """Dict batches, each padded to its longest paragraph, labels -100 on the padding."""
    batches = []
    for start in range(0, len(chunks), batch_size):
        group = chunks[start:start + batch_size]
        length = max(len(c) for c in group)
        ids = torch.zeros(len(group), length, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, chunk in enumerate(group):
            ids[i, :len(chunk)] = labels[i, :len(chunk)] = torch.tensor(list(chunk))
        batches.append({"input_ids": ids, "attention_mask": (labels != -100).long(),
                        "labels": labels})
    return batches


def train(model, text: bytes, steps: int, context: int, batch_size=32, lr=3e-3, seed=0):
    """AdamW on random windows of ``text``; returns the last training loss."""
    g = torch.Generator().manual_seed(seed)
    data = torch.tensor(list(text), dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - context - 1, (batch_size,), generator=g)
        window = torch.stack([data[s:s + context + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256),
                                                 window[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def gpt_blocks(model) -> list:
    """Q, K, V, O and MLP of each layer (the ``"encoder"`` preset), embeddings and head."""
    return preset_blocks(model, "encoder") + [
        Block("embed", "embed", "position"), Block("head", "head")]


def main(argv=None) -> int:
    from .. import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute (default: off)")
    parser.add_argument("--out", default="gpt_spectra", help="folder (default gpt_spectra)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    quick = args.quick
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    context = 32 if quick else 64
    model = SmallGPT(context=context)
    text = corpus(200_000 if quick else 2_000_000)
    start = time.perf_counter()
    loss = train(model, text[len(text) // 10:], 60 if quick else 600, context, seed=args.seed)
    print(f"trained {sum(p.numel() for p in model.parameters())} parameters for "
          f"{time.perf_counter() - start:.0f} s on {len(text)} bytes of the standard library: "
          f"training loss {loss:.3f} nats/byte")
    model = model.double().eval()
    held_out = paragraphs(text[:len(text) // 10], context, 32 if quick else 256)
    H = HessianOperator(model, TokenLoss(), padded_batches(held_out, 16),
                        unpack=dict_batch("labels"))
    print(f"Hessian of the token mean over {H.loss_fn.num_tokens} target bytes of "
          f"{len(held_out)} padded paragraphs")
    spectrum = out / "gpt_spectrum.h5"
    eigs = run.eigs(H, spectrum, k=6, which="BE", tol=1e-5,
                    max_matvecs=60 if quick else 400, seed=args.seed, overwrite=True,
                    progress=False)
    print("top and bottom eigenvalues:", " ".join(f"{v:.4g}" for v in eigs.eigenvalues))
    _, density = run.slq(H, out / "gpt_density.h5", num_probes=2 if quick else 8,
                         num_steps=15 if quick else 60, seed=args.seed, overwrite=True,
                         progress=False)
    below = density.fraction_below(0.0)
    print(f"SLQ: trace {density.trace().value:.4g}, mass below 0 in "
          f"[{below.lower:.3f}, {below.upper:.3f}]")
    blocks = block_spectra(H, gpt_blocks(model), k=3, num_probes=2 if quick else 5,
                           num_steps=15 if quick else 40, seed=args.seed,
                           max_matvecs=60 if quick else 300, out=out / "gpt_blocks.h5",
                           overwrite=True)
    blocks.plot(out / "gpt_blocks.png")
    print(blocks.summary())
    print(f"written to {out}: gpt_spectrum.h5, gpt_density.h5, gpt_blocks.h5, gpt_blocks.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
