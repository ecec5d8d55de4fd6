"""The exact full-data objective of a language model: token-weighted cross-entropy.

A language model's data set is ``S`` sequences; sequence ``s`` has target positions ``T_s``
(labels not equal to the ignore index, after the causal shift: the logits at position ``t``
predict the label at ``t + 1``) with token losses ``l_st(w) = -log softmax(z_st)[y_st]``. The
full-data loss is one of (``normalization``)

* ``"tokens"`` (default): ``L = (1/T) sum_s sum_{t in T_s} l_st`` with ``T = sum_s |T_s|``,
  the mean over every target token of the data set: what a language model's training loss
  estimates;
* ``"sequences"``: ``L = (1/S') sum_{s : |T_s| > 0} (1/|T_s|) sum_{t in T_s} l_st``, the mean
  over sequences of their per-sequence means (``S'`` sequences with a target token);
* ``"sum"``: ``L = sum_s sum_{t in T_s} l_st``.

:class:`TokenLoss` is a loss function with reduction ``"sum"`` whose value on a batch is that
batch's share of ``L`` (each token loss times its weight ``1/T``, ``1/(|T_s| S')`` or 1), so
the operators' plain sum over batches is ``L`` exactly, whatever the padding, the batch sizes
and the number of target tokens per batch. Targets equal to the ignore index count for
nothing: a batch without any target token adds nothing, a data set without any is refused.
``T`` and ``S'`` are counted once over the labels (no model evaluation) when the operator is
built, or given; :meth:`TokenLoss.provenance` records them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidDataError, InvalidLossError

NORMALIZATIONS = ("tokens", "sequences", "sum")


def logits_of(outputs) -> torch.Tensor:
    """The logits of a model's outputs: a tensor, a Hugging Face ``ModelOutput`` (its
    ``logits``) or a tuple whose first element is the logits."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise InvalidLossError(f"cannot find the logits in the model's output "
                           f"({type(outputs).__name__}): return a tensor or an object with "
                           "a .logits attribute")


class TokenLoss:
    """Token-level cross-entropy summing to the stated full-data objective (module docstring).

    Parameters
    ----------
    normalization : {"tokens", "sequences", "sum"}
        The full-data loss; ``"tokens"`` (the mean over all target tokens) by default.
    shift : bool
        Causal language modelling: the logits at position ``t`` predict the label at
        ``t + 1`` (Hugging Face's convention, labels a copy of ``input_ids``), so the last
        logits and the first label are dropped. False when labels are already aligned with
        the logits.
    ignore_index : int
        Label that marks a position without a target (padding, prompt): -100 by default.
    num_tokens, num_sequences : int, optional
        ``T`` and ``S'`` when known; counted over the data's labels otherwise.
    loss : callable, optional
        A per-token loss ``loss(logits (n, V), labels (n,))`` to use instead of the plain
        cross-entropy, e.g. ``torch.nn.CrossEntropyLoss(label_smoothing=0.1)``. With
        reduction ``"none"`` any normalization works; ``"mean"`` (over the batch's target
        tokens) and ``"sum"`` are reweighted exactly for ``"tokens"`` and ``"sum"``; a mean
        over class weights and ``"sequences"`` need ``reduction="none"`` and are refused
        naming it.

    The loss is evaluated in the logits' dtype (a float64 model gives a float64 loss).
    """

    reduction = "sum"

    def __init__(self, normalization: str = "tokens", *, shift: bool = True,
                 ignore_index: int = -100, num_tokens: int | None = None,
                 num_sequences: int | None = None, loss=None):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {normalization!r}")
        self.normalization, self.shift = normalization, bool(shift)
        self.ignore_index = int(getattr(loss, "ignore_index", ignore_index))
        self.loss = loss
        self.per_token = _check_per_token_loss(loss, normalization)
        for name, value in (("num_tokens", num_tokens), ("num_sequences", num_sequences)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_tokens, self.num_sequences = num_tokens, num_sequences

    # ---- the targets ----------------------------------------------------------------------
    def aligned(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple:
        """Logits ``(B, L', V)`` and labels ``(B, L')`` position by position (shifted for a
        causal LM)."""
        if targets.is_floating_point() or targets.is_complex():
            raise InvalidLossError(f"token labels must be integers, got {targets.dtype}")
        if self.shift:
            if targets.ndim < 2:
                raise InvalidLossError("shift=True needs labels of shape (batch, length); "
                                       f"got {tuple(targets.shape)}")
            logits, targets = logits[:, :-1], targets[:, 1:]
        if tuple(logits.shape[:-1]) != tuple(targets.shape):
            raise InvalidLossError(
                f"logits of shape {tuple(logits.shape)} do not match labels of shape "
                f"{tuple(targets.shape)}{' after the causal shift' if self.shift else ''}")
        return logits, targets

    def target_mask(self, targets: torch.Tensor) -> torch.Tensor:
        """True at the target positions (shifted, ignore index excluded), ``(B, L')``."""
        if self.shift:
            targets = targets[:, 1:]
        return targets != self.ignore_index

    def count_targets(self, batches) -> None:
        """``T`` and ``S'`` from the labels of ``batches`` (``(inputs, targets)`` pairs), the
        whole data set; refuses a data set without a target token."""
        if self.num_tokens is not None and (self.num_sequences is not None
                                            or self.normalization != "sequences"):
            return
        tokens = sequences = 0
        for _, targets in batches:
            mask = self.target_mask(targets).reshape(len(targets), -1)
            per_sequence = mask.sum(dim=1)
            tokens += int(per_sequence.sum())
            sequences += int((per_sequence > 0).sum())
        if tokens == 0:
            raise InvalidDataError(
                f"the data set has no target token: every label is the ignore index "
                f"({self.ignore_index}){' after the causal shift' if self.shift else ''}, so "
                "the loss is empty; check the labels (and shift=False if they are already "
                "aligned with the logits)")
        self.num_tokens = self.num_tokens or tokens
        self.num_sequences = self.num_sequences or sequences

    # ---- the loss -------------------------------------------------------------------------
    def __call__(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        """The batch's share of the full-data loss ``L`` (a scalar in the logits' dtype)."""
        if self.normalization != "sum" and self.num_tokens is None:
            raise InvalidLossError("the data set's token count is not known yet: pass "
                                   "num_tokens=, or build an operator with this loss (which "
                                   "counts them), or call .count_targets(batches)")
        logits, labels = self.aligned(logits_of(outputs), targets)
        if self.per_token is not None and self.per_token != "none":
            return self._reweighted(logits, labels)
        mask = labels != self.ignore_index
        safe = torch.where(mask, labels, torch.zeros_like(labels))  # any class: masked below
        flat = self._token_losses(logits.reshape(-1, logits.shape[-1]), safe.reshape(-1))
        losses = torch.where(mask.reshape(-1), flat, torch.zeros_like(flat))
        if self.normalization == "sum":
            return losses.sum()
        if self.normalization == "tokens":
            return losses.sum() / self.num_tokens
        per_sequence = losses.reshape(len(labels), -1).sum(dim=1)
        counts = mask.reshape(len(labels), -1).sum(dim=1).clamp(min=1).to(per_sequence.dtype)
        return (per_sequence / counts).sum() / self.num_sequences

    def _token_losses(self, logits, labels):
        """Per-token losses ``(n,)`` (the ignored positions are masked by the caller)."""
        if self.loss is None:
            return F.cross_entropy(logits, labels, reduction="none")
        return self.loss(logits, labels)

    def _reweighted(self, logits, labels):
        """A per-token loss reducing by ``mean`` or ``sum`` over the batch, made exact: the
        mean over the batch's ``n_B`` target tokens times ``n_B`` is their sum."""
        n = int((labels != self.ignore_index).sum())
        if n == 0:
            return logits.sum() * 0  # no target token in this batch: nothing, as a graph
        value = self.loss(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        total = value * n if self.per_token == "mean" else value
        return total if self.normalization == "sum" else total / self.num_tokens

    def provenance(self) -> dict:
        """What defines the objective, for a run file's attributes."""
        return {"objective": self.normalization, "num_tokens": self.num_tokens,
                "num_sequences": self.num_sequences, "shift_labels": self.shift,
                "ignore_index": self.ignore_index}

    def __repr__(self):
        return (f"TokenLoss(normalization={self.normalization!r}, shift={self.shift}, "
                f"num_tokens={self.num_tokens})")


def _check_per_token_loss(loss, normalization: str):
    """The reduction of a user's per-token loss (None without one), refused where the
    objective cannot be recovered from it exactly."""
    if loss is None:
        return None
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {type(loss).__name__}")
    reduction = getattr(loss, "reduction", None)
    if reduction not in ("none", "mean", "sum"):
        raise InvalidLossError(
            f"cannot tell how {type(loss).__name__} reduces over tokens "
            f"(reduction={reduction!r}); give it reduction='none' (per-token values)")
    if reduction != "none" and normalization == "sequences":
        raise InvalidLossError(
            f"a loss with reduction={reduction!r} hides the per-sequence token losses that "
            "the 'sequences' objective weights: use reduction='none'")
    if reduction == "mean" and getattr(loss, "weight", None) is not None:
        raise InvalidLossError(
            "a class-weighted cross-entropy with reduction='mean' divides by the batch's sum "
            "of class weights, not its token count, so no batch weight makes it exact: use "
            "reduction='none'")
    return reduction

