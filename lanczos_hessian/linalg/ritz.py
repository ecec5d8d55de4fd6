"""The eigensolver's policies, one function each: which Ritz pairs are wanted, when a pair has
converged, which pairs a thick restart keeps and locks, and the basis size.

Convergence criterion, for each wanted Ritz pair ``(theta_i, y_i)``::

    ||A y_i - theta_i y_i||  <=  tol * ||A||     (criterion "norm")

the left side from the free bound ``|beta_j S[j, i]|`` and ``||A||`` estimated by the largest
``|theta|`` seen (see :mod:`lanczos_hessian.linalg.eigsh`).

>>> import numpy as np
>>> wanted_indices(np.array([-2.0, 0.5, 1.0, 3.0]), 2, "BE").tolist()
[0, 3]
>>> default_ncv(5, 1000)
20
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLUSTER_ROOM", "wanted_indices", "default_ncv", "ritz_state", "thresholds",
           "complement_explored", "keep_indices", "lock_margin", "converged_mask",
           "gap_bounds"]


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


def ritz_state(process, k, which, k_bottom, tol, criterion) -> tuple:
    """Ritz pairs of the current ``T``, their bounds, the wanted ones and the thresholds."""
    theta, S = process.ritz()
    bounds = process.residual_bounds(S)
    anorm = max(process.anorm(), float(np.abs(theta).max()))
    want = wanted_indices(theta, k, which, k_bottom)
    return theta, S, bounds, want, thresholds(theta, tol, anorm, criterion), anorm


def thresholds(theta, tol, anorm, criterion) -> np.ndarray:
    """Per Ritz value, the residual each must reach: ``tol*||A||`` or ``tol*|theta_i|``."""
    if criterion == "norm":
        return np.full(len(theta), tol * anorm)
    return tol * np.abs(theta)


def complement_explored(process, which, threshold) -> bool:
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


def keep_indices(theta, k, which, capacity, k_bottom=None, nconv=0):
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


def lock_margin(block_size: int, k: int) -> float:
    """Fraction of the tolerance a pair must meet to be locked at a restart.

    A locked pair's dropped coupling stays in the bound of every later Ritz vector that mixes
    with it, which happens within a multiple (or tightly clustered) eigenvalue: ``m`` locked
    copies can add up to ``m`` times their coupling. The single-vector mode locks at the
    tolerance itself (its history is measured in docs/BENCHMARKS.md); the block mode, whose
    blocks find copies together, locks at ``1 / (b k)`` of it, so that no sum of dropped
    couplings can keep a wanted pair from converging.
    """
    return 1.0 if block_size == 1 else 1.0 / (block_size * k)


def converged_mask(bounds, residuals, thresholds) -> np.ndarray:
    """A pair converged when its free bound meets its threshold and, where the residual was
    measured (``true_residuals``), the measured residual does too: the free bound knows
    nothing of the rounding in the products (float32), the measurement does."""
    done = bounds <= thresholds
    return done if residuals is None else done & (np.asarray(residuals) <= thresholds)


def gap_bounds(theta_all, idx, bounds):
    """``min(r, r^2 / gap)`` with ``gap`` the distance to the nearest other Ritz value."""
    out = np.empty(len(idx))
    for n_, i in enumerate(idx):
        others = np.delete(theta_all, i)
        gap = np.abs(others - theta_all[i]).min() if len(others) else np.inf
        r = bounds[i]
        out[n_] = min(r, r * r / gap) if gap > 0 else r
    return out
