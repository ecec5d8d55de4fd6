"""The result of :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`: eigenpairs, their bounds
and the record of the run, with tables for people (``summary``, ``to_dataframe``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .density import pandas_module

__all__ = ["EigshResult", "bound_floor", "bound_text"]


def bound_floor(eigenvalues) -> float:
    """``eps * max |theta|``, the float64 rounding of the eigenvalues themselves: a residual
    or error bound below it says only "at the floor"."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    return float(np.finfo(np.float64).eps * (finite.max() if finite.size else 1.0))


def bound_text(value, floor: float, width: int) -> str:
    """A bound in a column of ``width``: ``< 4e-17`` below ``floor`` (not ``5.92e-101``),
    else ``1.23e-05``."""
    if 0 <= value < floor:
        return f"{'< ' + format(floor, '.0e'):>{width}}"
    return f"{value:>{width}.2e}"


@dataclass(frozen=True)
class EigshResult:
    """Eigenpairs from :func:`lanczos_eigsh`, ascending by eigenvalue.

    Ordering: every per-pair array is ascending by eigenvalue, as scipy's ``eigsh`` returns
    them (``eigenvalues[-1]`` is the largest); :meth:`summary`, :meth:`to_dataframe` and the
    command line's tables keep this order and print the array index ``i``.

    Attributes
    ----------
    eigenvalues : ndarray (k,)
        Ritz values ``theta_i``, ascending.
    eigenvectors : ndarray (n, k) or None
        Ritz vectors ``y_i`` (unit norm, float64).
    residual_bounds : ndarray (k,)
        The Ritz bound ``|beta_m S[m, i]|`` (also :attr:`ritz_bounds`): ``||A y_i - theta_i
        y_i||`` in exact arithmetic, free from the recurrence; it does not see the rounding
        of the products (it may read 1e-22 beside a measured 5e-6 for float32 products).
    error_bounds : ndarray (k,)
        ``min(||r_i||, ||r_i||^2 / gap_i)``: a bound on the distance of ``theta_i`` to an
        eigenvalue of ``A``, with ``||r_i||`` the larger of the bound and the true residual
        when that was measured (it includes the operator's own rounding, e.g. float32).
    residuals : ndarray (k,) or None
        Measured residual norms ``||A y_i - theta_i y_i||`` (also :attr:`measured_residuals`;
        one extra block application, ``true_residuals=True``), when asked for.
    converged : ndarray (k,) of bool
        Whether each pair met ``tol``.
    num_matvecs : int
        Operator applications to single vectors, the true-residual check included.
    num_passes : int
        Applications of the operator (a block product counts once).
    num_restarts : int
        Thick restarts performed.
    alphas, betas : ndarray
        The tridiagonal of the first Lanczos cycle from ``v0`` (before any restart).
    timings : dict
        Seconds in the operator, in orthogonalization, in the Ritz step, and in total.
    which : str
    tol : float
    anorm : float
        The estimate of ``||A||`` the tolerance was relative to.
    orthogonality : float
        ``max |Q^T Q - I|`` of the final Lanczos basis, measured (one sweep over the basis):
        the loss of orthogonality, at the level of machine epsilon with full
        reorthogonalization; larger values warn of ghost copies of converged eigenvalues.
    block_size : int
        Vectors per application of the operator.
    k_bottom : int or None
        With ``which="BE"``, how many of the eigenvalues (the smallest) are the bottom end.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    residual_bounds: np.ndarray
    error_bounds: np.ndarray
    residuals: np.ndarray | None
    converged: np.ndarray
    num_matvecs: int
    num_passes: int
    num_restarts: int
    alphas: np.ndarray
    betas: np.ndarray
    timings: dict = field(default_factory=dict)
    which: str = "LA"
    tol: float = 0.0
    anorm: float = 0.0
    orthogonality: float = float("nan")
    block_size: int = 1
    k_bottom: int | None = None

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    def __repr__(self) -> str:
        """One line whatever ``k`` and ``n`` (the arrays are attributes, not printed)."""
        k = len(self.eigenvalues)
        span = (f"{self.eigenvalues.min():.4g} .. {self.eigenvalues.max():.4g}" if k else "-")
        return (f"EigshResult(k={k}, which={self.which!r}, eigenvalues {span}, converged "
                f"{int(np.sum(self.converged))}/{k}, max residual bound "
                f"{np.max(self.residual_bounds, initial=0.0):.1e}, {self.num_passes} passes, "
                f"{self.num_matvecs} vectors)")

    @property
    def ritz_bounds(self) -> np.ndarray:
        """The Ritz bounds ``|beta_m S[m, i]|`` (the same array as ``residual_bounds``)."""
        return self.residual_bounds

    @property
    def measured_residuals(self) -> np.ndarray | None:
        """The measured ``||A y_i - theta_i y_i||`` (the same array as ``residuals``)."""
        return self.residuals

    #: The legend under :meth:`summary`'s table.
    LEGEND = ("i: index into eigenvalues (ascending, as scipy's eigsh); Ritz bound: "
              "|beta_m s_mi|, ||A y - theta y||\nin exact arithmetic (free); measured: the same "
              "norm computed with one more pass (includes the\nproducts' rounding); error "
              "bound: distance of theta to an eigenvalue of A")

    def summary(self) -> str:
        """A table in array order (ascending), index first, naming what each residual is."""
        head = (f"{'i':>4}  {'eigenvalue':>14}  {'Ritz bound':>10}  {'measured':>10}  "
                f"{'error bound':>11}  conv")
        lines = [repr(self), head]
        floor = bound_floor(self.eigenvalues)
        for i in range(len(self.eigenvalues)):
            measured = (bound_text(self.residuals[i], floor, 10) if self.residuals is not None
                        else f"{'-':>10}")
            lines.append(f"{i:>4}  {self.eigenvalues[i]:>14.7e}  "
                         f"{bound_text(self.residual_bounds[i], floor, 10)}  {measured}  "
                         f"{bound_text(self.error_bounds[i], floor, 11)}  "
                         f"{'yes' if self.converged[i] else 'NO'}")
        lines.append(self.LEGEND)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        shown = range(max(0, len(self.eigenvalues) - 50), len(self.eigenvalues))
        floor = bound_floor(self.eigenvalues)
        rows = "".join(
            f"<tr><td>{i}</td><td>{self.eigenvalues[i]:.7e}</td>"
            f"<td>{bound_text(self.residual_bounds[i], floor, 0)}</td>"
            f"<td>{'-' if self.residuals is None else bound_text(self.residuals[i], floor, 0)}"
            "</td>"
            f"<td>{'yes' if self.converged[i] else 'NO'}</td></tr>" for i in shown)
        return (f"<p>{repr(self)}</p><table><tr><th>i</th><th>eigenvalue</th>"
                f"<th>Ritz bound</th><th>measured residual</th><th>converged</th></tr>{rows}"
                f"</table><p>{self.LEGEND}</p>")

    def to_dataframe(self):
        """One row per pair, in array order (ascending; the index is the array index):
        ``eigenvalue``, ``ritz_bound``, ``measured_residual`` (NaN when not measured),
        ``error_bound``, ``converged``. Needs pandas (optional: an ImportError naming
        ``pip install pandas`` without it)."""
        pandas = pandas_module("EigshResult.to_dataframe")
        k = len(self.eigenvalues)
        measured = (np.full(k, np.nan) if self.residuals is None
                    else np.asarray(self.residuals, dtype=np.float64))
        return pandas.DataFrame({"eigenvalue": self.eigenvalues,
                                 "ritz_bound": self.residual_bounds,
                                 "measured_residual": measured,
                                 "error_bound": self.error_bounds,
                                 "converged": np.asarray(self.converged, dtype=bool)})
