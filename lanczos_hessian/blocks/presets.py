"""Blocks of standard transformer layouts: query, key, value and output projections, MLPs.

* ``"mha"``: every ``nn.MultiheadAttention`` with a packed ``in_proj_weight`` (rows
  ``[0, E)``, ``[E, 2E)``, ``[2E, 3E)`` are Q, K, V; ``in_proj_bias`` alike) and its
  ``out_proj`` (O);
* ``"encoder"``: every ``nn.TransformerEncoderLayer``: its attention as ``"mha"`` and its
  feed-forward ``linear1`` + ``linear2`` as one ``mlp`` block;
* ``"gpt2"``: Hugging Face GPT-2: each ``c_attn`` (a ``Conv1D``, weight ``(E, 3E)``: Q, K, V
  are column ranges, axis 1), ``c_proj`` (O), each block's ``mlp``, and the token and
  position embeddings ``wte``, ``wpe``;
* ``"llama"``: separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` modules (Llama,
  Mistral, Qwen and most recent decoders) and each ``mlp``.

With ``per_head=True`` each of Q, K, V is split further into its heads (``E / heads`` rows
or columns each): block ``<module>.q.h<j>``; for the ``"llama"`` layout only Q is split (its
K and V may have fewer heads under grouped-query attention): ``<module>.q_proj.h<j>``.
"""

from __future__ import annotations

import torch

from ..errors import InvalidModelError
from .spec import Block, Slice


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def packed_qkv(prefix: str, weight: str, bias: str | None, axis: int, width: int,
               heads: int | None = None) -> list:
    """Q, K, V blocks of a projection packed in one weight: ``width`` entries each along
    ``axis`` of ``weight`` (and of ``bias``), in that order; per head with ``heads``."""
    blocks = []
    for part, role in enumerate("qkv"):
        ranges = [(f"{prefix}.{role}", part * width, (part + 1) * width)]
        if heads:
            d = width // heads
            ranges = [(f"{prefix}.{role}.h{j}", part * width + j * d,
                       part * width + (j + 1) * d) for j in range(heads)]
        for name, start, stop in ranges:
            select = [Slice(weight, axis, start, stop)]
            if bias is not None:
                select.append(Slice(bias, 0, start, stop))
            blocks.append(Block(name, *select))
    return blocks


def _mha(name, module, per_head):
    if module.in_proj_weight is None:  # separate q/k/v weights (kdim != embed_dim)
        blocks = [Block(_join(name, f"{r}"), _join(name, f"{r}_proj_weight"))
                  for r in ("q", "k", "v")]
    else:
        bias = None if module.in_proj_bias is None else _join(name, "in_proj_bias")
        blocks = packed_qkv(name or "attn", _join(name, "in_proj_weight"), bias, 0,
                            module.embed_dim, module.num_heads if per_head else None)
    return blocks + [Block(_join(name, "o"), _join(name, "out_proj"))]


def mha_blocks(model, per_head=False) -> list:
    return [b for name, m in model.named_modules()
            if isinstance(m, torch.nn.MultiheadAttention) for b in _mha(name, m, per_head)]


def encoder_blocks(model, per_head=False) -> list:
    blocks = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.TransformerEncoderLayer):
            blocks += _mha(_join(name, "self_attn"), m.self_attn, per_head)
            blocks.append(Block(_join(name, "mlp"), _join(name, "linear1"),
                                _join(name, "linear2")))
    return blocks


def gpt2_blocks(model, per_head=False) -> list:
    blocks = []
    for name, m in model.named_modules():
        if hasattr(m, "c_attn") and hasattr(m, "c_proj") and hasattr(m, "num_heads"):
            width = m.c_attn.weight.shape[0]
            bias = _join(name, "c_attn.bias") if m.c_attn.bias is not None else None
            blocks += packed_qkv(name, _join(name, "c_attn.weight"), bias, 1, width,
                                 m.num_heads if per_head else None)
            blocks.append(Block(_join(name, "o"), _join(name, "c_proj")))
        elif hasattr(m, "c_fc") and hasattr(m, "c_proj"):
            blocks.append(Block(name or "mlp", name))
        elif name.endswith(("wte", "wpe")) and isinstance(m, torch.nn.Embedding):
            blocks.append(Block(name, name))
    return blocks


def llama_blocks(model, per_head=False) -> list:
    blocks = []
    for name, m in model.named_modules():
        if all(hasattr(m, f"{r}_proj") for r in "qkvo"):
            heads = getattr(m, "num_heads", None) or getattr(
                getattr(m, "config", None), "num_attention_heads", None)
            for r in "qkv":
                proj = _join(name, f"{r}_proj")
                if per_head and heads and r == "q":
                    rows = getattr(m, f"{r}_proj").weight.shape[0]
                    d = rows // heads
                    blocks += [Block(f"{proj}.h{j}", Slice(f"{proj}.weight", 0, j * d,
                                                           (j + 1) * d)) for j in range(heads)]
                else:
                    blocks.append(Block(proj, proj))
            blocks.append(Block(_join(name, "o_proj"), _join(name, "o_proj")))
        elif all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj")):
            blocks.append(Block(name or "mlp", name))
    return blocks


PRESETS = {"mha": mha_blocks, "encoder": encoder_blocks, "gpt2": gpt2_blocks,
           "llama": llama_blocks}


def preset_blocks(model, preset: str, per_head: bool = False) -> list:
    """The blocks of ``preset`` (module docstring) found in ``model``; an error naming the
    preset when the model has none of its layers."""
    if preset not in PRESETS:
        raise ValueError(f"unknown block preset {preset!r}; presets: {sorted(PRESETS)}")
    blocks = PRESETS[preset](model, per_head)
    if not blocks:
        raise InvalidModelError(f"the block preset {preset!r} finds none of its layers in "
                                f"{type(model).__name__}; name the blocks instead")
    return blocks
