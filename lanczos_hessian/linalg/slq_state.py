"""SLQ's solver states: the lockstep probes of one run (:class:`SLQState`) and the rounds of
probes of an adaptive run (:class:`AdaptiveSLQState`), each advanced one block application per
``step()`` and saved and restored exactly (``state_dict`` / ``load_state_dict``).

:func:`~lanczos_hessian.linalg.slq.slq` and :func:`~lanczos_hessian.linalg.slq.adaptive_slq`
are loops over them; a checkpoint saves the state after every step. The saved keys of
:class:`SLQState` are those of the files written before the states existed (the lockstep
recurrences' arrays and ``step``), so those files resume.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from .eigsh_state import STATE_FORMAT, check_state_format
from .lockstep import LockstepLanczos
from .partition import ShardedMatvec, whole_or
from .probes import Projector, parse_deflate, resolve_seed, start_vectors
from .slq_result import SLQResult, SLQStep, count_duplicate_nodes, quadrature_rules

logger = logging.getLogger(__name__)

__all__ = ["SLQState", "AdaptiveSLQState", "merge_rounds", "interval_half_width",
           "round_seed"]


class SLQState:
    """``num_probes`` Lanczos recurrences advanced together, one block application per
    :meth:`step` (the arguments are :func:`~lanczos_hessian.linalg.slq.slq`'s, checked there;
    ``bases`` and ``shard`` the :class:`~lanczos_hessian.linalg.hooks.Hooks`').

    >>> import numpy as np
    >>> from lanczos_hessian.linalg.linop import as_block_matvec
    >>> state = SLQState(as_block_matvec(np.diag([1.0, 2.0, 3.0, 4.0])), 2, 4, rng=0)
    >>> while not state.converged:
    ...     state.step()
    >>> round(state.result().trace().value, 10)  # exact: 4 steps span the whole space
    10.0
    """

    def __init__(self, matvec, num_probes, num_steps, *, probe="rademacher", rng=None,
                 reorthogonalize=True, deflate=None, probes=None, basis_device=None,
                 bases=None, shard=None):
        self.start = time.perf_counter()
        n, device = matvec.dim, matvec.device
        self.num_probes, self.num_steps, self.dim = num_probes, num_steps, n
        self.probe = probe if probes is None else "given"
        self.reorthogonalize = reorthogonalize
        self.outliers, self.outlier_residuals, Y = parse_deflate(deflate, n, device)
        shard = whole_or(shard, n)
        project = Projector(Y, shard)
        U, self.seed = start_vectors(probes, num_probes, probe, rng, matvec, project, shard)
        if shard.is_split:
            matvec = ShardedMatvec(matvec, shard)
        self.matvec = matvec
        self.passes0, self.vectors0 = matvec.num_passes, matvec.num_vectors
        self.lanczos = LockstepLanczos(matvec, U, num_steps, reorthogonalize, project,
                                       basis_device, bases, shard)
        self.steps = 0
        self.was_active = self.lanczos.active.copy()

    @property
    def converged(self) -> bool:
        """Every probe made ``num_steps`` steps or stopped at an invariant subspace."""
        return not (self.steps < self.num_steps and self.lanczos.active.any())

    def step(self) -> None:
        """One Lanczos step of every running probe (one block application)."""
        self.was_active = self.lanczos.active.copy()
        self.lanczos.step()
        self.steps += 1

    def step_record(self) -> SLQStep:
        """What the last :meth:`step` did (copies), for a ``callback``."""
        lanczos, step = self.lanczos, self.steps
        alpha = np.where(self.was_active, lanczos.alphas[:, step - 1], np.nan)
        beta = np.where(self.was_active, lanczos.betas[:, step - 1], np.nan)
        alphas, betas = lanczos.snapshot(step)
        return SLQStep(step=step, alpha=alpha, beta=beta, alphas=alphas, betas=betas,
                       active=lanczos.active.copy(), num_nodes=lanczos.num_nodes.copy(),
                       num_passes=self.matvec.num_passes - self.passes0,
                       num_matvecs=self.matvec.num_vectors - self.vectors0,
                       elapsed_s=time.perf_counter() - self.start)

    def result(self) -> SLQResult:
        """The Gauss rules of every probe so far, with the cost of the run."""
        lanczos, n = self.lanczos, self.dim
        t0 = time.perf_counter()
        m = int(lanczos.num_nodes.max())
        alphas, betas = lanczos.alphas[:, :m].copy(), lanczos.betas[:, :m].copy()
        nodes, weights = quadrature_rules(alphas, betas, lanczos.num_nodes)
        t_quad = time.perf_counter() - t0
        result = SLQResult(
            nodes=nodes, weights=weights, alphas=alphas, betas=betas,
            num_nodes=lanczos.num_nodes.copy(), dim=n, num_probes=self.num_probes,
            num_steps=self.num_steps, num_passes=self.matvec.num_passes - self.passes0,
            num_matvecs=self.matvec.num_vectors - self.vectors0, outliers=self.outliers,
            outlier_residuals=self.outlier_residuals,
            bulk_mass=(n - self.outliers.size) / n, probe=self.probe, seed=self.seed,
            reorthogonalized=self.reorthogonalize,
            timings={**lanczos.timings, "quadrature": t_quad,
                     "total": time.perf_counter() - self.start},
            orthogonality=max((b.orthogonality() for b in lanczos.bases()),
                              default=float("nan")),
            duplicate_nodes=count_duplicate_nodes(nodes, alphas, betas),
        )
        logger.info("SLQ: %d probes x %d steps on n=%d (%d deflated): %d passes, %d vectors, "
                    "%.3g s", self.num_probes, m, n, self.outliers.size, result.num_passes,
                    result.num_matvecs, result.timings["total"])
        return result

    # ---- saving and restoring -------------------------------------------------------------
    def bases(self) -> list:
        return self.lanczos.bases()

    def state_dict(self) -> tuple:
        """``(small, vectors)``: the recurrences' arrays with the step count."""
        small, vectors = self.lanczos.state_dict()
        small.update({"step": self.steps, "state_format": STATE_FORMAT})
        return small, vectors

    def load_state_dict(self, small: dict, vectors) -> None:
        """Restore :meth:`state_dict`'s output; the restored steps count as this run's
        passes and vectors."""
        check_state_format(small, "SLQ")
        self.lanczos.load_state_dict(small, np.asarray(vectors)[:2 * self.num_probes])
        self.steps = int(small["step"])
        self.passes0 -= self.steps
        self.vectors0 -= int(self.lanczos.num_nodes.sum())


def round_seed(seed: int, index: int) -> int:
    """The probes' seed of round ``index`` of an adaptive run: ``seed`` itself for the
    first, ``SeedSequence(seed, spawn_key=(index,))`` after."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0])


#: The per-round numbers an :class:`AdaptiveSLQState` saves of its finished rounds.
_ROUND_FIELDS = ("num_probes", "num_passes", "num_matvecs", "orthogonality",
                 "duplicate_nodes")


class AdaptiveSLQState:
    """Rounds of ``probes_per_round`` lockstep probes until the statistic's ``confidence``
    interval is at most ``target_error`` wide on each side, or ``max_probes`` (the rule of
    :func:`~lanczos_hessian.linalg.slq.adaptive_slq`); one block application per :meth:`step`.

    Its saved state is the running round's (:class:`SLQState`) with the finished rounds'
    tridiagonals and counts; the running round reuses the bases ``0 .. probes_per_round - 1``
    of the ones before it (a finished round needs no basis).
    """

    def __init__(self, matvec, target_error, *, confidence=0.95, statistic=None,
                 probes_per_round=10, max_probes=200, num_steps=80, probe="rademacher",
                 rng=None, reorthogonalize=True, deflate=None, basis_device=None, bases=None,
                 shard=None):
        self.matvec, self.target_error, self.confidence = matvec, target_error, confidence
        self.statistic = statistic or (lambda result: result.trace())
        self.probes_per_round, self.max_probes = probes_per_round, max_probes
        self.options = dict(num_steps=num_steps, probe=probe,
                            reorthogonalize=reorthogonalize, deflate=deflate,
                            basis_device=basis_device, bases=bases, shard=shard)
        self.seed = resolve_seed(rng, matvec)
        self.rounds: list = []  # the finished rounds' results
        self.merged, self.half_width, self.finished = None, float("inf"), False
        self.current = self._new_round()

    # ---- the loop ------------------------------------------------------------------------
    @property
    def num_probes(self) -> int:
        return sum(r.num_probes for r in self.rounds)

    @property
    def converged(self) -> bool:
        """The interval is narrow enough, or ``max_probes`` probes were drawn."""
        return self.finished

    def _new_round(self) -> SLQState:
        width = min(self.probes_per_round, self.max_probes - self.num_probes)
        return SLQState(self.matvec, max(width, 2), rng=round_seed(self.seed, len(self.rounds)),
                        **self.options)

    def step(self) -> None:
        """One step of the running round (a new round first when the last one finished);
        when the round finishes, the rule is evaluated on every probe so far."""
        if self.current is None or self.current.converged:
            self.current = self._new_round()
        self.current.step()
        if self.current.converged:
            self.rounds.append(self.current.result())
            self._evaluate()

    def _evaluate(self) -> None:
        self.merged = merge_rounds(self.rounds, self.seed, self.target_error, self.confidence)
        self.half_width = interval_half_width(self.statistic(self.merged), self.confidence)
        logger.info("adaptive SLQ: %d probes, %.0f%% half-width %.3g (target %.3g)",
                    self.merged.num_probes, 100 * self.confidence, self.half_width,
                    self.target_error)
        self.finished = (self.half_width <= self.target_error
                         or self.num_probes >= self.max_probes)

    def step_record(self) -> SLQStep:
        return self.current.step_record()

    def result(self) -> SLQResult:
        """Every probe drawn, merged into one :class:`SLQResult` with ``target_error`` and
        ``confidence`` set."""
        return self.merged

    # ---- saving and restoring -------------------------------------------------------------
    def bases(self) -> list:
        return [] if self.current is None else self.current.bases()

    def state_dict(self) -> tuple:
        """The running round's state, with the finished rounds' ``alphas``/``betas``
        (``(probes so far, num_steps)``, NaN padded), ``num_nodes`` and per-round counts."""
        small, vectors = self.current.state_dict()
        steps = self.options["num_steps"]
        alphas = np.full((self.num_probes, steps), np.nan)
        betas = np.full((self.num_probes, steps), np.nan)
        row = 0
        for r in self.rounds:
            alphas[row:row + r.num_probes, :r.alphas.shape[1]] = r.alphas
            betas[row:row + r.num_probes, :r.betas.shape[1]] = r.betas
            row += r.num_probes
        small.update({"rounds_alphas": alphas, "rounds_betas": betas,
                      "rounds_num_nodes": np.concatenate(
                          [r.num_nodes for r in self.rounds] or [np.zeros(0, np.int64)]),
                      "rounds_seconds": np.array([r.timings.get("total", 0.0)
                                                  for r in self.rounds]),
                      "round_index": len(self.rounds) - (1 if self.current.converged else 0)})
        for name in _ROUND_FIELDS:
            small[f"rounds_{name}"] = np.array([getattr(r, name) for r in self.rounds])
        return small, vectors

    def load_state_dict(self, small: dict, vectors) -> None:
        """Rebuild the finished rounds from their tridiagonals, then the running round (or,
        when the saved state ends a round, leave the next round to :meth:`step`)."""
        check_state_format(small, "adaptive SLQ")
        template, self.rounds, row = self.current, [], 0
        for i, width in enumerate(np.asarray(small["rounds_num_probes"], dtype=int)):
            self.rounds.append(self._restored_round(template, small, i, row, width))
            row += width
        if self.rounds:
            self._evaluate()
        if int(small["round_index"]) < len(self.rounds):
            self.current = None  # that round is finished
        else:
            self.current = self._new_round()
            self.current.load_state_dict(small, vectors)

    def _restored_round(self, template, small, i, row, width) -> SLQResult:
        """The :class:`SLQResult` of finished round ``i`` (rows ``row .. row + width``)."""
        num_nodes = np.asarray(small["rounds_num_nodes"][row:row + width], dtype=np.int64)
        m = int(num_nodes.max())
        alphas = np.array(small["rounds_alphas"][row:row + width, :m])
        betas = np.array(small["rounds_betas"][row:row + width, :m])
        nodes, weights = quadrature_rules(alphas, betas, num_nodes)
        fields = {name: small[f"rounds_{name}"][i] for name in _ROUND_FIELDS}
        return SLQResult(
            nodes=nodes, weights=weights, alphas=alphas, betas=betas, num_nodes=num_nodes,
            dim=template.dim, num_probes=int(fields["num_probes"]),
            num_steps=template.num_steps, num_passes=int(fields["num_passes"]),
            num_matvecs=int(fields["num_matvecs"]), outliers=template.outliers,
            outlier_residuals=template.outlier_residuals,
            bulk_mass=(template.dim - template.outliers.size) / template.dim,
            probe=template.probe, seed=round_seed(self.seed, i),
            reorthogonalized=template.reorthogonalize,
            timings={"total": float(small["rounds_seconds"][i])},
            orthogonality=float(fields["orthogonality"]),
            duplicate_nodes=int(fields["duplicate_nodes"]))


def merge_rounds(rounds: list, seed: int, target_error: float, confidence: float) -> SLQResult:
    """One :class:`SLQResult` of the probes of several rounds (rows padded to one width)."""
    m = max(r.nodes.shape[1] for r in rounds)

    def stack(name, fill):
        rows = []
        for r in rounds:
            a = getattr(r, name)
            pad = np.full((a.shape[0], m - a.shape[1]), fill)
            rows.append(np.concatenate([a, pad], axis=1))
        return np.concatenate(rows, axis=0)

    first = rounds[0]
    timings = {}
    for r in rounds:
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    return replace(
        first, nodes=stack("nodes", np.nan), weights=stack("weights", 0.0),
        alphas=stack("alphas", np.nan), betas=stack("betas", np.nan),
        num_nodes=np.concatenate([r.num_nodes for r in rounds]),
        num_probes=sum(r.num_probes for r in rounds),
        num_passes=sum(r.num_passes for r in rounds),
        num_matvecs=sum(r.num_matvecs for r in rounds), seed=seed, timings=timings,
        orthogonality=max(r.orthogonality for r in rounds),
        duplicate_nodes=sum(r.duplicate_nodes for r in rounds), target_error=target_error,
        confidence=confidence)


def interval_half_width(estimate, confidence: float) -> float:
    """``t_{P-1}((1 + confidence) / 2) * stderr``: the half-width of the two-sided Student
    interval of a mean over ``P`` probes (infinite with fewer than two)."""
    from scipy.stats import t as student_t

    P = len(estimate.per_probe)
    if P < 2 or not np.isfinite(estimate.stderr):
        return float("inf")
    return float(student_t.ppf(0.5 + confidence / 2, P - 1) * estimate.stderr)
