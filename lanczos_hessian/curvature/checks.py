"""Checks around the products: the model's mode, precision and device, the loss's reduction,
finite results, and the ranks applying the same block.

Products are taken with the model in eval mode (dropout off, batch-norm on its running
statistics), so the operator is a fixed symmetric matrix; :func:`evaluation_mode` restores
the caller's train/eval flags afterwards.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

from ..errors import InvalidLossError, InvalidModelError, NonFiniteError, PrecisionWarning, \
    RankMismatchError
from ..parallel.distributed import current_world
from .inputs import call_model, input_tensors


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module):
    """Put every submodule in eval mode for the block; restore each one's flag after (a
    model already in eval mode throughout is left alone: nothing to put or restore).
    Yields the model's ``named_modules()`` as a list, walked once here for the block's
    other uses (the pass's model checks and parameters)."""
    modules = list(model.named_modules())
    flags = [module.training for _, module in modules]
    if any(flags):
        model.eval()
    try:
        yield modules
    finally:
        for (_, module), training in zip(modules, flags):
            if module.training != training:
                module.training = training


def infer_reduction(loss_fn, reduction: str | None) -> str:
    """The loss reduction: the argument if given, else ``loss_fn.reduction`` (torch.nn losses)."""
    reduction = reduction or getattr(loss_fn, "reduction", None)
    if reduction not in ("mean", "sum"):
        raise InvalidLossError(
            f"cannot tell how the loss reduces over a batch (got reduction={reduction!r}); "
            "use a torch.nn loss with reduction='mean' or 'sum', or pass reduction='mean'/'sum'"
        )
    return reduction


def check_first_loss(model, loss_fn, x, y, world) -> None:
    """The loss on the first batch (no graph) is a finite scalar tensor, or a clear error:
    :class:`InvalidLossError` when the model or loss rejects the batch or the loss is not a
    scalar, :class:`NonFiniteError` when it is NaN or infinite."""
    try:
        with torch.no_grad():
            value = loss_fn(call_model(model, None, x), y)
    except Exception as exc:  # the model or loss rejects the batch: say so plainly
        raise InvalidLossError(
            f"evaluating the loss on the first batch failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.ndim != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidLossError(
            f"loss_fn must return a scalar tensor, got {shape}; use reduction='mean' or 'sum'")
    if not torch.isfinite(value):
        raise NonFiniteError(f"the loss is {value.item()} on {where(0, world)}")


def warn_on_precision_mismatch(inputs, model_dtype) -> None:
    """One :class:`PrecisionWarning` when the first batch's floating inputs are not in the
    model's dtype: they are converted on every pass, and the products taken in the model's."""
    other = {t.dtype for t in input_tensors(inputs)
             if t.is_floating_point() and t.dtype != model_dtype}
    if not other:
        return
    names = ", ".join(sorted(map(str, other)))
    effect = ("rounded to the model's precision" if any(
        d.itemsize > model_dtype.itemsize for d in other) else
        "carrying only their own precision into the products")
    warnings.warn(
        f"the model's parameters are {model_dtype} but the data's floating inputs are "
        f"{names}: the inputs are converted to {model_dtype} on every pass ({effect}) and "
        f"the curvature products are computed in {model_dtype} (accumulated in float64); "
        f"convert the data or the model to one dtype to silence this", PrecisionWarning,
        stacklevel=4)


#: Floating-point types whose products are refused unless ``allow_low_precision=True``.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def refuse_low_precision(parameters: dict) -> None:
    """Raise :class:`InvalidModelError` when a selected parameter is float16 or bfloat16."""
    low = {name: p.dtype for name, p in parameters.items() if p.dtype in LOW_PRECISION}
    if not low:
        return
    name, dtype = next(iter(low.items()))
    eps = torch.finfo(dtype).eps
    raise InvalidModelError(
        f"the model's parameter {name!r} is {dtype} ({len(low)} of {len(parameters)} selected "
        f"parameters are 16-bit): curvature products in 16-bit floating point carry relative "
        f"rounding errors of about {eps:.0e} per operation, which swamp the second-order terms, "
        f"so eigenvalues come out wrong by percents and no residual tolerance can be met. Use "
        f"float32 products with float64 accumulation (the default for a float32 model: "
        f"model.float(), or --model-dtype float32), or float64 for a reference; pass "
        f"allow_low_precision=True to measure the 16-bit model anyway")


def model_device(model) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def where(index, world) -> str:
    return f"batch {index}" + (f" of rank {world.rank}'s shard" if world.size > 1 else "")


def check_finite(health: torch.Tensor, kind, world=None):
    """Raise :class:`NonFiniteError` naming the first batch whose loss or product is not
    finite. ``health`` is ``(batches, 2)``: each batch's loss and the sum of its product
    (a NaN or Inf entry makes the sum non-finite). One device sync per pass, not per batch.
    """
    bad = ~torch.isfinite(health)
    if not bool(bad.any()):
        return
    index = int(bad.any(dim=1).nonzero()[0, 0])
    place = where(index, world or current_world())
    if bool(bad[index, 0]):
        raise NonFiniteError(f"the loss is {float(health[index, 0])} on {place}")
    raise NonFiniteError(
        f"the {kind}-vector product has NaN or Inf entries on {place} "
        "(overflow in the model, a non-differentiable op, or a NaN in the vector)"
    )


#: Relative tolerance when comparing the per-rank fingerprints of the applied block: far
#: above rounding (equal blocks give equal sums up to the order of a reduction), far below
#: the difference between blocks drawn from different seeds.
SAME_BLOCK_RTOL = 1e-10


def check_same_block(rows: np.ndarray, kind: str) -> None:
    """Raise :class:`RankMismatchError` (on every rank alike: all see the same ``rows``)
    unless every rank applied the operator to the same block. ``rows``: ``(W, 3)`` of
    (sum, 1-norm, 2-norm) per rank."""
    if not np.all(np.isfinite(rows)):
        return  # an overflowing norm proves nothing; non-finite products are caught anyway
    sums, l1, l2 = rows.T
    if (np.ptp(sums) <= SAME_BLOCK_RTOL * l1.max() and np.ptp(l1) <= SAME_BLOCK_RTOL * l1.max()
            and np.ptp(l2) <= SAME_BLOCK_RTOL * l2.max()):
        return
    listed = ", ".join(f"rank {r}: sum {s:.17g}, norm {n:.17g}"
                       for r, (s, n) in enumerate(zip(sums, l2)))
    raise RankMismatchError(
        f"the ranks applied the {kind} operator to different vectors ({listed}); every rank "
        "must run the same solver on the same vectors: seed it with the same integer on every "
        "rank (rng=0, not rng=None), or draw the start vectors on rank 0 and broadcast them"
    )


def check_trainable_values(parameters: dict) -> None:
    """Raise :class:`InvalidModelError` when a selected parameter has no values: a model on
    the ``meta`` device (built by ``torch.device("meta")`` or ``init_empty_weights`` and never
    loaded)."""
    meta = [name for name, p in parameters.items() if p.is_meta]
    if meta:
        raise InvalidModelError(
            f"the model's parameter {meta[0]!r} ({len(meta)} of {len(parameters)} selected) is "
            "on the meta device: it has a shape but no values, so there is no curvature to "
            "take. Materialize the model first (model.to_empty(device='cpu') and load a state "
            "dict, or build it on a real device)")


#: Layers that behave differently in train and eval mode.
MODE_DEPENDENT = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd,
                  torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def warn_on_train_mode(model) -> None:
    """Say once, at construction, that a model arriving in train mode with batch-norm or
    dropout layers gets its curvature in eval mode (the operator's fixed matrix), which is
    not the train-mode Hessian."""
    layers = [name or type(m).__name__ for name, m in model.named_modules()
              if m.training and isinstance(m, MODE_DEPENDENT)]
    if not layers:
        return
    shown = ", ".join(repr(n) for n in layers[:3]) + (" and more" if len(layers) > 3 else "")
    warnings.warn(
        f"the model is in train mode and has {len(layers)} layer{'s' if len(layers) > 1 else ''}"
        f" whose output depends on the mode ({shown}); curvature products are taken in eval "
        "mode (dropout off, batch-norm on its running statistics) so that the operator is one "
        "fixed matrix, which differs from the train-mode Hessian. Call model.eval() before "
        "building the operator to silence this", UserWarning, stacklevel=4)
