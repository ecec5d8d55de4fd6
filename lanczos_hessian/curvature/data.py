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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.func import functional_call

from ..errors import InvalidDataError, NonDeterministicDataError

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

        A tensor pair gives ``(0, N, sum, 1-norm of the inputs, sum, 1-norm of the targets)``
        (float64, one read of the data); an iterable ``(1, number of batches or -1, 0, 0, 0,
        0)``. Compared across ranks by the operators at construction, so that a rank that
        loaded a different (e.g. already sharded) data set is an error, not a wrong sum.
        """
        if self._tensors is not None:
            inputs, targets = self._tensors
            return (0.0, float(len(inputs)), *_sums(inputs), *_sums(targets))
        try:
            length = float(len(self._iterable))
        except TypeError:
            length = -1.0
        return (1.0, length, 0.0, 0.0, 0.0, 0.0)

    def stamp(self) -> tuple | None:
        """What identifies a tensor pair's contents without reading them: each tensor's
        storage address, shape, strides and version counter (which every in-place change
        bumps, through any view). Equal stamps mean the same samples, so a pass fingerprint
        taken once can stand for later passes; None for an iterable (read afresh each pass).
        """
        if self._tensors is None:
            return None
        return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t._version, str(t.device))
                     for t in self._tensors)

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
    """``(sum, sum of absolute values)`` of a tensor in float64, without a float64 copy."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point():
        l1 = torch.linalg.vector_norm(t, 1, dtype=torch.float64)
    else:
        l1 = torch.sum(t.abs(), dtype=torch.float64)
    return float(torch.sum(t, dtype=torch.float64)), float(l1)


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


# ---- structured inputs: a tensor, a tuple of tensors (positional), a dict (keyword) ------
def input_tensors(inputs) -> list:
    """The tensors of a batch's inputs in a fixed order (a dict's by sorted key)."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [inputs[key] for key in sorted(inputs)]
    return list(inputs)


def map_inputs(inputs, fn):
    """``fn`` applied to every tensor of ``inputs``, the structure kept."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {key: fn(value) for key, value in inputs.items()}
    return tuple(fn(value) for value in inputs)


def batch_length(inputs) -> int:
    """Samples in a batch: the first dimension of its (first) input tensor."""
    return len(input_tensors(inputs)[0])


def call_model(model, parameters_and_buffers, inputs):
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` (a tensor, a tuple, a dict)
    with the given parameters and buffers swapped in (``torch.func.functional_call``), or
    the model's own when ``parameters_and_buffers`` is None."""
    if parameters_and_buffers is None:
        if isinstance(inputs, torch.Tensor):
            return model(inputs)
        return model(**inputs) if isinstance(inputs, Mapping) else model(*inputs)
    if isinstance(inputs, torch.Tensor):
        return functional_call(model, parameters_and_buffers, (inputs,))
    if isinstance(inputs, Mapping):
        return functional_call(model, parameters_and_buffers, (), dict(inputs))
    return functional_call(model, parameters_and_buffers, tuple(inputs))


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


#: Arithmetic of the per-sample hashes: int64 tensors, wrapping modulo 2**64.
_MASK = (1 << 64) - 1


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_M1, _M2 = _signed(0xFF51AFD7ED558CCD), _signed(0xC4CEB9FE1A85EC53)  # MurmurHash3's fmix64
_GOLDEN = _signed(0x9E3779B97F4A7C15)
_SALT_INPUTS, _SALT_TARGETS = _signed(0x243F6A8885A308D3), _signed(0x13198A2E03707344)
_CHUNK = 1 << 22  # elements of the int64 scratch of one hashing step
_POSITIONS: dict = {}  # (length, device) -> per-position multipliers


def _srl(h: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` keeps the sign)."""
    return (h >> s) & ((1 << (64 - s)) - 1)


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 64-bit finalizer: every input bit flips each output bit with
    probability 1/2, so sums of finalized hashes behave as sums of random 64-bit values."""
    h = h ^ _srl(h, 33)
    h = h * _M1
    h = h ^ _srl(h, 33)
    h = h * _M2
    return h ^ _srl(h, 33)


def _positions(length: int, device) -> torch.Tensor:
    key = (length, str(device))
    if key not in _POSITIONS:
        index = torch.arange(1, length + 1, dtype=torch.int64, device=device)
        _POSITIONS[key] = _fmix(index * _GOLDEN) | 1  # odd: multiplication is a bijection
    return _POSITIONS[key]


def _words(t: torch.Tensor) -> torch.Tensor:
    """Each sample's bits as int64 words, ``(samples, words per sample)``: floats by their
    bit patterns (``-0.0`` and ``0.0`` differ, as they may for a model), integers as such."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    t = t.reshape(len(t), -1).contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point():
        t = t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[
            t.element_size()])
    return t.to(torch.int64)


def sample_hashes(t: torch.Tensor, salt: int = 0) -> torch.Tensor:
    """One 64-bit hash per sample (first axis) of ``t``, of its values and their positions:
    a flipped, cropped, noised or otherwise changed sample hashes differently (but for a
    2**-64 chance). int64, on ``t``'s device."""
    if t.ndim == 0:
        t = t.reshape(1)
    n = len(t)
    length = t[0].numel() if n else 0
    weights = _positions(max(length, 1), t.device)[:length]
    rows = max(1, _CHUNK // max(length, 1))
    parts = []
    for start in range(0, n, rows):
        words = _words(t[start:start + rows])
        parts.append((words * weights).sum(dim=1))  # wraps modulo 2**64
    linear = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=t.device)
    return _fmix(linear ^ _signed((salt + length * _GOLDEN) & _MASK))


def _input_hashes(inputs, tensors) -> torch.Tensor:
    """Per-sample hashes of a batch's inputs: of the tensor itself (as files written before
    structured inputs existed), or chained over the fields of a tuple or dict in their fixed
    order (:func:`input_tensors`), each field's position salting its hash."""
    if isinstance(inputs, torch.Tensor):
        return sample_hashes(inputs, _SALT_INPUTS)
    combined = None
    for position, t in enumerate(tensors, 1):
        h = sample_hashes(t.to(tensors[0].device), _SALT_INPUTS + position * _GOLDEN)
        combined = h if combined is None else _fmix(combined * _GOLDEN ^ h)
    return combined


def _wrapped_sum(h: torch.Tensor) -> int:
    return int(h.sum()) & _MASK


def _halves(value: int) -> tuple:
    return float(value >> 32), float(value & 0xFFFFFFFF)


@dataclass
class PassFingerprint:
    """Order-independent summary of one pass, from the batches the pass reads anyway.

    ``hashes``: three sums modulo ``2**64`` over the samples of a 64-bit hash of each
    sample (:func:`sample_hashes`): of its input, of its target, and of the two together.
    A sum does not depend on the order of the samples, so shuffling leaves it unchanged,
    while any change of a sample's values (a random flip or crop, noise) changes the first,
    a changed label the second, and labels re-paired with other inputs (the inputs and the
    labels each the same set) the third. The sample count and the float64 sums of the data
    are kept beside them for the messages, and to check a resumed run whose file was written
    before the hashes existed (``hashes`` None).
    """

    num_samples: int = 0
    input_sum: float = 0.0
    input_sq_sum: float = 0.0
    target_sum: float = 0.0
    hashes: tuple | None = (0, 0, 0)
    origin: str = "pass"  # "pass": an earlier pass of this run; "file": the saved run's

    def add(self, inputs, targets: torch.Tensor) -> None:
        """Count one batch: ``inputs`` a tensor, a tuple or a dict of tensors."""
        tensors = input_tensors(inputs)
        self.num_samples += len(tensors[0])
        for t in tensors:
            x = t.detach().to(torch.float64)
            self.input_sum += float(x.sum())
            self.input_sq_sum += float(x.square().sum())
        self.target_sum += float(targets.detach().to(torch.float64).sum())
        a = _input_hashes(inputs, tensors)
        b = sample_hashes(targets.to(tensors[0].device), _SALT_TARGETS)
        pairs = _fmix(a ^ _fmix(b + _GOLDEN))
        self.hashes = tuple((old + _wrapped_sum(new)) & _MASK
                            for old, new in zip(self.hashes, (a, b, pairs)))

    def as_tuple(self) -> tuple:
        """``(count, three sums, then each hash as two exact 32-bit halves)``: floats that a
        float64 array stores exactly (a resumable run's state)."""
        sums = (self.num_samples, self.input_sum, self.input_sq_sum, self.target_sum)
        return sums + sum((_halves(h) for h in self.hashes), ()) if self.hashes else sums

    @classmethod
    def from_tuple(cls, values, origin: str = "file") -> "PassFingerprint":
        """The inverse of :meth:`as_tuple` (4 values: a file written before the hashes)."""
        values = [float(v) for v in values]
        hashes = None
        if len(values) >= 10:
            hashes = tuple((int(values[i]) << 32) | int(values[i + 1]) for i in (4, 6, 8))
        return cls(int(values[0]), *values[1:4], hashes=hashes, origin=origin)

    def check_same(self, reference: "PassFingerprint", rtol: float = 1e-9) -> None:
        """Raise :class:`NonDeterministicDataError` if this pass differs from ``reference``
        (an earlier pass of this run, or the saved run's when resuming)."""
        if self.num_samples != reference.num_samples:
            if reference.origin == "file":
                raise NonDeterministicDataError(
                    f"the data differ from the saved run's: the data source yielded "
                    f"{self.num_samples} samples, the run saved in the file had "
                    f"{reference.num_samples}; resume with the data the run started with")
            raise NonDeterministicDataError(
                f"the data source yielded {self.num_samples} samples on this pass but "
                f"{reference.num_samples} on the first; a sampler with drop_last=True and "
                "shuffling, or a changing source, makes the operator a different matrix "
                "on every application"
            )
        difference = self._difference(reference, rtol)
        if difference is None:
            return
        if reference.origin == "file":
            raise NonDeterministicDataError(
                f"the data differ from the saved run's: the data source yielded different "
                f"samples than the run saved in the file ({difference}); resume with the "
                "data (and the order of inputs and targets) the run started with")
        raise NonDeterministicDataError(
            f"the data source yielded different samples on two passes ({difference}); "
            "random augmentation, labels drawn anew, or a changing source makes the operator "
            "a different matrix on every application: fix the transforms, or precompute "
            "one augmented copy of the data")

    def _difference(self, reference, rtol) -> str | None:
        if self.hashes is not None and reference.hashes is not None:
            inputs, targets, pairs = (a != b for a, b in zip(self.hashes, reference.hashes))
            if inputs and targets:
                return "the inputs and the targets differ"
            if inputs:
                return ("the inputs differ, sample by sample: random flips, crops, noise or "
                        "another transform drawn anew")
            if targets:
                return "the targets differ, sample by sample"
            if pairs:
                return ("the same inputs and the same targets, paired differently: labels "
                        "re-paired with other inputs")
            return None
        names = ("sum of inputs", "sum of squared inputs", "sum of targets")
        for name, now, then in zip(names, self.as_tuple()[1:4], reference.as_tuple()[1:4]):
            if not math.isclose(now, then, rel_tol=rtol, abs_tol=rtol):
                return f"{name}: {now!r} vs {then!r}"
        return None
