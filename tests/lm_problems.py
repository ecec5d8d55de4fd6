"""Tiny causal language models and padded, ragged dict batches, with their dense float64
full-data Hessians written out by hand (the references of the language-model tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lanczos_hessian.curvature.kernels import twice_differentiable

VOCAB = 5


class TinyCausalLM(torch.nn.Module):
    """Embedding, one causal multi-head attention layer, a linear head: ``(B, L) -> (B, L, V)``."""

    def __init__(self, vocab=VOCAB, width=4, heads=2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        L = input_ids.shape[1]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=h.device), 1)
        padding = None if attention_mask is None else attention_mask == 0
        a, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding,
                         need_weights=False)
        return self.head(torch.tanh(h + a))


def sequences(lengths, seed=0):
    """Token sequences of the given lengths (``torch.long``), a few labels -100 inside."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, VOCAB, (n,), generator=g)
        labels = ids.clone()
        if n > 3:
            labels[1] = -100  # a prompt token: no target there
        out.append((ids, labels))
    return out


def pad_batches(seqs, sizes):
    """Dict batches of ``sizes`` sequences, each padded to its own longest (ragged)."""
    batches, start = [], 0
    for size in sizes:
        chunk = seqs[start:start + size]
        start += size
        L = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        labels = torch.full((len(chunk), L), -100, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.long)
        for i, (s, y) in enumerate(chunk):
            ids[i, :len(s)], labels[i, :len(s)], mask[i, :len(s)] = s, y, 1
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert start == len(seqs)
    return batches


def token_losses(model, params, ids, labels, logits_fn=None):
    """The unpadded sequence's shifted token losses at its target positions."""
    out = functional_call(model, params, (ids[None],))
    logits = out if logits_fn is None else logits_fn(out)
    logits, y = logits[0, :-1], labels[1:]
    keep = y != -100
    return F.cross_entropy(logits[keep], y[keep], reduction="none")


def dense_lm_hessian(model, seqs, normalization="tokens", logits_fn=None):
    """``d^2 L / dw^2`` (float64, the model's parameter order) of the full-data loss written
    out sequence by sequence, without padding."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    sizes = [s.numel() for s in shapes]
    w0 = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters()
                    if p.requires_grad])

    def objective(w):
        params = {n: c.reshape(s) for n, c, s in zip(names, torch.split(w, sizes), shapes)}
        per_seq = [token_losses(model, params, ids, y, logits_fn) for ids, y in seqs]
        if normalization == "tokens":
            return sum(l.sum() for l in per_seq) / sum(len(l) for l in per_seq)
        if normalization == "sequences":
            kept = [l for l in per_seq if len(l)]
            return sum(l.mean() for l in kept) / len(kept)
        return sum(l.sum() for l in per_seq)

    with twice_differentiable():  # the math attention kernel, which has a double backward
        return torch.autograd.functional.hessian(objective, w0).numpy()
