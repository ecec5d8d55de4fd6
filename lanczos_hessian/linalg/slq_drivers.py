"""The SLQ drivers: :func:`slq` (a fixed number of probes) and :func:`adaptive_slq` (probes
until a requested error), each its arguments' checks and then the loop of its solver state
(:mod:`~lanczos_hessian.linalg.slq_state`), :func:`run_state`. The mathematics is in
:mod:`lanczos_hessian.linalg.slq`, the public module that re-exports these.

>>> import numpy as np
>>> result = slq(np.diag([2.0, 2.0, 2.0]), num_probes=2, num_steps=3, rng=0)
>>> round(result.trace().value, 12)  # tr(2 I) = 6 whatever the probes
6.0
"""

from __future__ import annotations

import warnings

from .. import validate
from ..errors import NumericalWarning
from ..progress import Progress
from .hooks import NO_HOOKS, Hooks
from .linop import BlockMatvec, as_block_matvec
from .probes import PROBES
from .slq_result import SLQResult
from .slq_state import AdaptiveSLQState, SLQState

__all__ = ["adaptive_slq", "check_slq_arguments", "check_target", "run_state", "slq"]


def check_slq_arguments(num_probes, num_steps, probe) -> None:
    """The bad-input checks of :func:`slq`, before any pass over the data (or any file)."""
    validate.integer("num_probes", num_probes, low=1)
    validate.integer("num_steps", num_steps, low=1)
    validate.choice("probe", probe, PROBES)


def slq(op, num_probes: int = 10, num_steps: int = 80, *, probe: str = "rademacher",
        rng=None, reorthogonalize: bool = True, deflate=None, callback=None,
        progress: bool = False, dim: int | None = None, probes=None,
        basis_device=None, hooks: Hooks = NO_HOOKS) -> SLQResult:
    """Stochastic Lanczos quadrature with ``num_probes`` probes of ``num_steps`` steps each.

    Parameters
    ----------
    op : LinearOperator, CurvatureOperator, array, tensor, callable or BlockMatvec
        The symmetric ``n x n`` operator (see :mod:`lanczos_hessian.linalg.linop`); a
        :class:`~lanczos_hessian.linalg.linop.BlockMatvec` is used as is (its counters keep
        running, so a caller can count applications).
    num_probes : int
        ``P >= 1``; default 10. Every estimate reports its standard error over probes, so
        the choice can be checked afterwards; one Rademacher probe estimates ``tr(A)`` with
        variance ``2 (||A||_F^2 - sum_i A_ii^2)`` (Hutchinson, 1990), a relative error of
        about ``sqrt(2 / (n P))`` for a flat spectrum.
    num_steps : int
        Lanczos steps ``m >= 1`` per probe (= block applications); default 80. Measured in
        ``tests/linalg/test_slq.py`` on a uniform spectrum: ``W1 ~ 0.26 * range / m`` between the
        quadrature measure and the true one until probe noise dominates, so 80 steps resolve
        the measure to ~0.3% of its range.
    probe : {"rademacher", "gaussian"}
        Distribution of the raw probe entries (see the module docstring).
    rng : int, numpy Generator or None
        Seed of the probes (recorded as ``result.seed``).
    reorthogonalize : bool
        Full reorthogonalization (default) or the three-term recurrence (module docstring).
    deflate : (eigenvalues (k,), eigenvectors (n, k)[, residuals (k,)]) or EigshResult
        Run on the complement of these eigenvectors and add them as exact outliers.
    callback : callable, optional
        ``callback(step, state)`` after every step, ``state`` an :class:`SLQStep`.
    progress : bool
        Show progress over the lockstep steps (a bar on a terminal, status lines with the
        time left in a log file; :class:`~lanczos_hessian.progress.Progress`).
    dim : int, optional
        Size of a bare matvec callable.
    probes : array (n, num_probes), optional
        Explicit raw probes instead of random ones (projected and normalized here).
    basis_device : torch.device or str, optional
        Where the ``P`` stored bases (``P * num_steps * n`` float64 numbers) live; default
        the operator's device, ``"cpu"`` to keep them in host memory (same numbers).
    hooks : Hooks, optional
        Where the probes' bases live (``hooks.bases(p, rows, capacity)``, e.g. on disk; it
        overrides ``basis_device``), the checkpoint committed after every step (its
        ``restore`` returns the committed state with its ``step``), and the rows held when
        the vectors are split across ranks: each rank then stores ``1 / W`` of the ``P``
        bases, inner products are summed over ranks, and every rank ends with the same result
        (:mod:`lanczos_hessian.linalg.hooks`).

    Returns
    -------
    SLQResult

    Examples
    --------
    With as many steps as the dimension, each probe's Gauss rule is exact for ``x^2``, and a
    Rademacher probe's ``z^T D z`` is ``tr D`` for a diagonal ``D``: the second moment of
    ``diag(1, 2, 3, 4)`` is ``(1 + 4 + 9 + 16) / 4``:

    >>> import numpy as np
    >>> result = slq(np.diag([1.0, 2.0, 3.0, 4.0]), num_probes=3, num_steps=4, rng=0)
    >>> round(result.moments(2)[2].value, 10)
    7.5
    """
    check_slq_arguments(num_probes, num_steps, probe)
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    state = SLQState(matvec, num_probes, num_steps, probe=probe, rng=rng,
                     reorthogonalize=reorthogonalize, deflate=deflate, probes=probes,
                     basis_device=basis_device, bases=hooks.bases, shard=hooks.shard)
    return run_state(state, hooks.checkpoint, callback, lambda initial: Progress(
        "SLQ", "step", total=num_steps, initial=initial, enabled=bool(progress)))


def run_state(state, checkpoint, callback, make_bar):
    """The loop of every SLQ solver state: restore, then step, report and commit until it
    converges; its result. ``make_bar(steps already made)`` shows the progress."""
    if checkpoint is not None:
        checkpoint.restore(state)
    bar = make_bar(state.steps if isinstance(state, SLQState) else 0)
    while not state.converged:
        state.step()
        bar.update(1)
        if callback is not None:
            record = state.step_record()
            callback(record.step, record)
        if checkpoint is not None:
            checkpoint.commit(state, {}, state.converged)
    bar.close()
    return state.result()


def adaptive_slq(op, target_error: float, *, confidence: float = 0.95, statistic=None,
                 probes_per_round: int = 10, max_probes: int = 200, num_steps: int = 80,
                 probe: str = "rademacher", rng=None, reorthogonalize: bool = True,
                 deflate=None, progress: bool = False, dim: int | None = None,
                 basis_device=None, callback=None, hooks: Hooks = NO_HOOKS) -> SLQResult:
    """SLQ that adds probes until a statistic is known to a requested error.

    Rounds of ``probes_per_round`` probes run in lockstep (each round costs ``num_steps``
    passes over the data, whatever its width). After each round, with ``P`` probes so far,
    the ``statistic`` of all of them is evaluated, ``s = std(per-probe values) / sqrt(P)``,
    and the run stops once the two-sided ``confidence`` interval is narrow enough::

        t_{P-1}((1 + confidence) / 2) * s  <=  target_error,

    ``t_{P-1}`` the Student quantile (the normal one for large ``P``), or at ``max_probes``
    probes (a :class:`~lanczos_hessian.errors.NumericalWarning` then says how far it got).
    The statistic's error is then within ``target_error`` with probability about
    ``confidence``: the per-probe values of the trace are independent with finite variance
    (Hutchinson 1990; Avron and Toledo 2011 bound how many a relative accuracy needs), so
    their mean is asymptotically normal. Why an interval and not a bare standard error:
    ``|error| <= s`` holds in only about 68 % of runs, whatever ``P``; a requested error
    that a user can rely on needs the quantile, at about ``(1.96)^2 = 3.8`` times the probes
    for 95 %. Stopping at the first round that meets the rule biases ``s`` slightly low; on
    the demo network's Hessian the measured coverage of 95 % intervals was 94-95 %
    (``scripts/bench_ends.py``, docs/BENCHMARKS.md). ``confidence=0.6827`` asks for a
    standard error of ``target_error``.

    Parameters
    ----------
    target_error : float
        The half-width to reach (absolute, in the statistic's units); positive.
    confidence : float
        Coverage of the interval, in ``(0, 1)``; default 0.95.
    statistic : callable, optional
        ``statistic(result) -> Estimate`` of an :class:`SLQResult`; default its trace.
    probes_per_round : int
        Probes advanced together per round (at least 2: a standard error needs two).
    max_probes : int
        Probes at most.
    The other arguments are :func:`slq`'s; round ``r`` draws its probes from the seed
    ``SeedSequence(seed, spawn_key=(r,))`` (round 0 from ``seed`` itself, as :func:`slq`).
    ``callback(step, state)`` is called after every lockstep step of a round (``step``
    counts within the round), and ``hooks`` are :func:`slq`'s: a checkpoint commits the
    state after every step (:class:`~lanczos_hessian.linalg.slq_state.AdaptiveSLQState`).
    Returns one :class:`SLQResult` of every probe drawn, with ``target_error`` and
    ``confidence`` set.

    Examples
    --------
    For ``2 I`` every probe gives the trace exactly (no spread): one round suffices.

    >>> import numpy as np
    >>> result = adaptive_slq(2.0 * np.eye(20), 0.01, probes_per_round=2, num_steps=3, rng=0)
    >>> result.num_probes, round(result.trace().value, 10)
    (2, 40.0)
    """
    check_target(target_error, confidence)
    check_slq_arguments(probes_per_round, num_steps, probe)
    if probes_per_round < 2:
        raise ValueError(f"probes_per_round must be at least 2 (a standard error needs two "
                         f"probes), got {probes_per_round}")
    validate.integer("max_probes", max_probes, low=probes_per_round,
                     hint=f" (probes_per_round = {probes_per_round})")
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    state = AdaptiveSLQState(matvec, target_error, confidence=confidence, statistic=statistic,
                             probes_per_round=probes_per_round, max_probes=max_probes,
                             num_steps=num_steps, probe=probe, rng=rng,
                             reorthogonalize=reorthogonalize, deflate=deflate,
                             basis_device=basis_device, bases=hooks.bases, shard=hooks.shard)
    result = run_state(state, hooks.checkpoint, callback, lambda initial: Progress(
        "adaptive SLQ", "step", initial=initial, enabled=bool(progress)))
    if state.half_width > target_error:
        warnings.warn(f"adaptive SLQ stopped at max_probes={max_probes} with a "
                      f"{confidence:.0%} half-width of {state.half_width:.3g}, above the "
                      f"target {target_error:.3g}", NumericalWarning, stacklevel=2)
    return result


def check_target(target_error, confidence) -> None:
    """The bad-input checks of :func:`adaptive_slq`, before any pass over the data."""
    validate.positive_float("target_error", target_error)
    validate.probability("confidence", confidence)
