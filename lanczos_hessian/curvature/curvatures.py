"""Curvature-matrix products on one batch: one class per curvature, one hook each.

For a batch ``B = {(x_i, y_i)}`` with batch loss ``l_B(w) = loss(f(w, x_B), y_B)`` (the loss
function's own reduction, ``mean`` or ``sum`` over the batch), a curvature's hook
:meth:`BatchCurvature.matmat_batch` returns ``(l_B, C_B V)`` for a block ``V`` of flat
parameter vectors ``(M, b)`` in the model's dtype:

* :class:`Hessian`:  ``H_B V``, ``H_B = d^2 l_B / dw^2``;
* :class:`GGN`:      ``G_B V``, ``G_B = J_B^T (d^2 loss / dz^2) J_B`` with ``J_B = df/dw``
  (the first term of Sagun et al. 2018's Eq. 4, ``H = G + R``, and their Eq. 5's
  approximation ``H ~ G``: positive semi-definite for a convex loss);
* :class:`Residual`: ``R_B V = H_B V - G_B V`` (the second term of their Eq. 4, weighted by
  the loss gradient, where negative curvature comes from).

The differentiation strategy is a property of the product (:attr:`BatchCurvature.strategy`,
:mod:`lanczos_hessian.curvature.differentiation`), fixed once by the rule of
:mod:`lanczos_hessian.curvature.products`. A new curvature is one subclass with one hook,
written with the strategy's primitives. Every product runs with attention on a kernel that
can be differentiated twice, and an op without the needed derivative is named
(:mod:`lanczos_hessian.curvature.kernels`).
"""

from __future__ import annotations

import torch

from ..errors import ForwardModeUnsupportedError
from .data import call_model
from .differentiation import STRATEGY_CLASSES, BatchFunctions
from .kernels import missing_derivative
from .params import ParameterSpace


class BatchCurvature:
    """Products of one curvature of one model and loss on single batches.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``; must already
        be in the mode products are taken in.
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar``.
    space : ParameterSpace
        The parameters differentiated; all others and the buffers are held fixed.
    strategy : str
        ``"forward-over-reverse"`` or ``"reverse-over-reverse"`` (``"auto"`` is resolved by
        :func:`lanczos_hessian.curvature.products.resolve_strategy` before).
    """

    kind = ""

    def __init__(self, model, loss_fn, space: ParameterSpace, strategy: str,
                 reason: str = "requested"):
        self.model, self.loss_fn, self.space = model, loss_fn, space
        self.strategy, self.reason = strategy, reason
        self.differentiate = STRATEGY_CLASSES[strategy]()
        self._params = None

    def begin_pass(self, modules: list | None = None) -> None:
        """Read the model's parameters once for the batches of one pass (the model may be
        trained, or its parameters replaced, between passes); ``modules``, the model's
        ``named_modules()`` when the caller has walked them already."""
        self._params = BatchFunctions.read_parameters(self.model, self.space, modules)
        self.differentiate.forget()

    def end_pass(self) -> None:
        """Drop what :meth:`begin_pass` read: for a sharded model, its gathered parameters,
        which must not outlive the pass."""
        self._params = None
        self.differentiate.forget()

    def functions(self, inputs, targets) -> BatchFunctions:
        if self._params is None:
            self.begin_pass()
        return BatchFunctions(self.model, self.loss_fn, self.space, inputs, targets,
                              self._params)

    def loss(self, inputs, targets) -> torch.Tensor:
        """The batch loss ``l_B(w)`` (no graph)."""
        with torch.no_grad():
            return self.loss_fn(call_model(self.model, None, inputs), targets)

    def products(self, inputs, targets, V: torch.Tensor) -> tuple:
        """``(batch loss, C_B V)``, ``V`` ``(M, b)``; the product a :class:`BlockProduct`
        (per-parameter pieces; ``.joined(space)`` is the ``(M, b)`` block). Runs
        :meth:`matmat_batch` and names a missing derivative (:func:`missing_derivative`).
        Callers run it under :func:`twice_differentiable` (once per pass: the operators)."""
        try:
            return self.matmat_batch(self.functions(inputs, targets), V)
        except (NotImplementedError, RuntimeError) as exc:
            named = missing_derivative(exc, self.strategy, self.kind)
            if named is not None:
                raise named from exc
            if self.strategy == "reverse-over-reverse":
                raise
            raise ForwardModeUnsupportedError(
                f"forward-over-reverse {self.kind} products failed on this model and loss "
                f"({type(exc).__name__}: {exc}); use strategy='reverse-over-reverse' "
                "(or 'auto', which falls back by itself)") from exc

    def matmat_batch(self, fns: BatchFunctions, V: torch.Tensor) -> tuple:
        """The hook: ``(l_B, C_B V)`` from the batch's functions."""
        raise NotImplementedError


class Hessian(BatchCurvature):
    """``H_B V``."""

    kind = "hessian"

    def matmat_batch(self, fns, V):
        return self.differentiate.hessian(fns, V)


class GGN(BatchCurvature):
    """``G_B V = J_B^T H_loss J_B V``."""

    kind = "ggn"

    def matmat_batch(self, fns, V):
        return self.differentiate.ggn(fns, V)


class Residual(BatchCurvature):
    """``R_B V = H_B V - G_B V``, both from the same batch."""

    kind = "residual"

    def matmat_batch(self, fns, V):
        value, HV = self.differentiate.hessian(fns, V)
        _, GV = self.differentiate.ggn(fns, V)
        return value, HV - GV


CURVATURES = {cls.kind: cls for cls in (Hessian, GGN, Residual)}
