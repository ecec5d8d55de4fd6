"""Attention layers in curvature products: PyTorch's fused attention kernels have no second
derivative, so the package runs products under the math backend (curvature/kernels.py).
Checked against a dense float64 Hessian of the full-data loss written here by hand."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from lanczos_hessian import GGNOperator, HessianOperator, InvalidModelError

STRATEGIES = ["forward-over-reverse", "reverse-over-reverse"]


class Encoder(torch.nn.Module):
    """A tiny ``nn.TransformerEncoder`` (batch first, ReLU: eligible for the eval-mode fast
    path) with a mean-pooled linear head."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0,
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


class Attention(torch.nn.Module):
    """``nn.MultiheadAttention`` (self-attention, no weights returned: the SDPA path)."""

    def __init__(self):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        out, _ = self.attention(x, x, x, need_weights=False)
        return self.head(out.mean(dim=1))


def attention_case(cls):
    torch.manual_seed(0)
    model = cls().double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)
    return model, x, y


def full_data_hessian(model, x, y):
    """``d^2/dw^2 mean_i CE(f(w, x_i), y_i)``: one call on all samples, autograd's own
    double backward on the flat parameter vector (no package code)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = w[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        return torch.autograd.functional.hessian(loss, flat).numpy()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cls", [Encoder, Attention], ids=["TransformerEncoder", "MHA"])
def test_attention_hessian_matches_dense_float64(cls, strategy):
    model, x, y = attention_case(cls)
    H = full_data_hessian(model, x, y)
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=4,
                         strategy=strategy)  # 4 does not divide 9: a ragged last batch
    V = np.random.default_rng(0).standard_normal((op.shape[0], 3))
    scale = np.abs(H).max()
    assert np.abs(op.matmat(V) - H @ V).max() <= 1e-10 * scale * np.abs(V).sum(0).max()
    assert np.abs(op.matvec(V[:, 0]) - H @ V[:, 0]).max() <= 1e-10 * scale * np.abs(V).sum()
    assert not model.training  # the caller's mode is kept


def test_attention_backend_is_selected_for_the_product_and_restored():
    model, x, y = attention_case(Encoder)
    seen = []
    model.head.register_forward_hook(
        lambda *_: seen.append(torch.backends.cuda.flash_sdp_enabled()))
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled())
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=4,
                         strategy="reverse-over-reverse")
    seen.clear()
    op.matvec(np.ones(op.shape[0]))
    assert seen and not any(seen)  # flash attention off during the products
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled()) == before


class FlashAttention(torch.nn.Module):
    """Calls the fused CPU attention kernel directly: it has no double backward."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        q = self.proj(x).unsqueeze(1)  # (batch, heads=1, length, dim)
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q)[0]
        return self.head(out.squeeze(1).mean(dim=1))


def test_an_op_without_second_derivative_is_named():
    torch.manual_seed(0)
    model = FlashAttention().double()
    x, y = torch.randn(5, 3, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    for cls in (HessianOperator, GGNOperator):
        with pytest.raises(InvalidModelError,
                           match="_scaled_dot_product_flash_attention_for_cpu has none"):
            cls(model, torch.nn.CrossEntropyLoss(), (x, y),
                strategy="reverse-over-reverse").matvec(np.ones(sum(
                    p.numel() for p in model.parameters())))
    with pytest.raises(InvalidModelError, match="_scaled_dot_product_flash_attention_for_cpu"):
        HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y)).matvec(
            np.ones(sum(p.numel() for p in model.parameters())))
