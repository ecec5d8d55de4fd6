"""``lanczos_eigsh``: extreme eigenpairs of a symmetric operator with honest residuals.

The driver grows a :class:`~lanczos_hessian.linalg.lanczos.LanczosProcess` one operator application
at a time, computes the Ritz pairs of ``T_j`` after every step (cheap beside an application),
and stops as soon as the ``k`` wanted pairs meet the tolerance. When the basis is full it
thick-restarts, keeping the wanted Ritz vectors plus a margin of their neighbours, with
converged pairs locked.

Convergence criterion, for each wanted Ritz pair ``(theta_i, y_i)``::

    ||A y_i - theta_i y_i||  <=  tol * ||A||,

the left side from the free bound ``|beta_j S[j, i]|`` and ``||A||`` estimated by the largest
``|theta|`` seen. Relative to ``||A||`` rather than ``|theta_i|`` (ARPACK's choice) because the
small negative eigenvalues of a trained network are what one wants from the bottom end, and a
``|theta_i|``-relative test would demand ever more steps as ``theta_i -> 0``. Each returned pair
carries two guarantees (Parlett, *The Symmetric Eigenvalue Problem*, Thm. 11.7.1 and the
Kato-Temple bound): some eigenvalue ``lambda`` of ``A`` satisfies
``|lambda - theta_i| <= ||r_i||`` and ``|lambda - theta_i| <= ||r_i||^2 / gap_i``, with
``gap_i`` the distance from ``theta_i`` to the other Ritz values.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from .. import validate
from ..errors import NoConvergenceError, NumericalWarning
from ..progress import Progress
from .eigsh_result import EigshResult
from .eigsh_state import EigshState
from .hooks import NO_HOOKS, Hooks
from .linop import as_block_matvec, precision_floor
from .ritz import CLUSTER_ROOM, default_ncv, wanted_indices

logger = logging.getLogger(__name__)

__all__ = ["CLUSTER_ROOM", "CRITERIA", "EigshResult", "EigshState", "WHICH", "check_arguments",
           "default_ncv", "lanczos_eigsh", "wanted_indices"]

#: The ends :func:`lanczos_eigsh` computes (scipy's names); the command line's choices.
WHICH = ("LA", "SA", "BE", "LM")
#: What the residuals are relative to: ``||A||`` or ``|theta_i|`` (ARPACK's test).
CRITERIA = ("norm", "eigenvalue")


def check_arguments(k, dim, which, tol, ncv=None, max_matvecs=None, k_bottom=None,
                    block_size=1, criterion="norm") -> None:
    """Check every argument of :func:`lanczos_eigsh` before any application of the operator
    (and, in :mod:`lanczos_hessian.run`, before any file is created): integers are integers
    (not ``bool``, not ``12.5``), in range, and ``which`` one of :data:`WHICH`."""
    validate.integer("block_size", block_size, low=1, high=dim, high_name="n")
    validate.choice("which", which, WHICH)
    validate.integer("k", k, low=1, high=dim, high_name="n")
    if which == "BE" and k < 2:
        raise ValueError("which='BE' needs k >= 2 (half from each end)")
    if k_bottom is not None:
        validate.integer("k_bottom", k_bottom)
        if which != "BE" or not 1 <= k_bottom < k:
            raise ValueError(f"k_bottom={k_bottom!r} needs which='BE' and 1 <= k_bottom < "
                             f"k={k}")
    validate.positive_float("tol", tol, phrase="positive")
    if ncv is not None:
        validate.integer("ncv", ncv)
        if not k < ncv and ncv < dim:
            raise ValueError(f"ncv={ncv} must exceed k={k} (or equal n = {dim})")
        if block_size > 1 and ncv < min(k + 2 * block_size, dim):
            raise ValueError(f"ncv={ncv} leaves no room for blocks of {block_size} beside "
                             f"k={k}: need ncv >= k + 2 * block_size = "
                             f"{k + 2 * block_size} (or n)")
    validate.optional_integer("max_matvecs", max_matvecs, low=1)
    validate.choice("criterion", criterion, CRITERIA)


def lanczos_eigsh(
    op,
    k: int = 6,
    which: str = "LA",
    tol: float = 1e-6,
    *,
    criterion: str = "norm",
    k_bottom: int | None = None,
    ncv: int | None = None,
    max_matvecs: int | None = None,
    block_size: int = 1,
    v0=None,
    rng=None,
    return_eigenvectors: bool = True,
    true_residuals: bool = False,
    raise_on_unconverged: bool = False,
    dim: int | None = None,
    callback=None,
    progress: bool = False,
    hooks: Hooks = NO_HOOKS,
) -> EigshResult:
    """``k`` extreme eigenpairs of a symmetric operator by thick-restart Lanczos.

    Parameters
    ----------
    op : LinearOperator, CurvatureOperator, array, tensor or callable
        The symmetric ``n x n`` operator (see :mod:`lanczos_hessian.linalg.linop`).
    k : int
        Number of eigenpairs, ``1 <= k <= n``.
    which : {"LA", "SA", "BE", "LM"}
        Largest algebraic, smallest algebraic, both ends (``k // 2`` bottom, the rest top),
        largest magnitude; scipy's meanings.
    k_bottom : int, optional
        With ``which="BE"``: how many of the ``k`` come from the bottom (default ``k // 2``),
        e.g. ``k=25, k_bottom=5`` for the top 20 outliers and the 5 most negative values.
    tol : float
        Relative residual tolerance (see the module docstring): default ``1e-6``.
    criterion : {"norm", "eigenvalue"}
        Residuals relative to ``||A||`` (default) or to ``|theta_i|`` (ARPACK's test; use it
        to compare with ``scipy.sparse.linalg.eigsh`` at the same ``tol``).
    ncv : int, optional
        Basis size before a thick restart; default ``max(2k + 1, 20)`` (ARPACK's default).
    max_matvecs : int, optional
        Budget of vectors the operator is applied to, the ``k`` of the measured residuals
        (``true_residuals``) included; default ``max(20 * ncv, 300)``, with ``ncv`` from the
        basis-size policy (:func:`default_ncv`).
    block_size : int
        Vectors per application of the operator (block Lanczos; see
        :class:`~lanczos_hessian.linalg.block_lanczos.BlockLanczosProcess`): each step applies the
        operator to ``block_size`` vectors in ONE pass over the data, so a pass serves
        ``block_size`` vectors. Default 1 (single-vector Lanczos).
    v0 : array or tensor, optional
        Start vector; default a standard normal vector drawn from ``rng`` (in block mode the
        first column of the start block, the others drawn from ``rng``).
    rng : int or numpy Generator, optional
        Seed for ``v0`` and for the vectors drawn after a breakdown.
    return_eigenvectors : bool
        Return the Ritz vectors (``n x k`` float64 numpy).
    true_residuals : bool
        Also compute ``||A y - theta y||`` with one extra block application.
    raise_on_unconverged : bool
        Raise :class:`NoConvergenceError` (carrying the partial result) instead of warning
        with :class:`NumericalWarning` when the budget runs out first.
    dim : int, optional
        Size of a bare matvec callable.
    callback : callable, optional
        ``callback(process, theta, bounds)`` after every step (e.g. to record it).
    progress : bool
        Show progress (:class:`~lanczos_hessian.progress.Progress`: a bar on a terminal,
        a status line every 30 s in a log file), counted in passes over the data.
    hooks : Hooks, optional
        Where the basis lives (``hooks.bases(0, rows, ncv)``), the checkpoint committed after
        every step, and the rows held when the vectors are split across ranks
        (:mod:`lanczos_hessian.linalg.hooks`); eigenvectors are gathered whole.

    Examples
    --------
    The two ends of ``diag(1, ..., 100)``:

    >>> import numpy as np
    >>> result = lanczos_eigsh(np.diag(np.arange(1.0, 101.0)), k=4, which="BE", tol=1e-10,
    ...                        rng=0)
    >>> np.round(result.eigenvalues, 8).tolist(), bool(result.all_converged)
    ([1.0, 2.0, 99.0, 100.0], True)
    """
    matvec = as_block_matvec(op, dim if v0 is None else len(v0))
    n = matvec.dim
    check_arguments(k, n, which, tol, ncv, max_matvecs, k_bottom, block_size, criterion)
    ncv = default_ncv(k, n, block_size, which) if ncv is None else min(ncv, n)
    warn_below_floor(tol, criterion, matvec.precision)
    max_matvecs = max_matvecs or max(20 * ncv, 300)
    # the measured residuals take k more vectors (one pass): kept inside the budget
    budget = max(max_matvecs - (k if true_residuals else 0), block_size)
    state = EigshState(matvec, k=k, which=which, tol=tol, criterion=criterion,
                       k_bottom=k_bottom, ncv=ncv, budget=budget, block_size=block_size,
                       v0=v0, rng=rng, bases=hooks.bases, shard=hooks.shard)
    checkpoint = hooks.checkpoint
    if checkpoint is not None and checkpoint.restore(state) is not None:
        logger.info("resumed after %d operator applications", state.process.num_vectors)
    bar = Progress("Lanczos", "pass", initial=state.process.num_steps, enabled=bool(progress))
    while not state.converged:
        state.step()
        update_bar(bar, state.wanted_theta, state.done)
        if callback is not None:
            callback(state.process, state.theta, state.bounds)
        if checkpoint is not None:
            checkpoint.commit(state, {}, state.converged)
    bar.close()
    result = state.result(return_eigenvectors, true_residuals)
    report_convergence(result, k, raise_on_unconverged)
    return result


def warn_below_floor(tol: float, criterion: str, precision) -> None:
    """Say up front when ``tol`` asks for residuals the products cannot resolve."""
    floor = precision_floor(precision)
    if tol < floor:
        scale = "||A||" if criterion == "norm" else "|theta|"
        warnings.warn(
            f"tol={tol:g} is below the precision floor {floor:.1e} of products computed in "
            f"{str(precision).replace('torch.', '')}: residuals under {floor:.1e} * {scale} "
            "cannot be told from rounding, so pairs that reach tol by their free bound will "
            "not be confirmed by a measured residual; use tol >= the floor, or a float64 "
            "model for tighter residuals", NumericalWarning, stacklevel=3)


def report_convergence(result, k, raise_on_unconverged):
    missing = np.flatnonzero(~result.converged)
    if len(result.eigenvalues) == k and len(missing) == 0:
        return
    threshold = result.tol * result.anorm
    measured = result.residuals is not None
    listed = ", ".join(
        f"theta={result.eigenvalues[i]:.6g} (residual bound {result.residual_bounds[i]:.2e}"
        + (f", measured {result.residuals[i]:.2e}" if measured else "") + ")"
        for i in missing
    )
    by_precision = measured and np.all(result.residual_bounds[missing] <= threshold)
    advice = ("the free bounds met it but the measured residuals did not: the products' "
              "rounding (e.g. float32) limits them; raise tol or use a float64 model"
              if by_precision else "raise max_matvecs or ncv")
    message = (
        f"{len(missing)} of {k} wanted eigenpairs did not reach tol={result.tol:g} * ||A|| "
        f"(||A|| ~ {result.anorm:.4g}) within {result.num_matvecs} operator applications: "
        f"{listed}; {advice}"
    )
    if raise_on_unconverged:
        raise NoConvergenceError(message, result)
    warnings.warn(message, NumericalWarning, stacklevel=3)


def update_bar(bar, theta_wanted, done):
    bar.update(1, converged=f"{int(done.sum())}/{len(done)}",
               top=f"{theta_wanted[-1]:.4g}" if len(theta_wanted) else "-")
