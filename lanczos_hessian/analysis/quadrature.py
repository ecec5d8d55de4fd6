"""SLQ quadrature rules as a file holds them (:class:`Quadrature`, with the statistics of
:class:`~lanczos_hessian.linalg.density.QuadratureStatistics`), and the rules of an ``slq``
group read back: stored when the run finished, else rebuilt from its committed per-step
records (Golub-Welsch on the committed tridiagonals)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SpectrumFileError
from ..linalg import density


@dataclass(repr=False)
class Quadrature(density.QuadratureStatistics):
    """SLQ quadrature rules as saved: nodes/weights ``(P, m)``, outliers, ``dim``; the
    statistics of :class:`~lanczos_hessian.linalg.density.QuadratureStatistics`."""

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    outliers: np.ndarray
    num_steps_done: int = 0
    complete: bool = True
    attrs: dict = field(default_factory=dict)

    @classmethod
    def from_group(cls, group) -> "Quadrature":
        """The rules of a complete ``slq`` group of an open HDF5 file."""
        outliers = group["outliers"][()] if "outliers" in group else np.zeros(0)
        return cls(group["nodes"][()], group["weights"][()], int(group.attrs["dim"]),
                   outliers, int(group["nodes"].shape[1]), True, dict(group.attrs))

    @classmethod
    def exact(cls, eigenvalues) -> "Quadrature":
        """The exact spectrum as one rule of ``n`` nodes of weight ``1/n`` (its fractions'
        brackets are then one eigenvalue wide)."""
        values = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))
        return cls(values[None, :], np.full((1, values.size), 1.0 / values.size), values.size,
                   np.zeros(0), values.size, True, {"exact": True})

    def __repr__(self) -> str:
        state = "" if self.complete else f", CUT OFF after {self.num_steps_done} steps"
        return (f"Quadrature({self.nodes.shape[0]} probes x {self.nodes.shape[1]} nodes, "
                f"dim {self.dim}, {len(self.outliers)} deflated outliers{state})")


def quadrature_of_record(record, root_attrs, path, spectrum) -> Quadrature | None:
    """The rules of the ``slq`` record (:func:`~lanczos_hessian.storage.hdf5.read_group`) of
    the file at ``path``: stored by a finished run, else rebuilt from the committed steps;
    None before the first commit. What is not complete is said in ``spectrum.progress``
    (a deflated run's outliers are ``spectrum.eigenvalues``, loaded first)."""
    attrs = dict(record.attrs)
    dim = int(attrs.get("dim") or root_attrs.get("num_params") or 0)
    if "nodes" in record and attrs.get("complete", True):
        missing = [key for key in ("weights",) if key not in record]
        if missing:
            raise SpectrumFileError(f"{path} is damaged or incomplete: its slq group has nodes "
                                    f"but no {', '.join(missing)}")
        return Quadrature(record["nodes"], record["weights"], dim,
                          np.asarray(record.get("outliers", np.zeros(0))),
                          int(attrs.get("num_steps", record["nodes"].shape[1])), True, attrs)
    # a cut-off run: rebuild the rules from the committed per-step coefficients
    steps = record.steps
    if not steps or len(steps.get("alpha", ())) == 0:
        waiting = ""
        if (attrs.get("k_top") or attrs.get("k_bottom")) and not spectrum.eigs_complete:
            waiting = " (its deflation phase is running: see the eigs line)"
        elif attrs.get("k_top") or attrs.get("k_bottom"):
            waiting = " (its deflation phase is complete)"
        spectrum.progress.append(f"slq: no step committed yet{waiting}")
        return None
    spectrum.progress.append(f"slq: CUT OFF, {len(steps['alpha'])} lockstep steps committed")
    from ..linalg.slq import quadrature_rules

    alphas, betas = steps["alpha"].T, steps["beta"].T  # (P, steps), NaN once a probe stopped
    if "round" in steps:  # adaptive SLQ: every round's probes are probes of their own
        alphas, betas = rounds_as_probes(steps)
    num_nodes = np.isfinite(alphas).sum(axis=1)
    nodes, weights = quadrature_rules(np.nan_to_num(alphas), np.nan_to_num(betas), num_nodes)
    outliers = np.zeros(0)
    if attrs.get("k_top") or attrs.get("k_bottom"):
        if not spectrum.eigs_complete:
            raise SpectrumFileError(f"{path}: deflated SLQ without its complete outliers")
        outliers = spectrum.eigenvalues  # the deflation run finished before SLQ started
    return Quadrature(nodes, weights, dim, outliers, int(alphas.shape[1]), False, attrs)


def rounds_as_probes(steps) -> tuple:
    """``(alphas, betas)`` ``(probes, steps)`` of an adaptive run's records: the rows of each
    round (``steps/round``) are its probes' steps; columns past a round's width (NaN
    padding) are no probe."""
    rounds = np.asarray(steps["round"])
    blocks = [(steps["alpha"][rounds == r].T, steps["beta"][rounds == r].T)
              for r in np.unique(rounds)]
    width = max(a.shape[1] for a, _ in blocks)

    def stacked(index):
        return np.concatenate([np.pad(block[index], ((0, 0), (0, width - block[index].shape[1])),
                                      constant_values=np.nan) for block in blocks])

    alphas, betas = stacked(0), stacked(1)
    probes = np.isfinite(alphas).any(axis=1)
    return alphas[probes], betas[probes]
