"""The loss an operator uses, prepared and described: the one place the operators meet the
language-model objectives (:mod:`.objective`, :mod:`.huggingface`)."""

from __future__ import annotations

from .data import DataSource
from .huggingface import own_loss
from .objective import TokenLoss


def prepare_loss(model, loss_fn, data, unpack, batch_size=None) -> tuple:
    """``(loss_fn, unpack)`` as an operator uses them: a Hugging Face model's own objective
    for ``loss_fn=None`` (:func:`~lanczos_hessian.curvature.huggingface.own_loss`), and a
    :class:`TokenLoss`'s counts taken over the labels of the whole data set (every rank)."""
    if loss_fn is None:
        loss_fn, unpack = own_loss(model, data, unpack, batch_size)
    if isinstance(loss_fn, TokenLoss):
        loss_fn.count_targets(DataSource(data, batch_size, unpack=unpack))
    return loss_fn, unpack


def objective_provenance(loss_fn) -> dict:
    """What defines a :class:`TokenLoss` objective (its :meth:`~TokenLoss.provenance`, the
    token count included), for a run file's provenance; empty for any other loss."""
    return loss_fn.provenance() if isinstance(loss_fn, TokenLoss) else {}
