"""Full-dataset curvature operators as ``scipy.sparse.linalg.LinearOperator`` objects.

For a model ``f(w, x)``, a loss with reduction ``mean`` (or ``sum``) and a data set of ``N``
samples, the full-dataset objective is

    L(w) = c * sum_{i=1..N} loss(f(w, x_i), y_i),   c = 1/N for ``mean``, c = 1 for ``sum``,

and the operators represent, exactly, with ``M`` the number of selected parameters:

* :class:`HessianOperator`   ``H = d^2 L / dw^2``                    (M x M, symmetric)
* :class:`GGNOperator`       ``G = c * sum_i J_i^T H_loss,i J_i``     (Sagun et al. 2018: first
  term of Eq. 4, ``H = G + R``; Eq. 5 is the approximation ``H ~ G``)
* :class:`ResidualOperator`  ``R = H - G``                            (second term of their Eq. 4)

The data loop they share, its distribution over ranks and its checks are
:class:`lanczos_hessian.curvature.base.CurvatureOperator`; here each operator is its kind of
per-batch product (``kind``) with a closed-form example.
"""

from __future__ import annotations

from .base import CurvatureOperator
from .checks import LOW_PRECISION, evaluation_mode, infer_reduction

__all__ = ["CurvatureOperator", "HessianOperator", "GGNOperator", "ResidualOperator",
           "OPERATORS", "LOW_PRECISION", "evaluation_mode", "infer_reduction"]


class HessianOperator(CurvatureOperator):
    """``H v`` for the full-dataset loss ``L(w)``; see the module docstring.

    Example: logistic regression, whose Hessian is ``X^T diag(p (1 - p)) X / N`` in closed
    form (``p`` the predicted probabilities):

    >>> import numpy as np, torch
    >>> X = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.5], [2.0, 1.0]], dtype=torch.float64)
    >>> y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 1, bias=False).double()
    >>> loss = lambda out, t: torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], t)
    >>> H = HessianOperator(model, loss, (X, y), reduction="mean", batch_size=3)
    >>> p = torch.sigmoid(model(X)[:, 0]).detach()
    >>> exact = (X.T * (p * (1 - p))) @ X / 4
    >>> bool(np.allclose(H @ np.eye(2), exact.numpy(), rtol=1e-12, atol=0))
    True
    """

    kind = "hessian"


class GGNOperator(CurvatureOperator):
    """``G v = c * sum_i J_i^T H_loss,i J_i v``, the generalized Gauss-Newton matrix.

    Positive semi-definite whenever the loss is convex in the network outputs
    (cross-entropy, squared error). Computed matrix-free: JVP, loss-Hessian product, VJP.

    Example: for a two-layer linear network ``f(w, x) = a * (b * x)`` and half the squared
    error, ``J = [b x, a x]`` per sample, so ``G = sum_i J_i^T J_i / N`` in closed form:

    >>> import numpy as np, torch
    >>> x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    >>> model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False),
    ...                             torch.nn.Linear(1, 1, bias=False)).double()
    >>> half_mse = lambda out, t: 0.5 * ((out - t) ** 2).mean()
    >>> G = GGNOperator(model, half_mse, (x, torch.zeros(3, 1, dtype=torch.float64)),
    ...                 reduction="mean")
    >>> b, a = (float(p.detach()) for p in model.parameters())
    >>> J = torch.cat([a * x, b * x], dim=1)
    >>> bool(np.allclose(G @ np.eye(2), (J.T @ J / 3).numpy(), rtol=1e-12, atol=0))
    True
    """

    kind = "ggn"


class ResidualOperator(CurvatureOperator):
    """``R v = H v - G v``: the part of the Hessian weighted by the loss gradient.

    Both terms come from the same batch in one pass, so ``H = G + R`` holds to rounding.

    Example: a model linear in its parameters has ``R = 0`` in closed form (its outputs have
    no second derivative):

    >>> import numpy as np, torch
    >>> X = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    >>> model = torch.nn.Linear(2, 3).double()
    >>> R = ResidualOperator(model, torch.nn.CrossEntropyLoss(), (X, torch.tensor([0, 2, 1])))
    >>> float(np.abs(R @ np.eye(R.shape[0])).max()) < 1e-15
    True
    """

    kind = "residual"


OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "residual": ResidualOperator}
