"""Kernels that can be differentiated twice, and a clear error where an op cannot.

A curvature product differentiates the loss twice: reverse-over-reverse needs each op's
double backward, forward-over-reverse its forward-mode (JVP) rule of the backward. PyTorch's
fused attention kernels (flash and memory-efficient scaled-dot-product attention, on the CPU
and on CUDA) have neither, and ``torch.nn.functional.scaled_dot_product_attention`` picks
them by default: ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and
``nn.TransformerEncoder`` (whose eval-mode fast path calls the same attention) fail with
``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented``. The math backend writes attention as ``softmax(Q K^T / sqrt(d)) V`` in
ordinary differentiable ops, so every derivative exists; it computes the same function
(to rounding). :func:`twice_differentiable` selects it for the duration of a product and
restores the caller's choice after.

An op with no second derivative at all (a custom kernel, an aten op without a double
backward) is reported by :func:`missing_derivative`, which names the op.
"""

from __future__ import annotations

import contextlib
import re

from ..errors import ForwardModeUnsupportedError, InvalidModelError

import torch

#: The fused attention backends switched off for a product: (is enabled, enable) pairs of
#: ``torch.backends.cuda`` (the switches hold for the CPU kernels as well).
_FUSED = ("flash", "mem_efficient", "cudnn")


def _switches(name):
    """``(is enabled, enable)`` of one backend: the C functions that ``torch.backends.cuda``'s
    ``{name}_sdp_enabled`` and ``enable_{name}_sdp`` call, where this torch has them (a Python
    frame fewer each, set and restored on every pass), else those two."""
    backends = torch.backends.cuda
    public = (getattr(backends, f"{name}_sdp_enabled", None),
              getattr(backends, f"enable_{name}_sdp", None))
    direct = (getattr(torch._C, f"_get_{name}_sdp_enabled", None),
              getattr(torch._C, f"_set_sdp_use_{name}", None))
    return direct if None not in direct and None not in public else public


_AVAILABLE: list = []  # (name, is enabled, enable) of this torch's switches, found once


def _available_switches() -> list:
    """The switches of :data:`_FUSED` and the math backend that this torch has."""
    if not _AVAILABLE:
        for name in (*_FUSED, "math"):
            enabled, enable = _switches(name)
            if enabled is not None and enable is not None:
                _AVAILABLE.append((name, enabled, enable))
    return _AVAILABLE


@contextlib.contextmanager
def twice_differentiable():
    """Run the block in grad mode with scaled-dot-product attention on its math backend (CPU
    and CUDA alike), the one with double-backward and forward-mode rules: the fused backends
    are switched off and the math one on (the switches ``torch.nn.attention.sdpa_kernel``
    sets, set directly: a few attribute calls per pass). Grad mode is on for the products'
    derivatives (also under a caller's ``torch.no_grad()``), set here once per pass rather
    than by each batch's product. The caller's settings are restored on exit, also after an
    exception."""
    saved = []
    for name, enabled, enable in _available_switches():
        saved.append((enable, enabled()))
        enable(name == "math")
    grad_mode = torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    try:
        yield
    finally:
        torch.set_grad_enabled(grad_mode)
        for enable, value in saved:
            enable(value)


def math_attention():
    """Scaled-dot-product attention on its math backend inside a function that
    ``torch.compile`` traces: ``torch.nn.attention.sdpa_kernel``, which Dynamo follows (the
    switches :func:`twice_differentiable` sets around the call do not reach the trace, which
    picked the flash kernel, with no double backward); a null context where this torch has
    none."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


_NO_DOUBLE_BACKWARD = re.compile(r"derivative for (\S+) is not implemented")
_NO_FORWARD_MODE = re.compile(r"forward AD with (\S+) that does not support it")


def missing_derivative(exc: BaseException, strategy: str, kind: str):
    """The package's error for ``exc`` when it says an op lacks the derivative ``strategy``
    needs (naming the op and what to do), else None.

    Reverse-over-reverse without a double backward is an
    :class:`~lanczos_hessian.errors.InvalidModelError` (no strategy can take the product
    but forward-over-reverse, which is named when the op has a forward-mode rule);
    forward-over-reverse without a forward-mode rule is a
    :class:`~lanczos_hessian.errors.ForwardModeUnsupportedError`, on which ``"auto"``
    falls back to reverse-over-reverse.
    """
    text = str(exc)
    found = _NO_DOUBLE_BACKWARD.search(text)
    if found is not None:
        backward = found.group(1)
        op = backward[:-len("_backward")] if backward.endswith("_backward") else backward
        return InvalidModelError(
            f"the {kind} product needs the second derivative of every op of the model and "
            f"loss, and {op} has none in this torch (its backward, {backward}, cannot be "
            f"differentiated): {strategy} products are impossible "
            "on this model. Replace the op by one written in differentiable ops (for attention "
            "kernels the package selects the math backend itself), or try "
            "strategy='forward-over-reverse' if the op has a forward-mode rule")
    found = _NO_FORWARD_MODE.search(text)
    if found is not None or isinstance(exc, NotImplementedError):
        op = found.group(1) if found is not None else "an op of the model or loss"
        return ForwardModeUnsupportedError(
            f"forward-over-reverse {kind} products failed on this model and loss: {op} has no "
            f"forward-mode rule ({type(exc).__name__}: {text.splitlines()[0] if text else ''}); "
            "use strategy='reverse-over-reverse' (or 'auto', which falls back by itself)")
    return None
