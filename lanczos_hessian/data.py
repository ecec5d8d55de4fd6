"""Data sources for full-dataset operators: batching, validation, sharding, fingerprints.

A curvature operator sums over every sample of the data set on every application, so its
data source must be *re-iterable* (each ``iter()`` starts a fresh pass) and must yield the
same samples on every pass. Three forms are accepted:

* a pair ``(inputs, targets)`` of tensors with equal first dimension, cut into batches of
  ``batch_size`` here;
* a ``torch.utils.data.DataLoader`` (any sampler, as long as each pass covers the same
  samples: shuffling is harmless for a sum, random augmentation or ``drop_last`` with a
  shuffling sampler is not, and is detected);
* any other re-iterable of ``(inputs, targets)`` batches, e.g. a list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import InvalidDataError, NonDeterministicDataError

DEFAULT_BATCH_SIZE = 512


class DataSource:
    """A re-iterable of ``(inputs, targets)`` batches, optionally one rank's exact shard.

    Parameters
    ----------
    data : tuple of tensors, DataLoader or re-iterable
        See the module docstring.
    batch_size : int, optional
        Batch size when ``data`` is a pair of tensors (default 512); ignored otherwise.
    rank, world_size : int
        This process's share of the data: contiguous sample ranges of a tensor pair
        (sizes differ by at most one), or every ``world_size``-th batch of an iterable.
        Every sample belongs to exactly one rank: no padding, no dropping.
    """

    def __init__(self, data, batch_size: int | None = None, rank: int = 0, world_size: int = 1):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.rank, self.world_size = rank, world_size
        self._tensors = _as_tensor_pair(data)
        if self._tensors is None:
            if iter(data) is data:
                raise InvalidDataError(
                    f"data is a one-shot iterator ({type(data).__name__}); a full-dataset "
                    "operator makes many passes: pass a list, a DataLoader or an "
                    "(inputs, targets) pair of tensors"
                )
            self._iterable = data
        else:
            n = len(self._tensors[0])
            if n < world_size:
                raise InvalidDataError(
                    f"{world_size} ranks but only {n} samples: every rank needs at least one"
                )

    @property
    def num_samples(self) -> int | None:
        """Number of samples on this rank, when known without a pass (tensor pairs)."""
        if self._tensors is None:
            return None
        lo, hi = self._shard_range(len(self._tensors[0]))
        return hi - lo

    def _shard_range(self, n: int) -> tuple:
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def __iter__(self) -> Iterator[tuple]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            lo, hi = self._shard_range(len(inputs))
            for start in range(lo, hi, self.batch_size):
                stop = min(start + self.batch_size, hi)
                yield inputs[start:stop], targets[start:stop]
            return
        for index, batch in enumerate(self._iterable):
            if index % self.world_size == self.rank:
                yield unpack_batch(batch, index)

    def first_batch(self) -> tuple:
        """The first batch of this rank's shard, validated; raises on an empty source."""
        for batch in self:
            return batch
        raise InvalidDataError(
            "the data source is empty" + (f" on rank {self.rank}" if self.world_size > 1 else "")
        )


def _as_tensor_pair(data):
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(t, torch.Tensor) for t in data
    ):
        inputs, targets = data
        _check_lengths(inputs, targets, "the data")
        if len(inputs) == 0:
            raise InvalidDataError("the data source is empty: inputs have 0 samples")
        return inputs, targets
    if isinstance(data, torch.Tensor):
        raise InvalidDataError(
            "data is a single tensor; pass an (inputs, targets) pair, a DataLoader "
            "or an iterable of (inputs, targets) batches"
        )
    if not hasattr(data, "__iter__"):
        raise InvalidDataError(
            f"data of type {type(data).__name__} is not iterable; pass an (inputs, targets) "
            "pair of tensors, a DataLoader or an iterable of batches"
        )
    return None


def unpack_batch(batch, index: int) -> tuple:
    """Validate one batch from an iterable and return it as ``(inputs, targets)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InvalidDataError(
            f"batch {index} is a {type(batch).__name__}, expected an (inputs, targets) pair"
        )
    inputs, targets = batch
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise InvalidDataError(f"batch {index}: inputs and targets must be tensors")
    _check_lengths(inputs, targets, f"batch {index}")
    return inputs, targets


def _check_lengths(inputs, targets, where):
    if inputs.ndim == 0 or targets.ndim == 0 or len(inputs) != len(targets):
        raise InvalidDataError(
            f"{where}: inputs have {len(inputs) if inputs.ndim else 0} samples but targets "
            f"have {len(targets) if targets.ndim else 0}; they must agree along the first axis"
        )


@dataclass
class PassFingerprint:
    """Order-independent summary of one pass: sample count and float64 sums of the data.

    Shuffling leaves it unchanged (up to rounding); augmentation, a sampler that drops
    different samples, or a source that changes between passes does not.
    """

    num_samples: int = 0
    input_sum: float = 0.0
    input_sq_sum: float = 0.0
    target_sum: float = 0.0

    def add(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        x = inputs.detach().to(torch.float64)
        self.num_samples += len(inputs)
        self.input_sum += float(x.sum())
        self.input_sq_sum += float(x.square().sum())
        self.target_sum += float(targets.detach().to(torch.float64).sum())

    def as_tuple(self) -> tuple:
        return (self.num_samples, self.input_sum, self.input_sq_sum, self.target_sum)

    def check_same(self, reference: "PassFingerprint", rtol: float = 1e-9) -> None:
        """Raise :class:`NonDeterministicDataError` if this pass differs from ``reference``."""
        if self.num_samples != reference.num_samples:
            raise NonDeterministicDataError(
                f"the data source yielded {self.num_samples} samples on this pass but "
                f"{reference.num_samples} on the first; a sampler with drop_last=True and "
                "shuffling, or a changing source, makes the operator a different matrix "
                "on every application"
            )
        names = ("sum of inputs", "sum of squared inputs", "sum of targets")
        for name, now, then in zip(names, self.as_tuple()[1:], reference.as_tuple()[1:]):
            if not math.isclose(now, then, rel_tol=rtol, abs_tol=rtol):
                raise NonDeterministicDataError(
                    f"the data source yielded different samples on two passes ({name}: "
                    f"{now!r} vs {then!r}); random augmentation or a changing source "
                    "makes the operator a different matrix on every application"
                )
