"""The loss an operator uses, prepared and described: the one place the operators meet the
language-model objectives (:mod:`.objective`, :mod:`.huggingface`)."""

from __future__ import annotations

from ..errors import InvalidLossError
from .data import DataSource
from .huggingface import own_loss
from .objective import TokenLoss


def prepare_loss(model, loss_fn, data, unpack, batch_size=None, reduction=None) -> tuple:
    """``(loss_fn, unpack)`` as an operator uses them: a Hugging Face model's own objective
    for ``loss_fn=None`` (:func:`~lanczos_hessian.curvature.huggingface.own_loss`), a
    :class:`TokenLoss`'s counts taken over the labels of the whole data set (every rank),
    and a token-level mean refused (:func:`refuse_token_mean`)."""
    if loss_fn is None:
        loss_fn, unpack = own_loss(model, data, unpack, batch_size)
    if isinstance(loss_fn, TokenLoss):
        loss_fn.count_targets(DataSource(data, batch_size, unpack=unpack))
    elif (reduction or getattr(loss_fn, "reduction", None)) == "mean":
        refuse_token_mean(loss_fn, DataSource(data, batch_size, unpack=unpack).first_batch()[1])
    return loss_fn, unpack


def refuse_token_mean(loss_fn, targets) -> None:
    """Integer targets of shape ``(batch, length, ...)`` holding the ignore index, under a
    ``mean`` reduction: each batch's loss is a mean over its own number of target tokens,
    which the operators' weighting by samples cannot undo, so the operator would be the
    Hessian of no stated objective. Refused, naming :class:`TokenLoss`."""
    if targets.is_floating_point() or targets.is_complex() or targets.ndim < 2:
        return
    ignore = getattr(loss_fn, "ignore_index", -100)
    if bool((targets == ignore).any()):
        raise InvalidLossError(
            f"the loss reduces by 'mean' over token targets with ignored positions (labels "
            f"{ignore}): each batch's mean divides by its own token count, so weighting batches "
            "by their number of sequences gives no full-data objective. Use "
            "lanczos_hessian.TokenLoss() (the mean over all target tokens of the data set), or "
            "TokenLoss(loss=your_loss) to reweight a per-token loss exactly")


def objective_provenance(loss_fn) -> dict:
    """What defines a :class:`TokenLoss` objective (its :meth:`~TokenLoss.provenance`, the
    token count included), for a run file's provenance; empty for any other loss."""
    return loss_fn.provenance() if isinstance(loss_fn, TokenLoss) else {}
