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

Batches of another form -- a dict, as HuggingFace-style data sets and collators yield, or any
other structure -- go through ``unpack``, a function of the user's that maps one batch to
``(inputs, targets)`` (:func:`dict_batch` builds the common one). ``inputs`` is then a tensor
(the model is called as ``model(inputs)``), a tuple of tensors (``model(*inputs)``) or a dict
of tensors (``model(**inputs)``: keyword arguments such as ``input_ids`` and
``attention_mask``); ``targets`` is a tensor, the second argument of the loss. Every tensor
of a batch has the batch's samples along its first axis.

Under ``torch.distributed`` every rank passes the *whole* data set and keeps an exact share
of it (no padding, no dropped or repeated sample): a contiguous range of samples of a tensor
pair, or every ``world_size``-th batch of an iterable (which must then yield its batches in
the same order on every rank: a shuffling or distributed sampler is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator

import torch

from ..errors import InvalidDataError
from .fingerprint import PassFingerprint, sample_hashes  # noqa: F401  (their former home)
from .inputs import batch_length, call_model, input_tensors, map_inputs  # noqa: F401
from .stamps import HeldTensors, layout

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
    unpack : callable, optional
        ``unpack(batch) -> (inputs, targets)`` for each batch of an iterable whose batches
        are not ``(inputs, targets)`` pairs, e.g. dicts (module docstring, :func:`dict_batch`).
    """

    def __init__(self, data, batch_size: int | None = None, rank: int = 0, world_size: int = 1,
                 unpack: Callable | None = None):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if unpack is not None and not callable(unpack):
            raise TypeError(f"unpack must be a function batch -> (inputs, targets), got "
                            f"{type(unpack).__name__}")
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE
        self.rank, self.world_size = rank, world_size
        self.unpack = unpack
        self._tensors = _as_tensor_pair(data)
        self._views = None  # (layout, batches) of a tensor pair, see _tensor_batches
        if self._tensors is not None and unpack is not None:
            raise ValueError("unpack applies to the batches of a DataLoader or an iterable; "
                             "an (inputs, targets) pair of tensors needs none")
        if self._tensors is None:
            if iter(data) is data:
                raise InvalidDataError(
                    f"data is a one-shot iterator ({type(data).__name__}); a full-dataset "
                    "operator makes many passes: pass a list, a DataLoader or an "
                    "(inputs, targets) pair of tensors"
                )
            _refuse_unbatched_loader(data)
            if world_size > 1:
                _check_rank_independent_order(data, world_size)
            self._iterable = data
        else:
            n = len(self._tensors[0])
            if n < world_size:
                raise InvalidDataError(
                    f"{world_size} ranks (processes) but the data has only {n} "
                    f"sample{'s' if n > 1 else ''}: every rank needs at least one; launch "
                    "fewer processes"
                )

    @property
    def num_samples(self) -> int | None:
        """Number of samples on this rank, when known without a pass (tensor pairs)."""
        if self._tensors is None:
            return None
        lo, hi = self._shard_range(len(self._tensors[0]))
        return hi - lo

    @property
    def total_samples(self) -> int | None:
        """Number of samples over all ranks, when known without a pass (tensor pairs)."""
        return None if self._tensors is None else len(self._tensors[0])

    def identity(self) -> tuple:
        """What every rank must agree on before sharding, as six floats.

        A tensor pair gives ``(0, N, sum, 1-norm of the inputs, sum, 1-norm of the targets)``,
        each sample weighted by its position (:func:`_sums`: float64, one read of the data);
        an iterable ``(1, number of batches or -1, 0, 0, 0, 0)``. Compared across ranks by the
        operators at construction, so that a rank that loaded a different (e.g. already
        sharded, or reordered) data set is an error, not a wrong sum.
        """
        if self._tensors is not None:
            inputs, targets = self._tensors
            return (0.0, float(len(inputs)), *_sums(inputs), *_sums(targets))
        try:
            length = float(len(self._iterable))
        except TypeError:
            length = -1.0
        return (1.0, length, 0.0, 0.0, 0.0, 0.0)

    def stamp(self, held: bool = True):
        """What identifies the data's contents without reading them: a tensor pair's
        tensors' storage addresses, shapes, strides and version counters (which every
        in-place change bumps, through any view); a list or tuple of ``(inputs, targets)``
        batches (no ``unpack``) as :class:`HeldTensors` (``held``; a walk over the list,
        which only the data fingerprint needs). Equal stamps mean the same samples, so a
        pass fingerprint taken once can stand for later passes; None for any other iterable
        (a DataLoader makes new tensors each pass: read afresh)."""
        if self._tensors is None:
            if held and self.unpack is None and isinstance(self._iterable, (list, tuple)):
                return HeldTensors.of(self._iterable)
            return None
        return tuple(layout(t) for t in self._tensors)

    def placed(self, device, dtype) -> bool:
        """True when a tensor pair is already where the products need it: every tensor on
        ``device`` and the floating inputs in ``dtype`` (the batches then go to the model as
        they are, with no conversion per batch); False for an iterable."""
        if self._tensors is None:
            return False
        inputs, targets = self._tensors
        device = torch.device(device)
        return (inputs.device == device and targets.device == device
                and (not inputs.is_floating_point() or inputs.dtype == dtype))

    def _shard_range(self, n: int) -> tuple:
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def _tensor_batches(self, stamp: tuple | None = None) -> list:
        """This rank's batches of a tensor pair as views, cut once and kept while the tensors'
        storage, shape and strides (and the batch size and shard) are unchanged: a view sees
        every in-place change, a rebinding or resize cuts them anew (``stamp``: this
        source's :meth:`stamp`, where the caller has just taken it)."""
        inputs, targets = self._tensors
        layout = (self.batch_size, self.rank, self.world_size,
                  *(each[:3] for each in (self.stamp() if stamp is None else stamp)))
        if self._views is None or self._views[0] != layout:
            lo, hi = self._shard_range(len(inputs))
            self._views = (layout, [(inputs[start:min(start + self.batch_size, hi)],
                                     targets[start:min(start + self.batch_size, hi)])
                                    for start in range(lo, hi, self.batch_size)])
        return self._views[1]

    def __iter__(self) -> Iterator[tuple]:
        return self.batches()

    def batches(self, stamp: tuple | None = None) -> Iterator[tuple]:
        """This rank's batches, as iterating the source gives them (``stamp``: its
        :meth:`stamp`, where the caller has just taken it, which a tensor pair's batches
        then need not take again)."""
        if self._tensors is not None:
            return iter(self._tensor_batches(stamp))
        return self._iterable_batches()

    def _iterable_batches(self) -> Iterator[tuple]:
        """An iterable's batches dealt round-robin to the ranks, each unpacked on the way."""
        for index, batch in enumerate(self._iterable):
            if index % self.world_size == self.rank:
                yield unpack_batch(batch, index, self.unpack)

    def first_batch(self) -> tuple:
        """The first batch of this rank's shard, validated; raises on an empty source.

        Under ``torch.distributed`` an iterable with fewer batches than ranks leaves some
        rank without any: that rank raises here (and, through the operators' collective
        check at construction, every other rank with it).
        """
        if self._tensors is not None:
            for batch in self:
                return batch
        else:
            count = 0
            for index, batch in enumerate(self._iterable):
                if index % self.world_size == self.rank:
                    return unpack_batch(batch, index, self.unpack)
                count += 1
            if count and self.world_size > 1:
                raise InvalidDataError(
                    f"rank {self.rank} of {self.world_size} receives no batch: the data source "
                    f"yields {count} batch{'es' if count > 1 else ''} and batches are dealt "
                    f"round-robin to the {self.world_size} ranks, so every rank needs at least "
                    "one; use smaller batches or fewer processes"
                )
        raise InvalidDataError("the data source is empty: it yielded no batch")


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


def _sums(t: torch.Tensor) -> tuple:
    """``(sum_i w_i s_i, sum_i w_i a_i)`` over the samples ``i`` of a tensor, ``s_i`` and
    ``a_i`` the sum and the sum of absolute values of sample ``i``, with weights
    ``w_i = 1 + i / n`` in ``[1, 2)``: the position weights make the sum depend on the order
    of the samples (ranks that hold the same samples in another order shard them otherwise),
    the second number is its scale. Float64, without a float64 copy of the data."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    rows = t.reshape(len(t), -1) if t.ndim else t.reshape(1, 1)
    if rows.is_floating_point():
        l1 = torch.linalg.vector_norm(rows, 1, dim=1, dtype=torch.float64)
    else:
        l1 = torch.sum(rows.abs(), dim=1, dtype=torch.float64)
    weights = 1.0 + torch.arange(len(rows), dtype=torch.float64, device=rows.device) / len(rows)
    sums = torch.sum(rows, dim=1, dtype=torch.float64)
    return float(weights @ sums), float(weights @ l1)


def _refuse_unbatched_loader(data) -> None:
    """A ``DataLoader(batch_size=None)`` yields single samples with no batch axis, which
    would be read as batches of (feature size) samples: refuse it by name."""
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader) and data.batch_size is None and data.batch_sampler is None:
        raise InvalidDataError(
            "the DataLoader has batch_size=None: it yields single samples without a batch "
            "axis, so a sample's first feature axis would be taken for samples; give it a "
            "batch size (DataLoader(dataset, batch_size=64)) or pass the (inputs, targets) "
            "tensors")


def _check_rank_independent_order(data, world_size: int) -> None:
    """Refuse loaders whose batches differ between ranks (round-robin needs one order)."""
    from torch.utils.data import DataLoader, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(data, DataLoader):
        return
    samplers = [data.sampler, getattr(data.batch_sampler, "sampler", None)]
    if any(isinstance(s, DistributedSampler) for s in samplers):
        raise InvalidDataError(
            "the DataLoader has a DistributedSampler; pass the whole, unsharded data (a "
            "sequential DataLoader or an (inputs, targets) pair): the operator shards it "
            "exactly itself, where a DistributedSampler would pad it with repeated samples"
        )
    if any(isinstance(s, RandomSampler) for s in samplers):
        raise InvalidDataError(
            f"the DataLoader shuffles; with {world_size} ranks its batches are dealt "
            "round-robin, which needs the same batch order on every rank: use shuffle=False "
            "(the order of a sum does not matter)"
        )


def unpack_batch(batch, index: int, unpack: Callable | None = None) -> tuple:
    """Validate one batch from an iterable and return it as ``(inputs, targets)``.

    ``unpack`` (optional) maps the batch to that pair first; ``inputs`` may be a tensor, a
    tuple of tensors or a dict of tensors (module docstring), ``targets`` is a tensor.
    """
    if unpack is not None:
        try:
            batch = unpack(batch)
        except Exception as exc:
            raise InvalidDataError(f"unpack failed on batch {index} ({type(batch).__name__}): "
                                   f"{type(exc).__name__}: {exc}") from exc
        what = f"unpack(batch {index})"
    else:
        what = f"batch {index}"
        if isinstance(batch, Mapping):
            raise InvalidDataError(
                f"batch {index} is a {type(batch).__name__} with keys {sorted(map(str, batch))}, "
                "not an (inputs, targets) pair: pass unpack=, a function mapping a batch to "
                "(inputs, targets), e.g. unpack=dict_batch('labels') (from "
                "lanczos_hessian.curvature.data) to call the model with the other keys as "
                "keyword arguments")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InvalidDataError(
            f"{what} is a {type(batch).__name__}, expected an (inputs, targets) pair"
            + ("" if unpack is not None else "; pass unpack= to map other batches to one"))
    inputs, targets = batch
    if not isinstance(targets, torch.Tensor) or not _valid_inputs(inputs):
        raise InvalidDataError(
            f"{what}: targets must be a tensor and inputs a tensor, a tuple of tensors or a "
            f"dict of tensors; got {_describe(inputs)} and {_describe(targets)}")
    _check_lengths(inputs, targets, what)
    return inputs, targets


def dict_batch(targets: str = "labels", inputs=None) -> Callable:
    """An ``unpack`` for dict batches (HuggingFace style): ``batch -> (model kwargs, targets)``.

    ``batch[targets]`` becomes the loss's targets; the keys ``inputs`` (default: every other
    key) become the model's keyword arguments, ``model(**{key: batch[key]})``.
    """
    keys = None if inputs is None else tuple(inputs)

    def unpack(batch):
        if targets not in batch:
            raise KeyError(f"no target key {targets!r} among {sorted(map(str, batch))}")
        chosen = keys if keys is not None else [k for k in batch if k != targets]
        return {key: batch[key] for key in chosen}, batch[targets]

    return unpack


def _valid_inputs(inputs) -> bool:
    if isinstance(inputs, torch.Tensor):
        return True
    if isinstance(inputs, Mapping):
        return bool(inputs) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                    for k, v in inputs.items())
    return (isinstance(inputs, (tuple, list)) and bool(inputs)
            and all(isinstance(v, torch.Tensor) for v in inputs))


def _describe(value) -> str:
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {[type(v).__name__ for v in value]}"
    return f"a {type(value).__name__}"


def _check_lengths(inputs, targets, where):
    tensors = input_tensors(inputs)
    lengths = [len(t) if t.ndim else 0 for t in tensors]
    n_targets = len(targets) if targets.ndim else 0
    scalar = targets.ndim == 0 or any(t.ndim == 0 for t in tensors)
    if scalar or any(n != n_targets for n in lengths):
        shown = lengths[0] if len(lengths) == 1 else lengths
        raise InvalidDataError(
            f"{where}: inputs have {shown} samples but targets have {n_targets}; they must "
            "agree along the first axis"
        )
