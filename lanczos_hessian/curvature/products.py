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
   product a failed compilation falls back to is the same function;
4. blocks of reverse-over-reverse products (eager): where one batch's forward costs at most
   :data:`BATCHED_BLOCKS_UP_TO_FLOPS` (8 million floating-point operations, as
   ``torch.utils.flop_counter`` counts the first batch's forward, attention on its math
   kernel), a block's backward sweeps are one call vectorized over its columns (from
   ``ReverseOverReverse.BATCHED_FROM`` columns: 2 for the Hessian, 8 for the GGN), else one
   call per column. Single vectors are the same either way. The count depends on the model
   and the shape of a batch alone (both part of what a run records and checks on resume),
   so the form is the same in every run and on resume; the two forms differ at rounding
   level at most (bit for bit the same on most models measured, docs/BENCHMARKS.md).

Why (measured by ``scripts/bench_products.py``, docs/BENCHMARKS.md, *Products against the bare
loop*; CPU, one thread, medians of interleaved calls, preliminary figures on a shared
machine): for single vectors, the products of Lanczos, the bare double backward was faster
than the bare forward-over-reverse on every model of the grid (MLPs of 4k and 1M parameters,
CNNs of 30k and 955k, a transformer encoder, a small language model; batches of 32-256;
float32 and float64), by 1.05x to 4.4x, but for the 955k CNN, where the two were within
1-2% (the quiet table of docs/BENCHMARKS.md: 330 ms against 326 ms). For blocks, the
vmapped forward-over-reverse was faster per vector than one backward per column on the MLPs
and the 30k CNN with blocks of 16 (1.1-1.7x), slower on the transformer and the language
model (1.3-1.7x); rule 4's vectorized backward takes that gain within the strategy, so
that a run's single and block products stay one strategy (a rule that switched strategy
with the block size would change the numbers at rounding level between them).
Reverse-over-reverse also works for every op with a double
backward, where forward mode lacks rules for some losses (``torch.nn.MSELoss``) and kernels.

Why rule 4 (``scripts/bench_products.py --block-forms``, docs/BENCHMARKS.md, *Blocks: per
column, batched backward, forward-over-reverse*; one CPU thread, medians of interleaved
passes): a vectorized sweep pays where the product is many small operations, whose fixed
cost it divides by the block size, and loses where the operations are large (its batched
kernels and ``b``-times-larger intermediates were slower than ``b`` calls). Per vector,
blocks of 16: the 4k MLP's batches of 32 (0.3 MFLOP) took 3.1 ms vectorized against 7.7
column by column, of 512 (4.3 MFLOP) 1.06 against 1.18; the 30k CNN's batches of 32 (7.1
MFLOP) 54.4 against 60.8; above the threshold every model of the grid was faster column by
column (the 30k CNN's batches of 256, 57 MFLOP: 27.6 against 34.8; the transformer, 71
MFLOP: 150 against 195; the 1M MLP, the 955k CNN, the language model). The rule's form was
within 5% of the fastest of the three forms on 29 of the grid's 30 points; the other is
the 30k CNN's batches of 32 with blocks of 16, where the vmapped forward-over-reverse was
the fastest (44.2 against 54.4 ms), a strategy the rule keeps for the models without a
double backward (rule 2).

The operator resolves the rule once (:func:`resolve_strategy`); run files record the resolved
strategy, and a resume with another strategy is refused like any other setting.
"""

from __future__ import annotations

import logging

from ..errors import ForwardModeUnsupportedError, InvalidModelError
from .curvatures import CURVATURES, BatchCurvature
from .differentiation import PLAIN
from .inputs import call_model
from .kernels import twice_differentiable

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "forward-over-reverse", "reverse-over-reverse")
KINDS = tuple(CURVATURES)

#: Forward floating-point operations of one batch up to which reverse-over-reverse blocks
#: take their backward sweeps as one vectorized call (rule 4 of the module docstring).
BATCHED_BLOCKS_UP_TO_FLOPS = 8_000_000


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
    curvature = _resolve(kind, model, loss_fn, space, inputs, targets, strategy, compiled)
    if curvature.strategy == "reverse-over-reverse":  # rule 4
        curvature.differentiate.batched_blocks = batched_blocks(model, loss_fn, inputs,
                                                                targets)
    return curvature


def batched_blocks(model, loss_fn, inputs, targets) -> bool:
    """Rule 4: whether one batch's forward (``inputs`` a full batch, ``model`` in the mode
    products are taken in) costs at most :data:`BATCHED_BLOCKS_UP_TO_FLOPS` floating-point
    operations, as ``torch.utils.flop_counter.FlopCounterMode`` counts them (the matrix
    products and convolutions, attention on its math kernel as the products run it). False
    where the count fails or finds none (a model of other ops: nothing to base the rule on),
    and for parameters of a tensor subclass (a sharded model's ``DTensor``: the vectorized
    backward is for plain tensors)."""
    if any(type(p) not in PLAIN for p in model.parameters()):
        return False
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, twice_differentiable():
            loss_fn(call_model(model, None, inputs), targets)
        flops = counter.get_total_flops()
    except Exception as exc:  # a model the counter cannot follow: the per-column backward
        logger.debug("forward not counted (%s): blocks by one backward per column", exc)
        return False
    return 0 < flops <= BATCHED_BLOCKS_UP_TO_FLOPS


def _resolve(kind, model, loss_fn, space, inputs, targets, strategy, compiled):
    """The strategy by rules 1-3."""
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
