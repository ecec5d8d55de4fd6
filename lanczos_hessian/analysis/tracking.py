"""Spectrum tracking during training: top eigenpairs every ``N`` steps, into one HDF5 file.

:class:`SpectrumTracker` is a training callback (``training.train(..., callback=tracker)``
calls it as ``tracker(step, model)`` after every step). Every ``every`` steps it computes, over
the whole data set, the ``k`` top eigenpairs of the Hessian (or GGN, or residual) with
:func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`, the loss and the full-dataset gradient, the
fraction of the gradient's squared norm in the span of the ``k`` eigenvectors (Gur-Ari et al.
2018; Fort and Ganguli 2019; :func:`~lanczos_hessian.analysis.geometry.gradient_overlap`), and
optionally a stochastic Lanczos quadrature (SLQ) density of the whole spectrum. Each
measurement is one committed record of ``<group>/steps`` (``SpectrumWriter.append_step``),
with the training step as the record axis, so a run killed mid-training leaves a file
readable up to its last measurement.

Record fields (fixed shapes; ``k`` eigenvalues ascending, as ``lanczos_eigsh`` returns them):

=====================  ========  ===========================================================
``step``               ()        training steps taken before the measurement
``loss``               ()        full-dataset loss at that point
``eigenvalues``        (k,)      Ritz values, ascending
``residual_bounds``    (k,)      ``|beta_j s_ji|``, the free residual bound of each pair
``converged``          (k,)      1 where the pair met ``tol``
``num_matvecs``        ()        operator applications to single vectors (this measurement)
``num_passes``         ()        data passes of the eigensolver
``warm``               ()        1 if started from the previous Ritz vectors
``cold_matvecs``       ()        with ``compare_cold``: the same solve from a random vector
                                 (-1 when not measured)
``grad_norm``          ()        ``||grad L||``
``overlap``            ()        ``||Q^T g||^2 / ||g||^2``, ``Q`` spanning the k eigenvectors
``overlap_parts``      (k,)      ``(y_i^T g)^2 / ||g||^2`` per eigenvector (same order)
``seconds``            ()        wall time of the measurement
``slq_nodes``          (P, m)    with ``slq_probes``: Gauss nodes per probe (NaN padding)
``slq_weights``        (P, m)    and their weights
=====================  ========  ===========================================================

Warm start
----------
``lanczos_eigsh`` grows one Krylov space from one start vector. With ``warm_start=True`` the
start vector after the first measurement is

    v0 = (y_1 + ... + y_k + u) / sqrt(k + 1),

the previous unit Ritz vectors ``y_i`` plus one random unit vector ``u`` with the same weight.
Lanczos convergence to an eigenvector ``x`` is governed by ``tan angle(v0, x)`` times a
Chebyshev factor of the gap (Kaniel-Paige-Saad bound): from a random ``v0`` in ``R^M``,
``cos^2 angle ~ 1/M``; when the top eigenspace has moved little since the previous
measurement, ``cos^2 angle ~ 1/(k+1)`` instead, which saves about
``log(sqrt(M/k)) / log(rate)`` steps per pair. The random part keeps every direction present,
so that an eigenvector that newly enters the top ``k`` (or a previous Ritz vector that was
wrong) is still found: without it, a ``v0`` exactly inside an invariant subspace would stall
the recurrence at a breakdown. The results are the same as from a cold start (both stop at
the same tolerance); ``compare_cold=True`` measures the saving by also solving from a random
vector at each measurement (and records its operator applications), doubling the cost.
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch

from ..linalg.eigsh import lanczos_eigsh
from .geometry import gradient_overlap, loss_and_gradient
from .trajectory import Tracking
from ..storage.hdf5 import SpectrumWriter, read_file
from ..storage.runstore import RunStore
from ..curvature.operators import OPERATORS

logger = logging.getLogger(__name__)

__all__ = ["SpectrumTracker", "read_tracking", "warm_start_vector"]


def warm_start_vector(eigenvectors, rng=None) -> np.ndarray:
    """``(y_1 + ... + y_k + u) / sqrt(k + 1)`` with ``u`` a random unit vector (module docstring).

    ``eigenvectors`` is ``(M, k)`` (unit columns, e.g. previous Ritz vectors). The result is
    normalized to unit length (the sum is not exactly of norm 1 when the vectors are not
    exactly orthonormal).
    """
    Y = np.asarray(eigenvectors, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    u = gen.standard_normal(Y.shape[0])
    u /= np.linalg.norm(u)
    Y = Y / np.maximum(np.linalg.norm(Y, axis=0), 1e-300)
    v0 = (Y.sum(axis=1) + u) / np.sqrt(Y.shape[1] + 1)
    return v0 / np.linalg.norm(v0)


class SpectrumTracker:
    """Top-``k`` curvature eigenpairs (and gradient overlap) every ``every`` training steps.

    Parameters
    ----------
    model, loss_fn, data
        As for :class:`~lanczos_hessian.curvature.operators.CurvatureOperator`; the model is the one
        being trained (its parameters are read at each measurement, never modified).
    k : int
        Number of eigenpairs (top ``k`` with ``which="LA"``).
    every : int
        Measure when ``(step + 1) % every == 0`` in the training callback; call
        :meth:`measure` yourself for other points (e.g. ``measure(0)`` before training).
    which : str
        ``lanczos_eigsh``'s ``which`` (default ``"LA"``, the top of the spectrum).
    tol : float
        Relative residual tolerance of each solve (``||H y - theta y|| <= tol ||H||``).
    operator : {"hessian", "ggn", "residual"}
    params, batch_size, reduction
        Passed to the operator (``params`` restricts to a block of parameters).
    analysis_dtype : torch dtype, optional
        Measure on a copy of the model in this dtype (e.g. ``torch.float64`` for a float32
        model, so that products are not limited by float32 rounding); default the model's.
    warm_start : bool
        Start each solve from the previous Ritz vectors (module docstring).
    compare_cold : bool
        Also solve from a random vector and record its ``num_matvecs`` (costs a second solve).
    overlap : bool
        Compute the full-dataset gradient and its overlap with the eigenspace (one pass).
    slq_probes, slq_steps : int
        With ``slq_probes > 0``, also an SLQ density (``slq_steps`` lockstep passes).
    writer : SpectrumWriter, optional
        Append the records to this open writer (not closed by the tracker); or
    path : str or Path, optional
        create this file (closed by :meth:`close`; ``overwrite`` and ``attrs`` as for
        :class:`SpectrumWriter`).
    group : str
        HDF5 group of the records (default ``"tracking"``).
    rng : int, optional
        Seed of the start vectors and probes (each measurement draws fresh ones from it).
    max_matvecs, ncv : int, optional
        Passed to ``lanczos_eigsh``.
    """

    def __init__(self, model, loss_fn, data, *, k: int = 10, every: int = 100,
                 which: str = "LA", tol: float = 1e-5, operator: str = "hessian", params=None,
                 batch_size=None, reduction=None, analysis_dtype=None, warm_start: bool = True,
                 compare_cold: bool = False, overlap: bool = True, slq_probes: int = 0,
                 slq_steps: int = 40, writer: SpectrumWriter | None = None, path=None,
                 overwrite: bool = False, attrs: dict | None = None, group: str = "tracking",
                 rng=0, max_matvecs=None, ncv=None):
        if operator not in OPERATORS:
            raise ValueError(f"unknown operator {operator!r}; choose one of {sorted(OPERATORS)}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if writer is not None and path is not None:
            raise ValueError("pass either writer= or path=, not both")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.k, self.every, self.which, self.tol = k, every, which, tol
        self.operator_kind = operator
        self.op_kwargs = {"params": params, "batch_size": batch_size, "reduction": reduction}
        self.analysis_dtype = analysis_dtype
        self.warm_start, self.compare_cold, self.overlap = warm_start, compare_cold, overlap
        self.slq_probes, self.slq_steps = slq_probes, slq_steps
        self.group, self.max_matvecs, self.ncv = group, max_matvecs, ncv
        self.rng = np.random.default_rng(rng)
        self.records: list = []
        self.last_result = None
        self._previous_vectors = None
        self._op = None
        self._owns_writer = path is not None
        settings = {"k": k, "every": every, "which": which, "tol": tol, "operator": operator,
                    "warm_start": warm_start, "compare_cold": compare_cold,
                    "overlap": overlap, "slq_probes": slq_probes, "slq_steps": slq_steps,
                    "params": "all" if params is None else list(params),
                    "analysis_dtype": str(analysis_dtype), "complete": False}
        # the disk-space check of the writer: the records' first chunk (64 rows) at least
        row_bytes = 8 * (3 * k + 12 + 2 * slq_probes * slq_steps)
        self.writer = (RunStore.create(path, attrs, overwrite=overwrite, space=64 * row_bytes)
                       if path is not None else writer)
        if self.writer is not None:
            self.writer.set_attrs(group, settings)
        self.settings = settings

    # ---- the operator at the current point -------------------------------------------------
    def _operator(self):
        kwargs = {n: v for n, v in self.op_kwargs.items() if v is not None}
        if self.analysis_dtype is None:
            if self._op is None:  # follows the model: parameters are read at each product
                self._op = OPERATORS[self.operator_kind](self.model, self.loss_fn, self.data,
                                                         **kwargs)
            return self._op
        copy_ = copy.deepcopy(self.model).to(self.analysis_dtype)
        return OPERATORS[self.operator_kind](copy_, self.loss_fn, self.data, **kwargs)

    def __call__(self, step: int, model=None):
        """Training callback: measure after steps ``every``, ``2 every``, ... (0-based ``step``)."""
        if model is not None and model is not self.model:
            raise ValueError("the tracker was built for another model")
        if (step + 1) % self.every == 0:
            self.measure(step + 1)

    def measure(self, step: int) -> dict:
        """Measure at the current parameters; append and return the record (module docstring)."""
        start = time.perf_counter()
        op = self._operator()
        dim = self.dim = op.shape[0]
        warm = self.warm_start and self._previous_vectors is not None
        v0 = warm_start_vector(self._previous_vectors, self.rng) if warm else None
        seed = int(self.rng.integers(2**31))
        solve = dict(k=self.k, which=self.which, tol=self.tol, rng=seed,
                     max_matvecs=self.max_matvecs, ncv=self.ncv)
        result = lanczos_eigsh(op, v0=v0, **solve)
        cold = -1
        if self.compare_cold:
            cold = lanczos_eigsh(op, return_eigenvectors=False,
                                 **{**solve, "rng": seed + 1}).num_matvecs
        self._previous_vectors = result.eigenvectors
        self.last_result = result
        row = {
            "step": int(step),
            "eigenvalues": result.eigenvalues,
            "residual_bounds": result.residual_bounds,
            "converged": result.converged.astype(np.int8),
            "num_matvecs": int(result.num_matvecs),
            "num_passes": int(result.num_passes),
            "warm": int(warm),
            "cold_matvecs": int(cold),
        }
        if self.overlap:
            loss, gradient = loss_and_gradient(op)
            total, parts = gradient_overlap(gradient, result.eigenvectors, per_vector=True)
            row.update(loss=loss, grad_norm=float(torch.linalg.vector_norm(gradient)),
                       overlap=total, overlap_parts=parts)
        else:
            from .geometry import full_loss

            row.update(loss=full_loss(op)[0], grad_norm=np.nan, overlap=np.nan,
                       overlap_parts=np.full(self.k, np.nan))
        if self.slq_probes > 0:
            from ..linalg.slq import slq

            bulk = slq(op, self.slq_probes, min(self.slq_steps, dim),
                       rng=int(self.rng.integers(2**31)))
            nodes = np.full((self.slq_probes, self.slq_steps), np.nan)
            weights = np.zeros((self.slq_probes, self.slq_steps))
            m = bulk.nodes.shape[1]
            nodes[:, :m], weights[:, :m] = bulk.nodes, bulk.weights
            row.update(slq_nodes=nodes, slq_weights=weights)
        row["seconds"] = time.perf_counter() - start
        if self.writer is not None:
            self.writer.append_step(self.group, row)
        self.records.append(row)
        logger.info("step %d: loss %.4g, top eigenvalue %.4g, %d matvecs%s", step, row["loss"],
                    result.eigenvalues.max(), result.num_matvecs,
                    f" (cold {cold})" if cold >= 0 else "")
        return row

    # ---- results ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        where = f", into {self.writer.path}" if getattr(self.writer, "path", None) else ""
        last = ""
        if self.records:
            last = (f"; last at step {self.records[-1]['step']}: top eigenvalue "
                    f"{np.max(self.records[-1]['eigenvalues']):.4g}")
        return (f"SpectrumTracker({self.operator_kind}, k={self.k} ({self.which}), every "
                f"{self.every} steps; {len(self.records)} measurements{last}{where})")

    def tracking(self) -> Tracking:
        """The records so far as a :class:`~.trajectory.Tracking` (``to_dataframe()``,
        ``plot()``), its attributes the tracker's settings and the operator size."""
        out = Tracking(self.as_arrays())
        out["attrs"] = {**self.settings, "dim": getattr(self, "dim", None)}
        return out

    def to_dataframe(self):
        """One row per measurement and eigenpair (:meth:`Tracking.to_dataframe`)."""
        return self.tracking().to_dataframe()

    def plot(self, path=None, lr: float | None = None):
        """Eigenvalues, trace and negative mass over the steps (:meth:`Tracking.plot`)."""
        return self.tracking().plot(path, lr=lr)

    def as_arrays(self) -> dict:
        """The records so far stacked along the step axis: ``{field: (num_records, ...)}``."""
        if not self.records:
            return {}
        return {key: np.stack([np.asarray(r[key]) for r in self.records])
                for key in self.records[0]}

    def close(self, complete: bool = True):
        """Mark the group complete (with its record count); close the file if we created it."""
        if self.writer is not None:
            if complete:
                self.writer.set_attrs(self.group, {"complete": True,
                                                   "num_records": len(self.records)})
            if self._owns_writer:
                self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(complete=exc_type is None)  # an interrupted run stays marked incomplete


def read_tracking(path, group: str = "tracking") -> Tracking:
    """The committed records of a tracking group: a :class:`~.trajectory.Tracking`, the dict
    ``{field: (num_records, ...)}`` plus ``attrs`` (the group's settings, with the file's
    ``num_params`` for traces), with ``to_dataframe()`` and ``plot()``."""
    content = read_file(path)
    record = content[group]
    out = Tracking(record.steps)
    out["attrs"] = {"num_params": content["attrs"].get("num_params"), **dict(record.attrs)}
    return out
