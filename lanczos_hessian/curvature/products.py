"""Which differentiation strategy a curvature product uses: the choices and the fixed rule.

Two strategies give the same numbers up to rounding
(:mod:`lanczos_hessian.curvature.differentiation`): ``"reverse-over-reverse"`` (double
backward, the gradient graph shared by a block) and ``"forward-over-reverse"`` (``jvp`` of
``grad``, ``vmap`` over a block). ``"auto"`` (the default) picks one by a fixed rule, never by
timing, so that two runs of the same command compute the same numbers bit for bit and a
resumed run continues with the products it started with:

1. ``"reverse-over-reverse"``, for every model;
2. unless one product of the operator's kind on the first batch, taken once when the
   operator is built, fails because an op has no double backward (while it has a
   forward-mode rule): then ``"forward-over-reverse"``. Whether an op has a derivative rule
   does not change from run to run, so neither does the choice;
3. compiled products (``compile=True``): the Hessian by the same rule, its
   reverse-over-reverse product written with ``torch.func`` for the trace
   (:meth:`~lanczos_hessian.curvature.differentiation.ReverseOverReverse.traced_hessian`:
   autograd's double backward cannot be compiled, ``torch.compile with aot_autograd does
   not currently support double backward``); the GGN and the residual take
   ``"forward-over-reverse"`` first (and reverse-over-reverse when an op lacks a
   forward-mode rule), since their reverse-mode form differentiates autograd's backward.
   Compiled, the two strategies were as fast on the 4k MLP (2.06x / 2.05x the eager bare
   double backward, batches of 32), the transformer encoder (2.34x / 2.27x) and the
   language model (2.27x / 2.46x), and reverse-over-reverse faster on the 30k CNN
   (1.47x / 1.22x), where forward-over-reverse is slow on convolutions (preliminary,
   loaded machine; docs/BENCHMARKS.md). One strategy for the compiled and the eager Hessian
   also means that ``compile=True`` does not change a run's strategy, and that the eager
   product a failed compilation falls back to is the same function.

Why (measured by ``scripts/bench_products.py``, docs/BENCHMARKS.md, *Products against the bare
loop*; CPU, one thread, medians of interleaved calls, preliminary figures on a shared
machine): for single vectors, the products of Lanczos, the bare double backward was faster
than the bare forward-over-reverse on every model of the grid (MLPs of 4k and 1M parameters,
CNNs of 30k and 955k, a transformer encoder, a small language model; batches of 32-256;
float32 and float64), by 1.05x to 4.4x, but for the 955k CNN, where the two were within
1-2% (the quiet table of docs/BENCHMARKS.md: 330 ms against 326 ms). For blocks of 4 the shared gradient graph was as fast
or faster per vector everywhere; for blocks of 16 the vmapped sweep was faster per vector on
the MLPs and the 30k CNN (1.1-1.7x), the shared graph on the transformer and the language
model (1.3-1.7x). One
strategy per operator keeps a run's single and block products the same function (a rule
that switched with the block size would change the numbers at rounding level between
them), so the rule follows the single vectors and the gap for large blocks on MLPs is
stated in docs/BENCHMARKS.md. Reverse-over-reverse also works for every op with a double
backward, where forward mode lacks rules for some losses (``torch.nn.MSELoss``) and kernels.

The operator resolves the rule once (:func:`resolve_strategy`); run files record the resolved
strategy, and a resume with another strategy is refused like any other setting.
"""

from __future__ import annotations

import logging

from ..errors import ForwardModeUnsupportedError, InvalidModelError
from .curvatures import CURVATURES, BatchCurvature
from .kernels import twice_differentiable

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "forward-over-reverse", "reverse-over-reverse")
KINDS = tuple(CURVATURES)


def check_strategy(strategy) -> str:
    """``strategy`` if it is one of :data:`STRATEGIES`, else a ``ValueError`` naming them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    return strategy


def resolve_strategy(kind, model, loss_fn, space, inputs, targets, strategy: str = "auto",
                     compiled: bool = False) -> BatchCurvature:
    """The batch curvature of ``kind`` with ``strategy``, ``"auto"`` fixed by the rule of the
    module docstring (``compiled``: the rule for compiled products). ``model`` must be in the
    mode products are taken in."""
    cls = CURVATURES[kind]
    if check_strategy(strategy) != "auto":
        return cls(model, loss_fn, space, strategy)
    forward_first = compiled and kind != "hessian"  # rule 3
    first, second = ("forward-over-reverse", "reverse-over-reverse") if forward_first else \
        ("reverse-over-reverse", "forward-over-reverse")
    reason = "auto: compiled products" if forward_first else "auto: the rule's default"
    curvature = cls(model, loss_fn, space, first, reason)
    probe = _probe(space, model)
    try:
        with twice_differentiable():
            curvature.products(inputs, targets, probe)
    except (InvalidModelError, ForwardModeUnsupportedError) as exc:  # a derivative missing
        fallback = cls(model, loss_fn, space, second, f"auto: {first} unavailable")
        try:
            with twice_differentiable():
                fallback.products(inputs, targets, probe)
        except Exception:
            raise exc from None
        logger.info("%s unavailable (%s); using %s", first, exc, second)
        return fallback
    return curvature


def _probe(space, model):
    import torch

    first = next(iter(space.parameters(model).values()))
    return torch.ones(space.dim, 1, dtype=first.dtype, device=first.device)
