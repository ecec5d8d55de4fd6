"""Hugging Face ``transformers`` models as they come: the loss when none is given.

An operator built with ``loss_fn=None`` on a ``transformers`` model (a ``PreTrainedModel``)
takes the model's own objective: its causal language-modelling loss, the cross-entropy of
the logits at position ``t`` against the label at ``t + 1`` with labels ``-100`` ignored, made
the full-data objective of :mod:`lanczos_hessian.curvature.objective` (the mean over every
target token of the data set by default). Dict batches (``input_ids``, ``attention_mask``,
``labels``) are unpacked with ``labels`` as the targets.

The model's ``.loss`` itself is a per-batch mean computed from logits cast to float32 (also
in a float64 model), so it is not differentiated: the loss is computed from the logits in the
model's dtype, and on the first batch it is compared with the model's own ``.loss`` (called
with the labels), which proves the convention (shift, ignore index) is the model's; the dtype
the model's own loss came in is recorded (:meth:`ModelObjective.provenance`). A model whose
``.loss`` is something else is refused, naming ``loss_fn=``. ``transformers`` is an optional
dependency: nothing here imports it.
"""

from __future__ import annotations

import logging

import torch

from ..errors import InvalidLossError
from .data import DataSource, dict_batch, map_inputs
from .objective import TokenLoss, logits_of

logger = logging.getLogger(__name__)


def is_transformers_model(model) -> bool:
    """True for a Hugging Face ``transformers`` model (a ``PreTrainedModel``: a ``config``
    with a ``model_type``), without importing ``transformers``."""
    config = getattr(model, "config", None)
    return (type(model).__module__.startswith("transformers.")
            and hasattr(config, "model_type"))


class ModelObjective(TokenLoss):
    """The model's own causal LM loss as a full-data objective (:class:`TokenLoss`), plus
    what the first-batch comparison with the model's ``.loss`` found."""

    def __init__(self, normalization: str = "tokens"):
        super().__init__(normalization, shift=True, ignore_index=-100)
        self.model_loss_dtype = None

    def provenance(self) -> dict:
        return {**super().provenance(), "loss_source": "model",
                "model_loss_dtype": str(self.model_loss_dtype)}


def own_loss(model, data, unpack, batch_size=None):
    """``(loss_fn, unpack)`` for ``loss_fn=None``: the model's objective (module docstring),
    checked on the first batch; :class:`InvalidLossError` for a model without one."""
    if not is_transformers_model(model):
        raise InvalidLossError(
            f"loss_fn=None takes a Hugging Face model's own loss, but {type(model).__name__} "
            "is not a transformers model: pass loss_fn= (for a language model, "
            "lanczos_hessian.TokenLoss() gives the exact token-weighted objective)")
    unpack = unpack or dict_batch("labels")
    loss = ModelObjective()
    inputs, targets = DataSource(data, batch_size, unpack=unpack).first_batch()
    compare_with_model_loss(model, loss, inputs, targets)
    return loss, unpack


def compare_with_model_loss(model, loss: ModelObjective, inputs, targets) -> None:
    """The first batch's token-mean loss from the logits (model's dtype) against the model's
    own ``.loss`` given the labels; refuse a disagreement beyond float32 rounding."""
    device = next(model.parameters()).device
    x = map_inputs(inputs, lambda t: t.to(device))
    y = targets.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**x, labels=y) if isinstance(x, dict) else model(x, labels=y)
    except Exception as exc:
        raise InvalidLossError(
            f"calling the model with labels= failed ({type(exc).__name__}: {exc}); pass "
            "loss_fn= (lanczos_hessian.TokenLoss() for a language model)") from exc
    finally:
        model.train(was_training)
    own = getattr(out, "loss", None)
    if own is None:
        raise InvalidLossError(f"{type(model).__name__} returns no .loss given labels: pass "
                               "loss_fn= (lanczos_hessian.TokenLoss() for a language model)")
    logits, labels = loss.aligned(logits_of(out), y)
    mask = labels != loss.ignore_index
    if not bool(mask.any()):
        return  # no target token in the first batch: nothing to compare
    ours = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    loss.model_loss_dtype = own.dtype
    tolerance = 1e-4 * max(1.0, float(ours.abs()))
    if abs(float(own) - float(ours)) > tolerance:
        raise InvalidLossError(
            f"the model's own .loss ({float(own):.6g}) is not the shifted token cross-entropy "
            f"with labels -100 ignored ({float(ours):.6g}) on the first batch: pass loss_fn= "
            "(lanczos_hessian.TokenLoss(shift=False) for labels aligned with the logits)")
    if own.dtype != logits.dtype:
        logger.info("the model computes its own .loss in %s from %s logits; products use the "
                    "loss in %s, computed from the logits", own.dtype, logits.dtype,
                    logits.dtype)

