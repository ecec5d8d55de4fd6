"""The full-dataset curvature operator: one pass over the data per application.

The objective and the three matrices it represents are stated in
:mod:`lanczos_hessian.curvature.operators`, which defines the operators on this base.

One application is one pass over the data (:func:`lanczos_hessian.curvature.passes.accumulate`):
each batch's product is weighted by its size and summed in float64, so ragged batches are
weighted exactly, and a block product ``C V`` for ``V`` of shape ``(M, b)`` is still one pass.

Under ``torch.distributed`` every rank holds the same model and the whole data set, and
keeps an exact shard of the data (:class:`~lanczos_hessian.curvature.data.DataSource`); one
all-reduce per pass sums the shards and checks that every rank applied the same block, and one
collective at construction that the ranks agree on the operator, the model and the data
(:mod:`lanczos_hessian.curvature.agreement`). A rank that fails in its local part fails every
rank instead of leaving them in a collective. A model whose parameters are sharded across the
ranks (DTensor, FSDP2's ``fully_shard``) has the curvature of the full parameters, in the
shard-major coordinates of :attr:`CurvatureOperator.layout`
(:mod:`lanczos_hessian.parallel.layout`); its products are taken on the shards for sharded
vectors (:meth:`CurvatureOperator.rows_product`, :mod:`lanczos_hessian.parallel.native`),
else with the parameters gathered for each pass (:mod:`lanczos_hessian.parallel.dtensor`).

Products are taken with the model in eval mode (dropout off, batch-norm on its running
statistics), so the operator is a fixed symmetric matrix; the caller's train/eval flags are
restored afterwards (a model that arrives in train mode with such layers is told so once, at
construction). The pass itself is :func:`lanczos_hessian.curvature.passes.accumulate`, the
per-batch products :mod:`lanczos_hessian.curvature.curvatures`, the choice of strategy
:mod:`lanczos_hessian.curvature.products`, compiled products
:mod:`lanczos_hessian.curvature.compiled`.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..parallel.distributed import common_seed, current_world
from ..parallel.dtensor import ShardedModel
from ..parallel.gathering import whole_values
from ..parallel.native import shard_plan
from .agreement import agree_across_ranks, operator_identity
from .checks import (check_first_loss, check_trainable_values, evaluation_mode, infer_reduction,
                     model_device, refuse_low_precision, warn_on_precision_mismatch,
                     warn_on_train_mode)
from .compiled import CompiledProduct
from .data import DataSource, map_inputs
from .fingerprint import FingerprintReference
from .losses import objective_provenance, prepare_loss
from .params import ParameterSpace
from .passes import accumulate
from .precision import tf32_mode
from .products import check_strategy, resolve_strategy

logger = logging.getLogger(__name__)

__all__ = ["CurvatureOperator"]


class CurvatureOperator(LinearOperator):
    """Base class: the full-dataset data loop shared by the Hessian, GGN and residual.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its parameters are read (never modified) at every application, so
        the operator follows the model if it is trained in between.
    loss_fn : callable or None
        ``loss_fn(outputs, targets) -> scalar``, ``mean`` or ``sum`` (LMs: ``.objective``).
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
        Let float32 products use TensorFloat-32 where the hardware has it (10 bits of
        mantissa instead of 23). Off by default: every pass runs in IEEE float32 for the
        device's kernels (cuBLAS and cuDNN, or oneDNN on the CPU, which a process-wide
        ``torch.set_float32_matmul_precision("medium")`` would otherwise run in bfloat16) and
        the process-wide settings are restored after it
        (:mod:`lanczos_hessian.curvature.precision`); recorded in run files' provenance.
    compile : bool or dict
        Compile the per-batch product with ``torch.compile`` once per operator
        (:mod:`lanczos_hessian.curvature.compiled`): the batch dimension is dynamic, so the
        ragged last batch adds at most one graph; ``compile_time`` holds the seconds spent
        compiling, apart from ``time_in_products``. If compiling fails the operator warns,
        naming the reason, and goes on with the eager product. A dict gives
        ``torch.compile``'s keyword arguments (:class:`~.compiled.CompiledProduct`).
    allow_low_precision : bool
        Accept float16 and bfloat16 parameters. Refused by default
        (:class:`~lanczos_hessian.errors.InvalidModelError`): 16-bit products make eigenvalues
        wrong by percents; float32 products with float64 accumulation are the cheap choice.

    Example (a closed form: ``H = X^T X / N`` for half the mean squared error of a linear
    model)

    >>> import numpy as np, torch
    >>> from lanczos_hessian import HessianOperator
    >>> X = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> half_mse = lambda out, t: 0.5 * ((out.squeeze(1) - t) ** 2).mean()
    >>> H = HessianOperator(model, half_mse, (X, torch.ones(3, dtype=torch.float64)),
    ...                     reduction="mean", batch_size=2)
    >>> bool(np.allclose(H @ np.eye(2), (X.T @ X).numpy() / 3, rtol=0, atol=1e-12))
    True
    """

    kind = "hessian"

    def __init__(self, model, loss_fn, data, *, params=None, reduction=None, batch_size=None,
                 dtype=np.float64, strategy="auto", check_data=True, progress=False,
                 allow_tf32=False, allow_low_precision=False, unpack=None, compile=False):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_strategy(strategy)
        self.model, self.loss_fn = model, loss_fn
        self.world = current_world()
        self.device = model_device(model)
        self.check_data, self.progress = check_data, progress
        self.allow_tf32 = bool(allow_tf32)
        self.fingerprints = FingerprintReference()  # what each pass's data are checked against
        self._num_samples = None  # over all ranks, from the first pass (or the tensors)
        self.num_applications = 0  # passes over the data
        self.num_vectors = 0  # products counted per vector
        self.time_in_products = 0.0
        self.compiled = None  # a CompiledProduct with compile=True
        error = identity = None
        self.sharded = ShardedModel.of(model)  # DTensor / FSDP2 parameters (parallel.dtensor)
        by_block = self.sharded.gathers_by_block()  # else gathered whole to build
        with nullcontext() if by_block else self.sharded.gathered():  # (a collective)
            try:  # every rank reaches the agreement check below, also after a local failure
                self.space = ParameterSpace.of(model, params)
                check_trainable_values(self.space.parameters(model))
                self.loss_fn, unpack = prepare_loss(model, loss_fn, data, unpack, batch_size,
                                                    reduction)
                self.reduction = infer_reduction(self.loss_fn, reduction)
                self.data = DataSource(data, batch_size, self.world.rank, self.world.size,
                                       unpack=unpack)
                first = self.space.parameters(model)[self.space.names[0]]
                self.device, self.model_dtype = first.device, first.dtype
                if not allow_low_precision:
                    refuse_low_precision(self.space.parameters(model))
                super().__init__(dtype=np.dtype(dtype), shape=(self.space.dim, self.space.dim))
                warn_on_train_mode(model)
                self._check_loss_on_first_batch(strategy, bool(compile), by_block)
                if compile:
                    self.sharded.refuse_compile()
                    self.compiled = CompiledProduct(self.curvature, self.device,
                                                    compile if isinstance(compile, dict) else None)
                self._num_samples = self.data.total_samples
                if self.world.size > 1:
                    identity = operator_identity(self)  # what all ranks share
            except Exception as exc:
                error = exc
        agree_across_ranks(self.world, self.device, self.kind, identity, error)
        self.layout, self.native = shard_plan(self)  # coordinates and products on shards
        if self.sharded.is_sharded:
            self.curvature.end_pass()  # no gathered parameter kept past construction

    # ---- validation ---------------------------------------------------------------------
    def _check_loss_on_first_batch(self, strategy, compiled, by_block=False):
        inputs, targets = self.data.first_batch()
        warn_on_precision_mismatch(inputs, self.model_dtype)
        x, y = self.to_device(inputs, targets)
        if by_block:  # checked on the shards once the ranks agree (parallel.native); no probe
            strategy = "reverse-over-reverse" if strategy == "auto" else strategy
        else:
            with evaluation_mode(self.model):
                check_first_loss(self.model, self.loss_fn, x, y, self.world)
        with evaluation_mode(self.model), tf32_mode(self.allow_tf32, self.device):
            self.curvature = resolve_strategy(self.kind, self.model, self.loss_fn, self.space,
                                              x, y, strategy, compiled)

    def to_device(self, inputs, targets):
        """The batch on the model's device, floating inputs in the model's dtype (``inputs``
        a tensor, a tuple or a dict of tensors)."""
        def move(t):
            t = t.to(self.device, non_blocking=True)
            return t.to(self.model_dtype) if t.is_floating_point() else t

        return map_inputs(inputs, move), targets.to(self.device, non_blocking=True)

    _to_device = to_device

    # ---- the full-dataset pass ----------------------------------------------------------
    def apply(self, V: torch.Tensor) -> torch.Tensor:
        """Torch-native product ``C V`` over the whole data set (one pass).

        ``V`` is ``(M,)`` or ``(M, b)``, any float dtype and device; the result is float64
        on the model's device, with the same shape. Products are taken in the model's dtype
        and accumulated in float64. A complex ``V = B + iC`` is applied as the ``2b`` real
        columns ``[B, C]`` of one pass (``C V = C B + i C C``, ``C`` real): complex128.
        """
        if V.ndim not in (1, 2) or V.shape[0] != self.shape[0]:
            raise ValueError(f"expected a vector of shape ({self.shape[0]},) or a block "
                             f"({self.shape[0]}, b), got {tuple(V.shape)}")
        if V.is_complex():
            parts = self.apply(torch.cat([V.real.reshape(self.shape[0], -1),
                                          V.imag.reshape(self.shape[0], -1)], dim=1))
            half = parts.shape[1] // 2
            return torch.complex(parts[:, :half], parts[:, half:]).reshape(V.shape)
        block = V.reshape(self.shape[0], -1).to(self.device, self.model_dtype)
        block = self.layout.to_parameters(block)  # the identity unless shard-major
        start, compiling = time.perf_counter(), self.compile_time
        precision = tf32_mode(self.allow_tf32, self.device)
        with evaluation_mode(self.model) as modules, precision, self.sharded.gathered():
            total = self.layout.from_parameters(accumulate(self, block, modules))
            if self.sharded.is_sharded:
                self.curvature.end_pass()  # the gathered parameters go with the pass
        compiling = self.compile_time - compiling  # reported apart from the pass time
        if compiling:
            logger.info("compiled the %s product in %.1f s", self.kind, compiling)
        self.time_in_products += time.perf_counter() - start - compiling
        self.num_applications += 1
        self.num_vectors += block.shape[1]
        return total.reshape(V.shape)

    def batch_product(self):
        """The per-batch product ``(inputs, targets, V) -> (loss, C_B V)`` of the next pass:
        the compiled one with ``compile=True`` (unless compiling failed), else the eager."""
        if self.compiled is not None and self.compiled.usable:
            return self.compiled
        return self.curvature.products

    @property
    def compile_time(self) -> float:
        """Seconds spent compiling products (0 without ``compile=True``), apart from
        ``time_in_products`` (the passes' own time)."""
        return 0.0 if self.compiled is None else self.compiled.compile_time

    def record_num_samples(self, count: int) -> None:
        """The sample count over all ranks, from the first pass of an iterable."""
        self._num_samples = count

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
        ref = self.fingerprints.reference
        return None if ref is None else ref.as_tuple()

    def expect_data_fingerprint(self, fingerprint) -> None:
        """Make the next pass compare its data with ``fingerprint`` (a resumed run's first
        pass, as :attr:`data_fingerprint` gave it); nothing when empty or data checks are off."""
        if fingerprint is not None and np.size(fingerprint) and self.check_data:
            self.fingerprints.expect(fingerprint)

    def common_seed(self) -> int:
        """Fresh entropy drawn on rank 0 and shared by every rank (one small collective under
        a process group): the seed of an unseeded solver run on this operator."""
        return common_seed(None)

    # ---- scipy hooks ----------------------------------------------------------------------
    def _matvec(self, x):
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _matmat(self, X):
        if np.iscomplexobj(X):  # real and imaginary parts as columns of one pass
            V = torch.from_numpy(np.ascontiguousarray(X, dtype=np.complex128))
            return self.apply(V).cpu().numpy()
        V = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        return self.apply(V).cpu().numpy().astype(self.dtype, copy=False)

    def _adjoint(self):  # symmetric: scipy's rmatvec and rmatmat are matvec and matmat
        return self

    # ---- small conveniences ---------------------------------------------------------------
    def flat_parameters(self) -> torch.Tensor:
        """The parameters as one float64 vector (gathered, a collective, when sharded)."""
        with self.sharded.gathered():
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
        provenance = {
            "operator": self.kind, "num_params": self.shape[0],
            "param_names": list(self.space.names),
            "loss": getattr(self.loss_fn, "__class__", type(self.loss_fn)).__name__,
            "reduction": self.reduction, "dtype": str(self.dtype),
            "model_dtype": str(self.model_dtype), "device": str(self.device),
            "strategy": self.strategy, "allow_tf32": bool(self.allow_tf32)}
        if hasattr(self, "layout"):  # set once constructed: the eigenvectors' coordinates
            provenance["vector_order"] = self.layout.order
        provenance.update(objective_provenance(self.loss_fn))
        if self.num_samples is not None:
            provenance["num_samples"] = self.num_samples  # over all ranks
        if self.data.num_samples is not None:  # tensors: the batch size splits the sums
            provenance["batch_size"] = self.data.batch_size
        model = self.sharded.cached("model", lambda: self.space.digest(self.model, whole_values))
        return {"provenance": provenance, "fingerprints": {"model": model}}

    def partition(self, world_size: int) -> list:
        """Row offsets of each rank's rows of a sharded vector (``world_size + 1`` offsets
        from 0 to ``M``): for a model sharded as ``Shard(0)``, each rank's own shards in
        the shard-major order of :attr:`layout` (:mod:`lanczos_hessian.parallel.layout`);
        else an even split of the parameter vector."""
        if not self.layout.is_identity:
            if world_size != self.layout.world_size:
                raise ValueError(f"the model's parameters are sharded over "
                                 f"{self.layout.world_size} ranks, not {world_size}")
            return list(self.layout.offsets)
        return [self.shape[0] * r // world_size for r in range(world_size + 1)]

    def rows_product(self, offsets):
        """Products taken on the parameters' shards (:mod:`lanczos_hessian.parallel.native`)
        for vectors split at ``offsets``: ``apply_rows(V_r) -> (C V)_r`` on this rank's rows,
        or None when they gather (not the Hessian, not sharded, another split)."""
        return None if self.native is None else self.native.rows_product(offsets)
