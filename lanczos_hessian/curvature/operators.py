"""Full-dataset curvature operators as ``scipy.sparse.linalg.LinearOperator`` objects.

For a model ``f(w, x)``, a loss with reduction ``mean`` (or ``sum``) and a data set of ``N``
samples, the full-dataset objective is

    L(w) = c * sum_{i=1..N} loss(f(w, x_i), y_i),   c = 1/N for ``mean``, c = 1 for ``sum``,

and the operators represent, exactly, with ``M`` the number of selected parameters:

* :class:`HessianOperator`   ``H = d^2 L / dw^2``                    (M x M, symmetric)
* :class:`GGNOperator`       ``G = c * sum_i J_i^T H_loss,i J_i``     (Sagun et al. 2018: first
  term of Eq. 4, ``H = G + R``; Eq. 5 is the approximation ``H ~ G``)
* :class:`ResidualOperator`  ``R = H - G``                            (second term of their Eq. 4)

One application is one pass over the data. Batch ``B`` with mean-reduced batch loss ``l_B``
contributes ``|B| * C_B v`` to a float64 accumulator, which is divided by the total sample
count at the end of the pass, so ragged batches are weighted exactly. The accumulator is one
flat float64 buffer, all-reduced once per application under ``torch.distributed`` (the sample
count travels in the same buffer). A block product ``C V`` for ``V`` of shape ``(M, b)`` is
still one pass.

Under ``torch.distributed`` every rank holds the same model and the whole data set, and
keeps an exact shard of the data (:class:`~lanczos_hessian.curvature.data.DataSource`). Layout of the
buffer reduced once per application, ``W`` ranks::

    [ sum_B |B| C_B V  (M*b) | sample count | error flag | W x (sum V, |V|_1, |V|_2) ]

The error flag makes a rank that fails in its local part (a NaN, a bad batch, a changed
data source) fail every rank instead of leaving them in the all-reduce
(:func:`~lanczos_hessian.parallel.distributed.all_reduce_or_raise`). The last ``3 W`` slots (each rank
fills its own row; adding zeros is exact) check, at no extra collective, that every rank
applied the operator to the same block: a solver seeded differently on each rank raises
:class:`~lanczos_hessian.errors.RankMismatchError` on every rank. At construction, one
more collective checks that the ranks agree on the operator, the model's parameters and
buffers, and the data, and fails every rank if one of them could not build its part.

Products are taken with the model in eval mode (dropout off, batch-norm on its running
statistics), so the operator is a fixed symmetric matrix; the caller's train/eval flags are
restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from .data import (
    DataSource,
    PassFingerprint,
    batch_length,
    call_model,
    input_tensors,
    map_inputs,
)
from ..parallel.distributed import (
    all_reduce_or_raise,
    common_seed,
    current_world,
    gather_rows,
)
from ..errors import (
    InvalidLossError,
    InvalidModelError,
    NonFiniteError,
    PrecisionWarning,
    RankMismatchError,
)
from .products import STRATEGIES, BatchCurvature
from .params import ParameterSpace
from .precision import tf32_mode

logger = logging.getLogger(__name__)

_IDENTITY_WIDTH = 16  # numbers per rank in the construction-time agreement check


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module):
    """Put every submodule in eval mode for the block; restore each one's flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
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


class CurvatureOperator(LinearOperator):
    """Base class: the full-dataset data loop shared by the Hessian, GGN and residual.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its parameters are read (never modified) at every application, so
        the operator follows the model if it is trained in between.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar`` with ``mean`` or ``sum`` reduction.
    data : (inputs, targets) tensors, DataLoader or re-iterable of batches
        See :class:`lanczos_hessian.curvature.data.DataSource`. Floating inputs are
        converted to the model's dtype (a :class:`~lanczos_hessian.errors.PrecisionWarning`
        at construction when they differ: the products are computed in the model's dtype).
    unpack : callable, optional
        ``unpack(batch) -> (inputs, targets)`` for batches that are not such pairs, e.g. the
        dicts of a HuggingFace-style loader; ``inputs`` may be a tensor (``model(x)``), a
        tuple (``model(*x)``) or a dict of tensors (``model(**x)``). See
        :func:`lanczos_hessian.curvature.data.dict_batch`.
    params : list of str, optional
        Parameter names or module prefixes to restrict to (a diagonal block of the
        curvature, e.g. one layer); default all trainable parameters.
    reduction : {"mean", "sum"}, optional
        Overrides ``loss_fn.reduction``.
    batch_size : int, optional
        Batch size when ``data`` is a tensor pair.
    dtype : numpy dtype
        dtype of the numpy products (the ``LinearOperator`` dtype); default float64.
        Accumulation is float64 whatever the model's dtype.
    strategy : str
        Differentiation strategy, see :mod:`lanczos_hessian.curvature.products`.
    check_data : bool
        Compare an order-independent fingerprint of every pass with the first one.
    progress : bool
        A progress bar over the batches of each pass (rank 0).
    allow_tf32 : bool
        Let float32 products use TensorFloat-32 on GPUs that have it (10 bits of mantissa
        instead of 23). Off by default: every pass runs with TF32 disabled for cuBLAS
        and cuDNN and the process-wide flags are restored after it
        (:mod:`lanczos_hessian.curvature.precision`); recorded in run files' provenance.
    allow_low_precision : bool
        Accept float16 and bfloat16 parameters. Refused by default
        (:class:`~lanczos_hessian.errors.InvalidModelError`): 16-bit products make eigenvalues
        wrong by percents; float32 products with float64 accumulation are the cheap choice.
    """

    kind = "hessian"

    def __init__(
        self,
        model,
        loss_fn,
        data,
        *,
        params=None,
        reduction=None,
        batch_size=None,
        dtype=np.float64,
        strategy="auto",
        check_data=True,
        progress=False,
        allow_tf32=False,
        allow_low_precision=False,
        unpack=None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.model, self.loss_fn = model, loss_fn
        self.world = current_world()
        self.device = _model_device(model)
        self.check_data, self.progress = check_data, progress
        self.allow_tf32 = bool(allow_tf32)
        self._reference_fingerprint = None
        self._num_samples = None  # over all ranks, from the first pass (or the tensors)
        self.num_applications = 0  # passes over the data
        self.num_vectors = 0  # products counted per vector
        self.time_in_products = 0.0
        error = identity = None
        try:  # every rank reaches the agreement check below, also after a local failure
            self.space = ParameterSpace.of(model, params)
            self.reduction = infer_reduction(loss_fn, reduction)
            self.data = DataSource(data, batch_size, self.world.rank, self.world.size,
                                   unpack=unpack)
            first = self.space.parameters(model)[self.space.names[0]]
            self.device, self.model_dtype = first.device, first.dtype
            if not allow_low_precision:
                _refuse_low_precision(self.space.parameters(model))
            self.curvature = BatchCurvature(model, loss_fn, self.space, strategy)
            super().__init__(dtype=np.dtype(dtype), shape=(self.space.dim, self.space.dim))
            self._check_loss_on_first_batch()
            self._num_samples = self.data.total_samples
            if self.world.size > 1:
                identity = self._identity()
        except Exception as exc:
            error = exc
        self._agree_across_ranks(identity, error)

    # ---- validation ---------------------------------------------------------------------
    _IDENTITY = (
        # (name, index in the identity row, index of its scale or None for exact equality)
        ("operator kind", 0, None), ("loss reduction", 1, None),
        ("number of parameters", 2, None), ("model dtype size", 3, None),
        ("number of model tensors", 4, None), ("sum of the model's parameters and buffers", 5, 6),
        ("sum of their squares", 7, 7), ("position-weighted sum of the model's tensors", 8, 9),
        ("data form (0: tensor pair, 1: iterable)", 10, None),
        ("number of samples (tensor pair) or batches (iterable)", 11, None),
        ("sum of the inputs", 12, 13), ("sum of the targets", 14, 15),
    )

    def _identity(self) -> list:
        """What all ranks must share: the operator, a fingerprint of the model, the data."""
        tensors = [t.detach() for _, t in self.model.named_parameters()]
        tensors += [t.detach() for _, t in self.model.named_buffers()]
        tensors = [t for t in tensors if t.is_floating_point()]
        f64 = torch.float64
        sums = [float(torch.sum(t, dtype=f64)) for t in tensors]
        abs_sums = [float(torch.linalg.vector_norm(t, 1, dtype=f64)) for t in tensors]
        squares = [float(torch.linalg.vector_norm(t, 2, dtype=f64)) ** 2 for t in tensors]
        identity = [
            float(("hessian", "ggn", "residual").index(self.kind)),
            0.0 if self.reduction == "mean" else 1.0,
            float(self.space.dim), float(self.model_dtype.itemsize), float(len(tensors)),
            math.fsum(sums), math.fsum(abs_sums), math.fsum(squares),
            math.fsum((i + 1) * v for i, v in enumerate(sums)),
            math.fsum((i + 1) * v for i, v in enumerate(abs_sums)),
            *self.data.identity(),
        ]
        assert len(identity) == _IDENTITY_WIDTH
        return identity

    def _agree_across_ranks(self, identity, error):
        """One collective at construction: every rank learns whether any rank failed to
        build its part (and fails with it), and whether all ranks hold the same model and
        data. Single-process: re-raises ``error``."""
        if self.world.size == 1:
            if error is not None:
                raise error
            return
        row = np.zeros(_IDENTITY_WIDTH) if identity is None else np.asarray(identity, float)
        rows = gather_rows(torch.from_numpy(row), error, device=self.device,
                           what=f"building the {self.kind} operator").numpy()
        for name, col, scale_col in self._IDENTITY:
            values = rows[:, col]
            if scale_col is None:
                same = bool(np.all(values == values[0]))
            else:
                tol = 1e-9 * float(np.max(np.abs(rows[:, scale_col]))) + 1e-300
                same = bool(np.all(np.isfinite(values))) and float(np.ptp(values)) <= tol
                same = same or bool(np.all((values == values[0])  # equal infinities/NaNs
                                           | (np.isnan(values) & np.isnan(values[0]))))
            if not same:
                listed = ", ".join(f"rank {r}: {v:.17g}" for r, v in enumerate(values))
                hint = ("pass the whole data set on every rank (the operator shards it "
                        "exactly itself)" if col >= 10 else
                        "build the model identically on every rank (seed its initialization, "
                        "load the same checkpoint everywhere, move it to the same dtype)")
                raise RankMismatchError(
                    f"the {self.world.size} ranks disagree on the {name} ({listed}); {hint}")

    def _check_loss_on_first_batch(self):
        inputs, targets = self.data.first_batch()
        _warn_on_precision_mismatch(inputs, self.model_dtype)
        x, y = self._to_device(inputs, targets)
        with evaluation_mode(self.model):
            try:
                value = self.curvature.loss(x, y)
            except Exception as exc:  # the model or loss rejects the batch: say so plainly
                raise InvalidLossError(
                    f"evaluating the loss on the first batch failed: {type(exc).__name__}: {exc}"
                ) from exc
        if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidLossError(
                f"loss_fn must return a scalar tensor, got {shape}; use reduction='mean' or 'sum'"
            )
        if not torch.isfinite(value):
            raise NonFiniteError(f"the loss is {value.item()} on {_where(0, self.world)}")
        with evaluation_mode(self.model), tf32_mode(self.allow_tf32):
            self.curvature.resolve(self.kind, x, y)  # "auto" by its rule, once

    def _to_device(self, inputs, targets):
        """The batch on the model's device, floating inputs in the model's dtype (``inputs``
        a tensor, a tuple or a dict of tensors)."""
        def move(t):
            t = t.to(self.device, non_blocking=True)
            return t.to(self.model_dtype) if t.is_floating_point() else t

        return map_inputs(inputs, move), targets.to(self.device, non_blocking=True)

    # ---- the full-dataset pass ----------------------------------------------------------
    def apply(self, V: torch.Tensor) -> torch.Tensor:
        """Torch-native product ``C V`` over the whole data set (one pass).

        ``V`` is ``(M,)`` or ``(M, b)``, any float dtype and device; the result is float64
        on the model's device, with the same shape. Products are taken in the model's dtype
        and accumulated in float64.
        """
        if V.ndim not in (1, 2) or V.shape[0] != self.shape[0]:
            raise ValueError(f"expected a vector of shape ({self.shape[0]},) or a block "
                             f"({self.shape[0]}, b), got {tuple(V.shape)}")
        block = V.reshape(self.shape[0], -1).to(self.device, self.model_dtype)
        start = time.perf_counter()
        with evaluation_mode(self.model), tf32_mode(self.allow_tf32):
            total = self._accumulate(block)
        self.time_in_products += time.perf_counter() - start
        self.num_applications += 1
        self.num_vectors += block.shape[1]
        return total.reshape(V.shape)

    def _accumulate(self, block: torch.Tensor) -> torch.Tensor:
        dim, b = block.shape
        size, rank = self.world.size, self.world.rank
        n = dim * b
        checks = 3 if size > 1 else 0  # per rank: sum V, |V|_1, |V|_2 (module docstring)
        buffer = torch.zeros(n + 2 + checks * size, dtype=torch.float64, device=self.device)
        error = None
        try:  # every rank reaches the one all-reduce, also after a local failure
            if checks:
                row = buffer[n + 2 + 3 * rank: n + 5 + 3 * rank]
                row[0] = torch.sum(block, dtype=torch.float64)
                row[1] = torch.linalg.vector_norm(block, 1, dtype=torch.float64)
                row[2] = torch.linalg.vector_norm(block, 2, dtype=torch.float64)
            fingerprint = PassFingerprint()
            health = []  # per batch: the loss and the sum of the product, checked once a pass
            for index, (inputs, targets) in enumerate(self._batches()):
                x, y = self._to_device(inputs, targets)
                value, product = self.curvature.products(self.kind, x, y, block)
                health.append(torch.stack([value.detach().to(torch.float64).reshape(()),
                                           product.sum(dtype=torch.float64)]))
                count = batch_length(x)
                weight = count if self.reduction == "mean" else 1.0
                # vector-major accumulator: the products come as the transpose of a
                # contiguous (b, M) block, so this adds in place with no copy or transpose
                buffer[:n].view(b, dim).add_(product.T, alpha=weight)
                buffer[n] += count
                if self.check_data:
                    fingerprint.add(inputs, targets)
            if health:
                _check_finite(torch.stack(health), self.kind, self.world)
            self._check_fingerprint(fingerprint)
        except Exception as exc:
            error = exc
        all_reduce_or_raise(buffer, error, flag_index=n + 1,
                            what=f"a {self.kind} pass over the data")
        if checks:
            _check_same_block(buffer[n + 2:].view(size, 3).cpu().numpy(), self.kind)
        if self._num_samples is None:
            self._num_samples = int(buffer[n])
        total = buffer[:n].view(b, dim).T
        return total / buffer[n] if self.reduction == "mean" else total

    def _batches(self):
        batches = self.data
        if self.progress and self.world.is_main:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"{self.kind} pass", leave=False, unit="batch")
        return batches

    def _check_fingerprint(self, fingerprint: PassFingerprint):
        if not self.check_data:
            return
        reference = self._reference_fingerprint
        if reference is None:
            self._reference_fingerprint = fingerprint
            return
        fingerprint.check_same(reference)
        if reference.origin != "pass":  # the saved run's: later passes compare with this one
            self._reference_fingerprint = fingerprint

    @property
    def num_samples(self) -> int | None:
        """Samples over all ranks: known at construction for a tensor pair, after the first
        application for an iterable (None before)."""
        return self._num_samples

    @property
    def strategy(self) -> str:
        """The differentiation strategy the products use (``"auto"`` resolved by its rule at
        construction, :mod:`lanczos_hessian.curvature.products`)."""
        return self.curvature.strategy

    @property
    def data_fingerprint(self) -> tuple | None:
        """:meth:`PassFingerprint.as_tuple` of this rank's first pass (count, sums, per-sample
        hashes), or None before one."""
        ref = self._reference_fingerprint
        return None if ref is None else ref.as_tuple()

    def expect_data_fingerprint(self, fingerprint) -> None:
        """Make the next pass compare its data with ``fingerprint`` (a resumed run's first
        pass, as :attr:`data_fingerprint` gave it); nothing when empty or data checks are off."""
        if fingerprint is None or not np.size(fingerprint) or not self.check_data:
            return
        values = np.asarray(fingerprint).reshape(-1)
        self._reference_fingerprint = PassFingerprint.from_tuple(values, origin="file")

    def common_seed(self) -> int:
        """Fresh entropy drawn on rank 0 and shared by every rank (one small collective under
        a process group): the seed of an unseeded solver run on this operator."""
        return common_seed(None)

    # ---- scipy hooks ----------------------------------------------------------------------
    def _matvec(self, x):
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _matmat(self, X):
        V = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        return self.apply(V).cpu().numpy().astype(self.dtype, copy=False)

    def _rmatvec(self, x):
        return self._matvec(x)

    def _rmatmat(self, X):
        return self._matmat(X)

    def _adjoint(self):
        return self  # symmetric

    # ---- small conveniences ---------------------------------------------------------------
    def flat_parameters(self) -> torch.Tensor:
        """The current parameters as one float64 vector (the point the curvature is taken at)."""
        return self.space.flat_parameters(self.model)

    def __repr__(self):
        return (f"<{type(self).__name__} M={self.shape[0]} reduction={self.reduction} "
                f"dtype={self.dtype} device={self.device}>")

    # ---- the operator contract (lanczos_hessian.contract) -----------------------------------
    def identity(self) -> dict:
        """What a run file records of this operator, as plain values: ``provenance`` (the
        operator, loss, dtypes, device, strategy, sample count once known) and
        ``fingerprints`` (``model``: SHA-256, first 16 hex digits, of the selected
        parameters as float64 bytes; a resume with other parameters is refused)."""
        import hashlib

        provenance = {
            "operator": self.kind, "num_params": self.shape[0],
            "param_names": list(self.space.names),
            "loss": getattr(self.loss_fn, "__class__", type(self.loss_fn)).__name__,
            "reduction": self.reduction, "dtype": str(self.dtype),
            "model_dtype": str(self.model_dtype), "device": str(self.device),
            "strategy": self.strategy, "allow_tf32": bool(self.allow_tf32)}
        if self.num_samples is not None:
            provenance["num_samples"] = self.num_samples  # over all ranks
        flat = self.flat_parameters().cpu().numpy()
        return {"provenance": provenance,
                "fingerprints": {"model": hashlib.sha256(flat.tobytes()).hexdigest()[:16]}}

    def partition(self, world_size: int) -> list:
        """Row offsets of each rank's rows of a sharded vector: an even split of the
        parameter vector (``world_size + 1`` offsets from 0 to ``M``)."""
        n = self.shape[0]
        return [n * r // world_size for r in range(world_size + 1)]


def _warn_on_precision_mismatch(inputs, model_dtype) -> None:
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


def _refuse_low_precision(parameters: dict) -> None:
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


def _model_device(model) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _where(index, world) -> str:
    return f"batch {index}" + (f" of rank {world.rank}'s shard" if world.size > 1 else "")


def _check_finite(health: torch.Tensor, kind, world=None):
    """Raise :class:`NonFiniteError` naming the first batch whose loss or product is not
    finite. ``health`` is ``(batches, 2)``: each batch's loss and the sum of its product
    (a NaN or Inf entry makes the sum non-finite). One device sync per pass, not per batch.
    """
    bad = ~torch.isfinite(health)
    if not bool(bad.any()):
        return
    index = int(bad.any(dim=1).nonzero()[0, 0])
    where = _where(index, world or current_world())
    if bool(bad[index, 0]):
        raise NonFiniteError(f"the loss is {float(health[index, 0])} on {where}")
    raise NonFiniteError(
        f"the {kind}-vector product has NaN or Inf entries on {where} "
        "(overflow in the model, a non-differentiable op, or a NaN in the vector)"
    )


#: Relative tolerance when comparing the per-rank fingerprints of the applied block: far
#: above rounding (equal blocks give equal sums up to the order of a reduction), far below
#: the difference between blocks drawn from different seeds.
SAME_BLOCK_RTOL = 1e-10


def _check_same_block(rows: np.ndarray, kind: str) -> None:
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


class HessianOperator(CurvatureOperator):
    """``H v`` for the full-dataset loss ``L(w)``; see the module docstring."""

    kind = "hessian"


class GGNOperator(CurvatureOperator):
    """``G v = c * sum_i J_i^T H_loss,i J_i v``, the generalized Gauss-Newton matrix.

    Positive semi-definite whenever the loss is convex in the network outputs
    (cross-entropy, squared error). Computed matrix-free: JVP, loss-Hessian product, VJP.
    """

    kind = "ggn"


class ResidualOperator(CurvatureOperator):
    """``R v = H v - G v``: the part of the Hessian weighted by the loss gradient.

    Both terms come from the same batch in one pass, so ``H = G + R`` holds to rounding.
    """

    kind = "residual"


OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "residual": ResidualOperator}
