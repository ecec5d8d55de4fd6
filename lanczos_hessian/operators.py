"""Full-dataset curvature operators as ``scipy.sparse.linalg.LinearOperator`` objects.

For a model ``f(w, x)``, a loss with reduction ``mean`` (or ``sum``) and a data set of ``N``
samples, the full-dataset objective is

    L(w) = c * sum_{i=1..N} loss(f(w, x_i), y_i),   c = 1/N for ``mean``, c = 1 for ``sum``,

and the operators represent, exactly, with ``M`` the number of selected parameters:

* :class:`HessianOperator`   ``H = d^2 L / dw^2``                    (M x M, symmetric)
* :class:`GGNOperator`       ``G = c * sum_i J_i^T H_loss,i J_i``     (Sagun et al. 2018, Eq. 4)
* :class:`ResidualOperator`  ``R = H - G``                            (their Eq. 5)

One application is one pass over the data. Batch ``B`` with mean-reduced batch loss ``l_B``
contributes ``|B| * C_B v`` to a float64 accumulator, which is divided by the total sample
count at the end of the pass, so ragged batches are weighted exactly. The accumulator is one
flat float64 buffer, all-reduced once per application under ``torch.distributed`` (the sample
count travels in the same buffer). A block product ``C V`` for ``V`` of shape ``(M, b)`` is
still one pass.

Products are taken with the model in eval mode (dropout off, batch-norm on its running
statistics), so the operator is a fixed symmetric matrix; the caller's train/eval flags are
restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from .data import DataSource, PassFingerprint
from .distributed import all_reduce_sum, current_world
from .errors import InvalidLossError, NonFiniteError
from .hvp import STRATEGIES, BatchCurvature
from .params import ParameterSpace

logger = logging.getLogger(__name__)


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
        See :class:`lanczos_hessian.data.DataSource`.
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
        Differentiation strategy, see :mod:`lanczos_hessian.hvp`.
    check_data : bool
        Compare an order-independent fingerprint of every pass with the first one.
    progress : bool
        A progress bar over the batches of each pass (rank 0).
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
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.model, self.loss_fn = model, loss_fn
        self.space = ParameterSpace.of(model, params)
        self.reduction = infer_reduction(loss_fn, reduction)
        self.world = current_world()
        self.data = DataSource(data, batch_size, self.world.rank, self.world.size)
        first = self.space.parameters(model)[self.space.names[0]]
        self.device, self.model_dtype = first.device, first.dtype
        self.curvature = BatchCurvature(model, loss_fn, self.space, strategy)
        self.check_data, self.progress = check_data, progress
        self._reference_fingerprint = None
        self.num_applications = 0  # passes over the data
        self.num_vectors = 0  # products counted per vector
        self.time_in_products = 0.0
        super().__init__(dtype=np.dtype(dtype), shape=(self.space.dim, self.space.dim))
        self._check_loss_on_first_batch()

    # ---- validation ---------------------------------------------------------------------
    def _check_loss_on_first_batch(self):
        inputs, targets = self.data.first_batch()
        with evaluation_mode(self.model):
            try:
                value = self.curvature.loss(*self._to_device(inputs, targets))
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
            raise NonFiniteError(f"the loss is {value.item()} on batch 0")

    def _to_device(self, inputs, targets):
        x = inputs.to(self.device, non_blocking=True)
        if x.is_floating_point():
            x = x.to(self.model_dtype)
        return x, targets.to(self.device, non_blocking=True)

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
        with evaluation_mode(self.model):
            total = self._accumulate(block)
        self.time_in_products += time.perf_counter() - start
        self.num_applications += 1
        self.num_vectors += block.shape[1]
        return total.reshape(V.shape)

    def _accumulate(self, block: torch.Tensor) -> torch.Tensor:
        dim, b = block.shape
        buffer = torch.zeros(dim * b + 1, dtype=torch.float64, device=self.device)
        fingerprint = PassFingerprint()
        for index, (inputs, targets) in enumerate(self._batches()):
            x, y = self._to_device(inputs, targets)
            value, product = self.curvature.products(self.kind, x, y, block)
            _check_finite(value, product, index, self.kind)
            weight = len(x) if self.reduction == "mean" else 1.0
            buffer[:-1].add_(product.reshape(-1).to(torch.float64), alpha=weight)
            buffer[-1] += len(x)
            if self.check_data:
                fingerprint.add(inputs, targets)
        self._check_fingerprint(fingerprint)
        all_reduce_sum(buffer)
        total = buffer[:-1].view(dim, b)
        return total / buffer[-1] if self.reduction == "mean" else total

    def _batches(self):
        batches = self.data
        if self.progress and self.world.is_main:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"{self.kind} pass", leave=False, unit="batch")
        return batches

    def _check_fingerprint(self, fingerprint: PassFingerprint):
        if not self.check_data:
            return
        if self._reference_fingerprint is None:
            self._reference_fingerprint = fingerprint
        else:
            fingerprint.check_same(self._reference_fingerprint)

    @property
    def data_fingerprint(self) -> tuple | None:
        """``(num_samples, sums...)`` of this rank's first pass, or None before one."""
        ref = self._reference_fingerprint
        return None if ref is None else ref.as_tuple()

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


def _check_finite(value, product, index, kind):
    if not torch.isfinite(value):
        raise NonFiniteError(f"the loss is {value.item()} on batch {index}")
    if not torch.isfinite(product).all():
        raise NonFiniteError(
            f"the {kind}-vector product has NaN or Inf entries on batch {index} "
            "(overflow in the model, a non-differentiable op, or a NaN in the vector)"
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
