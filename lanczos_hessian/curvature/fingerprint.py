"""Order-independent fingerprints of a pass over the data: per-sample 64-bit hashes, summed.

Every pass reads every sample anyway; hashing each sample and adding the hashes modulo
``2**64`` gives a summary that does not depend on the order of the samples (shuffling is
harmless for a sum) but changes with any changed sample, label or pairing
(:class:`PassFingerprint`). A tensor pair that has not changed since the last pass (same
storage, version counter, shape: :meth:`~lanczos_hessian.curvature.data.DataSource.stamp`)
keeps its last fingerprint instead of being hashed again (:class:`FingerprintReference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NonDeterministicDataError
from .inputs import input_tensors


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


class FingerprintReference:
    """What a pass's fingerprint is compared with: the first pass's, or a saved run's
    (:meth:`expect`); and the last pass's, reused while a tensor pair is unchanged."""

    def __init__(self):
        self.reference = None
        self._stamp = self._known = None

    def known(self, stamp):
        """The last pass's fingerprint when ``stamp`` (the data tensors' storage, shape and
        version) equals that pass's, else None: read the data afresh."""
        return self._known if stamp is not None and stamp == self._stamp else None

    def check(self, fingerprint: "PassFingerprint", stamp) -> None:
        """Compare a pass with the reference (raises on a difference) and remember it."""
        if stamp is not None:
            self._stamp, self._known = stamp, fingerprint
        reference = self.reference
        if reference is None:
            self.reference = fingerprint
            return
        fingerprint.check_same(reference)
        if reference.origin != "pass":  # the saved run's: later passes compare with this one
            self.reference = fingerprint

    def expect(self, values) -> None:
        """Compare the next pass with a saved run's fingerprint (:meth:`PassFingerprint.as_tuple`)."""
        values = np.asarray(values).reshape(-1)
        self.reference = PassFingerprint.from_tuple(values, origin="file")
