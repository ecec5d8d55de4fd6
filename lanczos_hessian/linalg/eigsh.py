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
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .. import validate
from ..errors import NoConvergenceError, NumericalWarning
from .lanczos import BlockLanczosProcess, LanczosProcess
from ..progress import Progress
from .density import pandas_module
from .hooks import NO_HOOKS, Hooks
from .linop import as_block_matvec, precision_floor
from .partition import ShardedMatvec, whole_or

logger = logging.getLogger(__name__)

#: The ends :func:`lanczos_eigsh` computes (scipy's names); the command line's choices.
WHICH = ("LA", "SA", "BE", "LM")
#: What the residuals are relative to: ``||A||`` or ``|theta_i|`` (ARPACK's test).
CRITERIA = ("norm", "eigenvalue")


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
        for i in range(len(self.eigenvalues)):
            measured = (f"{self.residuals[i]:>10.2e}" if self.residuals is not None
                        else f"{'-':>10}")
            lines.append(f"{i:>4}  {self.eigenvalues[i]:>14.7e}  "
                         f"{self.residual_bounds[i]:>10.2e}  {measured}  "
                         f"{self.error_bounds[i]:>11.2e}  "
                         f"{'yes' if self.converged[i] else 'NO'}")
        lines.append(self.LEGEND)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        shown = range(max(0, len(self.eigenvalues) - 50), len(self.eigenvalues))
        rows = "".join(
            f"<tr><td>{i}</td><td>{self.eigenvalues[i]:.7e}</td>"
            f"<td>{self.residual_bounds[i]:.2e}</td>"
            f"<td>{'-' if self.residuals is None else f'{self.residuals[i]:.2e}'}</td>"
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


def wanted_indices(theta: np.ndarray, k: int, which: str,
                   k_bottom: int | None = None) -> np.ndarray:
    """Indices into ascending ``theta`` of the ``k`` wanted Ritz values (ascending order).

    ``BE`` takes ``k_bottom`` from the bottom and ``k - k_bottom`` from the top; by default
    ``k_bottom = k // 2`` (scipy's rule: the extra one from the high end).
    """
    m = len(theta)
    if which == "BE":
        low = k // 2 if k_bottom is None else k_bottom
        high = k - low
        if low + high > m:  # fewer Ritz values than wanted yet: share them in proportion
            low = (low * m) // (low + high)
            high = m - low
        return np.concatenate([np.arange(low), np.arange(m - high, m)])
    k = min(k, m)
    if which == "LA":
        return np.arange(m - k, m)
    if which == "SA":
        return np.arange(k)
    return np.sort(np.argsort(np.abs(theta), kind="stable")[m - k:])  # LM


#: Extra basis vectors for the ends other than the top (``SA``, ``BE``, ``LM``).
CLUSTER_ROOM = 40


def default_ncv(k: int, n: int, block_size: int = 1, which: str = "LA") -> int:
    """Basis size before a thick restart when none is given (the basis-size policy).

    * ``LA``: ``max(2k + 1, 20)``, ARPACK's default (``scipy.sparse.linalg.eigsh``; Lehoucq,
      Sorensen and Yang 1998): the top of a network's Hessian is a few outliers well
      separated from the bulk, and a small basis converges them in few applications.
    * ``SA``, ``BE``, ``LM``: the same plus :data:`CLUSTER_ROOM` (40) vectors. The bottom of a
      trained network's Hessian is a cluster of hundreds of small negative eigenvalues, and
      thick restart converges on a cluster in fewer applications the more free room each
      cycle has (Wu and Simon 2000, Sec. 5; TRLan and SLEPc's Krylov-Schur recommend a
      basis well above ``2k`` for clustered ends). Measured in ``scripts/bench_ends.py``
      (docs/BENCHMARKS.md): with ``ncv = 20`` the bottom 5 of the demo network did not
      converge within the old budget, with 60 it converged in fewer than half ARPACK's
      applications.
    * block mode (``b > 1``): at least ``k + 3 b`` more, so that a restart keeps the wanted
      pairs and still grows two blocks.

    At most ``n``. The default budget of :func:`lanczos_eigsh` follows from it:
    ``max(20 ncv, 300)`` vectors.
    """
    ncv = max(2 * k + 1, 20) + (CLUSTER_ROOM if which != "LA" else 0)
    if block_size > 1:
        ncv = max(ncv, k + 3 * block_size) + 2 * block_size
    return min(ncv, n)


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
        :class:`~lanczos_hessian.linalg.lanczos.BlockLanczosProcess`): each step applies the
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
    """
    matvec = as_block_matvec(op, dim if v0 is None else len(v0))
    n = matvec.dim
    check_arguments(k, n, which, tol, ncv, max_matvecs, k_bottom, block_size, criterion)
    ncv = default_ncv(k, n, block_size, which) if ncv is None else min(ncv, n)
    _warn_below_floor(tol, criterion, matvec.precision)
    max_matvecs = max_matvecs or max(20 * ncv, 300)
    # the measured residuals take k more vectors (one pass): kept inside the budget
    budget = max(max_matvecs - (k if true_residuals else 0), block_size)
    generator, v0 = _start_vector(rng, v0, matvec, block_size)
    shard, checkpoint = whole_or(hooks.shard, n), hooks.checkpoint
    if shard.is_split:
        matvec, v0 = ShardedMatvec(matvec, shard), shard.local(v0)
    basis = hooks.bases(0, shard.local_dim, ncv) if hooks.bases is not None else None
    kind = BlockLanczosProcess if block_size > 1 else LanczosProcess
    process = kind(matvec, v0, ncv, generator, basis=basis, shard=shard)
    start = time.perf_counter()
    t_ritz = 0.0
    num_restarts, finished, elapsed_before = 0, False, 0.0
    resumed = checkpoint.restore(process) if checkpoint is not None else None
    if resumed is not None:
        num_restarts, finished = int(resumed["num_restarts"]), bool(resumed["finished"])
        matvec.num_passes = int(resumed["num_passes"])
        matvec.num_vectors = int(resumed["num_vectors"])
        elapsed_before = float(resumed["elapsed"])
        logger.info("resumed after %d operator applications", process.num_vectors)
    bar = Progress("Lanczos", "pass", initial=process.num_steps, enabled=bool(progress))
    while not finished:
        process.step()
        t0 = time.perf_counter()
        theta, S, bounds, want, threshold, anorm = _ritz_state(process, k, which, k_bottom,
                                                               tol, criterion)
        done = bounds[want] <= threshold[want]
        t_ritz += time.perf_counter() - t0
        _update_bar(bar, theta[want], done)
        if callback is not None:
            callback(process, theta, bounds)
        converged = (len(want) == k and done.all()
                     and _complement_explored(process, which, threshold.min()))
        finished = converged or process.exhausted or process.num_vectors >= budget
        if not finished and process.full:
            room = process.capacity - (process.block_size - 1)  # the next block must fit
            keep = _keep_indices(theta, k, which, room, k_bottom, nconv=int(done.sum()))
            locked = np.intersect1d(keep, np.flatnonzero(
                bounds <= threshold * _lock_margin(process.block_size, k)))
            process.thick_restart(theta, S, keep, locked)
            num_restarts += 1
        if checkpoint is not None:
            checkpoint.commit(process, {"num_restarts": num_restarts,
                                        "num_passes": matvec.num_passes,
                                        "num_vectors": matvec.num_vectors,
                                        "elapsed": elapsed_before + time.perf_counter() - start},
                              finished)
    bar.close()
    theta, S, bounds, want, _, anorm = _ritz_state(process, k, which, k_bottom, tol, criterion)
    result = _assemble(process, theta, S, bounds, want, tol, anorm, criterion, which, matvec,
                       return_eigenvectors, true_residuals, num_restarts,
                       {"ritz": t_ritz, "total": elapsed_before + time.perf_counter() - start})
    if which == "BE":
        result = replace(result, k_bottom=k // 2 if k_bottom is None else int(k_bottom))
    _report_convergence(result, k, raise_on_unconverged)
    return result


def _ritz_state(process, k, which, k_bottom, tol, criterion) -> tuple:
    """Ritz pairs of the current ``T``, their bounds, the wanted ones and the thresholds."""
    theta, S = process.ritz()
    bounds = process.residual_bounds(S)
    anorm = max(process.anorm(), float(np.abs(theta).max()))
    want = wanted_indices(theta, k, which, k_bottom)
    return theta, S, bounds, want, _thresholds(theta, tol, anorm, criterion), anorm


def _thresholds(theta, tol, anorm, criterion) -> np.ndarray:
    """Per Ritz value, the residual each must reach: ``tol*||A||`` or ``tol*|theta_i|``."""
    if criterion == "norm":
        return np.full(len(theta), tol * anorm)
    return tol * np.abs(theta)


def _complement_explored(process, which, threshold) -> bool:
    """After a breakdown, whether the block in the complement has converged at the wanted end(s).

    Every Ritz pair of an invariant block is exact, yet larger (or smaller) eigenvalues may
    live in the complement, e.g. further copies of a multiple eigenvalue. The block grown
    from a random vector there must converge its own extreme Ritz value(s) before the
    wanted set can be trusted.
    """
    if process.block_start == 0:
        return True
    theta, bounds = process.current_block_ritz()
    if len(theta) == 0:
        return False
    ends = {"LA": [-1], "SA": [0], "BE": [0, -1], "LM": [0, -1]}[which]
    return all(bounds[i] <= threshold for i in ends)


def _start_vector(rng, v0, matvec, block_size=1):
    """The generator of the run (seeded from ``rng``) and the float64 start vector ``(n,)``
    (single-vector mode) or start block ``(n, block_size)``."""
    n, device = matvec.dim, matvec.device
    if rng is None:  # every rank must draw the same vectors: the operator's common entropy
        rng = matvec.draw_seed()
    seed_rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    generator = torch.Generator().manual_seed(int(seed_rng.integers(2**62)))
    if v0 is None:
        v0 = torch.randn(n, generator=generator, dtype=torch.float64)
    v0 = torch.as_tensor(np.asarray(v0) if not isinstance(v0, torch.Tensor) else v0)
    if v0.shape != (n,):
        raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected ({n},)")
    v0 = v0.to(torch.float64)
    if block_size > 1:
        rest = torch.randn(n, block_size - 1, generator=generator, dtype=torch.float64)
        v0 = torch.cat([v0[:, None], rest], dim=1)
    return generator, v0.to(device)


def _keep_indices(theta, k, which, capacity, k_bottom=None, nconv=0):
    """Ritz pairs kept at a thick restart: the wanted ``k`` plus some of the free room.

    Keeping neighbours of the wanted pairs preserves their convergence rate; keeping many
    leaves too few new directions per cycle (Wu and Simon 2000, Sec. 4; Stathopoulos, Saad
    and Wu 1998). The margin is the larger of a quarter of the free room and ARPACK's rule,
    ``min(nconv, room / 2)`` with ``nconv`` the wanted pairs already converged (Lehoucq,
    Sorensen and Yang, *ARPACK Users' Guide*, 1998, ``dsaup2``): fewer applications in
    total than either rule alone on the restarted runs of ``scripts/bench_restart.py``
    (docs/BENCHMARKS.md).
    """
    room = capacity - k
    extra = max(room // 4, min(nconv, room // 2), 1)
    keep_count = min(k + extra, capacity - 1)
    if which == "BE":  # widen both ends in proportion to what is wanted from each
        low = k // 2 if k_bottom is None else k_bottom
        k_bottom = low + (keep_count - k) * low // k
    return wanted_indices(theta, keep_count, which, k_bottom)


def _lock_margin(block_size: int, k: int) -> float:
    """Fraction of the tolerance a pair must meet to be locked at a restart.

    A locked pair's dropped coupling stays in the bound of every later Ritz vector that mixes
    with it, which happens within a multiple (or tightly clustered) eigenvalue: ``m`` locked
    copies can add up to ``m`` times their coupling. The single-vector mode locks at the
    tolerance itself (its history is measured in docs/BENCHMARKS.md); the block mode, whose
    blocks find copies together, locks at ``1 / (b k)`` of it, so that no sum of dropped
    couplings can keep a wanted pair from converging.
    """
    return 1.0 if block_size == 1 else 1.0 / (block_size * k)


def _converged(bounds, residuals, thresholds) -> np.ndarray:
    """A pair converged when its free bound meets its threshold and, where the residual was
    measured (``true_residuals``), the measured residual does too: the free bound knows
    nothing of the rounding in the products (float32), the measurement does."""
    done = bounds <= thresholds
    return done if residuals is None else done & (np.asarray(residuals) <= thresholds)


def _warn_below_floor(tol: float, criterion: str, precision) -> None:
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


def _gap_bounds(theta_all, idx, bounds):
    """``min(r, r^2 / gap)`` with ``gap`` the distance to the nearest other Ritz value."""
    out = np.empty(len(idx))
    for n_, i in enumerate(idx):
        others = np.delete(theta_all, i)
        gap = np.abs(others - theta_all[i]).min() if len(others) else np.inf
        r = bounds[i]
        out[n_] = min(r, r * r / gap) if gap > 0 else r
    return out


def _assemble(process, theta, S, bounds, want, tol, anorm, criterion, which, matvec,
              return_eigenvectors, true_residuals, num_restarts, timings):
    shard = process.shard
    vectors = process.ritz_vectors(S[:, want]) if (return_eigenvectors or true_residuals) else None
    residuals = None
    if true_residuals:
        AY = matvec(vectors.to(matvec.device)).to(vectors.device)
        R = AY - vectors * torch.as_tensor(theta[want], device=vectors.device)
        residuals = shard.sum((R * R).sum(dim=0)).sqrt().cpu().numpy()
    if return_eigenvectors:
        vectors = shard.gather(vectors)
    timings = {**process.timings, **timings}
    # the free bound knows nothing of rounding in the operator (float32 products): where the
    # true residual was measured, the error bound uses whichever residual is larger
    measured = bounds.copy()
    if residuals is not None:
        measured[want] = np.maximum(bounds[want], residuals)
    return EigshResult(
        eigenvalues=theta[want].copy(),
        eigenvectors=vectors.cpu().numpy() if return_eigenvectors else None,
        residual_bounds=bounds[want].copy(),
        error_bounds=_gap_bounds(theta, want, measured),
        residuals=residuals,
        converged=_converged(bounds[want], residuals,
                             _thresholds(theta, tol, anorm, criterion)[want]),
        num_matvecs=matvec.num_vectors,
        num_passes=matvec.num_passes,
        num_restarts=num_restarts,
        alphas=np.array(process.alphas),
        betas=np.array(process.betas[:-1]) if process.betas else np.array([]),
        timings=timings,
        which=which,
        tol=tol,
        anorm=anorm,
        orthogonality=process.basis.orthogonality(),
        block_size=process.block_size,
    )


def _report_convergence(result, k, raise_on_unconverged):
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


def _update_bar(bar, theta_wanted, done):
    bar.update(1, converged=f"{int(done.sum())}/{len(done)}",
               top=f"{theta_wanted[-1]:.4g}" if len(theta_wanted) else "-")
