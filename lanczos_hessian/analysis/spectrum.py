"""Offline analysis of saved spectra: no model, no data, no GPU.

``read_spectrum(path)`` loads a file written by any job (complete or cut off) into a
:class:`Spectrum`: the eigenpairs with their residuals, the SLQ quadrature rules (rebuilt
from the committed per-step records when the run did not finish), and the provenance. Its
methods give what the seed papers plot and tabulate: the ordered top eigenvalues, outlier
counts by three rules, the bulk density at any kernel width, trace and moments with standard
errors, and the mass below zero and near zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..linalg import density
from ..errors import SpectrumFileError
from ..storage.hdf5 import read_file
from .outliers import count_outliers
from .report import eigen_table


@dataclass
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


@dataclass
class Spectrum:
    """Everything a spectrum file holds, in memory.

    Attributes
    ----------
    path : Path
    attrs : dict
        Root provenance (package and torch version, operator, model size, ...).
    eigenvalues, residual_bounds, residuals, converged : ndarray or None
        From the ``eigs`` group (the last committed Ritz values if the run was cut off),
        ascending by eigenvalue as in :class:`~lanczos_hessian.linalg.eigsh.EigshResult`:
        ``residual_bounds`` are the Ritz bounds ``|beta_m s_mi|`` (exact arithmetic),
        ``residuals`` the measured ``||A y - theta y||`` (None unless measured).
    eigs_complete : bool
    quadrature : Quadrature or None
        The SLQ rules (``slq`` group).
    dense_eigenvalues : ndarray or None
        The exact spectrum, when the job computed it.
    progress : list of str
        One line per computation of the file that is not complete: what it has committed
        (a run killed in any phase, or still running).
    """

    path: Path
    attrs: dict
    eigenvalues: np.ndarray | None = None
    residual_bounds: np.ndarray | None = None
    residuals: np.ndarray | None = None
    converged: np.ndarray | None = None
    eigs_complete: bool = False
    eigs_attrs: dict = field(default_factory=dict)
    quadrature: Quadrature | None = None
    dense_eigenvalues: np.ndarray | None = None
    progress: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.attrs.get("label") or self.path.stem

    def top_eigenvalues(self) -> np.ndarray:
        """Positive-end eigenvalues in rank order (rank 1, the largest, first: the order of
        the seed papers' plots and of :func:`count_outliers`), from ``eigs`` or else the dense
        spectrum. The stored arrays themselves are ascending."""
        if self.eigenvalues is not None and len(self.eigenvalues):
            values = self.eigenvalues
            if self.eigs_attrs.get("which") == "BE":
                k_bottom = int(self.eigs_attrs.get("k_bottom") or len(values) // 2)
                values = np.sort(values)[k_bottom:]
            return np.sort(values[np.isfinite(values)])[::-1]
        if self.dense_eigenvalues is not None:
            return np.sort(self.dense_eigenvalues)[::-1]
        return np.zeros(0)

    def bottom_eigenvalues(self) -> np.ndarray:
        """Negative-end eigenvalues, ascending: the bottom of a ``BE`` or ``SA`` run, or of the
        dense spectrum (its 20 smallest); empty for a top-only run."""
        which = self.eigs_attrs.get("which")
        if self.eigenvalues is not None and len(self.eigenvalues) and which in ("BE", "SA"):
            values = np.sort(self.eigenvalues[np.isfinite(self.eigenvalues)])
            if which == "BE":
                values = values[:int(self.eigs_attrs.get("k_bottom") or len(values) // 2)]
            return values
        if self.dense_eigenvalues is not None:
            return np.sort(self.dense_eigenvalues)[:20]
        return np.zeros(0)

    @classmethod
    def from_results(cls, eigs=None, slq=None, label: str = "run") -> "Spectrum":
        """A spectrum of results in memory (an ``EigshResult`` and/or an ``SLQResult``), so that
        :func:`~lanczos_hessian.analysis.plotting.plot_spectra` and :func:`summarize` need no
        file."""
        spectrum = cls(Path(label), {"label": label})
        if eigs is not None:
            spectrum.eigenvalues = np.asarray(eigs.eigenvalues)
            spectrum.residual_bounds = np.asarray(eigs.residual_bounds)
            spectrum.residuals = eigs.residuals
            spectrum.converged = np.asarray(eigs.converged)
            spectrum.eigs_complete = True
            spectrum.eigs_attrs = {"which": eigs.which, "k_bottom": eigs.k_bottom}
        if slq is not None:
            spectrum.quadrature = Quadrature(slq.nodes, slq.weights, slq.dim, slq.outliers,
                                             slq.num_steps, True, {})
        return spectrum

    def to_dataframe(self, what: str = "eigs", per: str = "node"):
        """A ``pandas.DataFrame`` (pandas optional: an ImportError naming ``pip install
        pandas`` without it). ``what="eigs"``: one row per eigenpair in array order
        (ascending, index = array index), columns ``eigenvalue``, ``ritz_bound``,
        ``measured_residual`` (NaN when not measured), ``converged``; ``what="slq"``: the
        quadrature rules, ``per="node"`` or ``"probe"``
        (:meth:`~lanczos_hessian.linalg.density.QuadratureStatistics.to_dataframe`)."""
        pandas = density.pandas_module("Spectrum.to_dataframe")
        if what == "slq":
            if self.quadrature is None:
                raise ValueError(f"{self.path} holds no SLQ rules (no slq group committed)")
            return self.quadrature.to_dataframe(per)
        if what != "eigs":
            raise ValueError(f"what must be 'eigs' or 'slq', got {what!r}")
        values = np.zeros(0) if self.eigenvalues is None else np.asarray(self.eigenvalues)
        k = len(values)

        def column(array, fill):
            return np.full(k, fill) if array is None else np.asarray(array)

        return pandas.DataFrame({"eigenvalue": values,
                                 "ritz_bound": column(self.residual_bounds, np.nan),
                                 "measured_residual": column(self.residuals, np.nan),
                                 "converged": column(self.converged, False).astype(bool)})

    def outlier_counts(self, num: int | None = None):
        """Outlier counts by gap, ratio and elbow (:func:`count_outliers`) of the top values."""
        top = self.top_eigenvalues()
        if num is not None:
            top = top[:num]
        return count_outliers(top) if len(top) >= 2 else None


def read_spectrum(path) -> Spectrum:
    """Load a spectrum file (see :mod:`lanczos_hessian.storage.hdf5`), complete or cut off."""
    path = Path(path)
    content = read_file(path)
    spectrum = Spectrum(path=path, attrs=content["attrs"])
    try:
        if "eigs" in content:
            _load_eigs(spectrum, content["eigs"], deflation="slq" in content)
        if "slq" in content:
            spectrum.quadrature = _load_quadrature(content["slq"], content["attrs"], path,
                                                   spectrum)
        if "dense" in content and "eigenvalues" in content["dense"]:
            spectrum.dense_eigenvalues = content["dense"]["eigenvalues"]
    except SpectrumFileError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise SpectrumFileError(f"{path} is damaged or incomplete: reading its results failed "
                                f"({type(exc).__name__}: {exc})") from exc
    if set(content) == {"attrs"}:  # killed between creating the file and declaring a run
        spectrum.progress.append("no computation recorded yet (the file was just created)")
    return spectrum


def _committed(record) -> int:
    """Committed step records of a group (0 before the first)."""
    return len(next(iter(record.steps.values()), ())) if record.steps else 0


def _load_eigs(spectrum, record, deflation=False):
    spectrum.eigs_attrs = dict(record.attrs)
    spectrum.eigs_complete = bool(record.attrs.get("complete", False))
    steps = _committed(record)
    if record.attrs.get("complete") is False:  # declared by a run that has not finished
        what = "eigs (the SLQ run's deflation)" if deflation else "eigs"
        spectrum.progress.append(
            f"{what}: CUT OFF, {steps} operator applications committed" if steps else
            f"{what}: no step committed yet")
    if "eigenvalues" in record and (spectrum.eigs_complete or not steps):
        spectrum.eigenvalues = record["eigenvalues"]
        spectrum.residual_bounds = record.get("residual_bounds")
        spectrum.residuals = record.get("residuals")
        converged = record.get("converged")
        spectrum.converged = None if converged is None else converged.astype(bool)
    elif record.steps.get("ritz_values") is not None and len(record.steps["ritz_values"]):
        last = record.steps["ritz_values"][-1]  # a cut-off run: its last committed Ritz values
        keep = np.isfinite(last)
        spectrum.eigenvalues = last[keep]
        spectrum.residual_bounds = record.steps["residual_bounds"][-1][keep]


def _load_quadrature(record, root_attrs, path, spectrum) -> Quadrature:
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
        alphas, betas = _rounds_as_probes(steps)
    num_nodes = np.isfinite(alphas).sum(axis=1)
    nodes, weights = quadrature_rules(np.nan_to_num(alphas), np.nan_to_num(betas), num_nodes)
    outliers = np.zeros(0)
    if attrs.get("k_top") or attrs.get("k_bottom"):
        if not spectrum.eigs_complete:
            raise SpectrumFileError(f"{path}: deflated SLQ without its complete outliers")
        outliers = spectrum.eigenvalues  # the deflation run finished before SLQ started
    return Quadrature(nodes, weights, dim, outliers, int(alphas.shape[1]), False, attrs)


def _rounds_as_probes(steps) -> tuple:
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


def summarize(spectrum: Spectrum, num_top: int = 20) -> str:
    """A plain-text summary: top eigenvalues with residuals, outlier counts, SLQ statistics."""
    lines = [f"== {spectrum.path}",
             f"   {spectrum.attrs.get('operator', '?')} of {spectrum.attrs.get('num_params', '?')} "
             f"parameters, {spectrum.attrs.get('num_samples', '?')} samples, loss "
             f"{spectrum.attrs.get('loss', '?')} ({spectrum.attrs.get('reduction', '?')}), "
             f"lanczos_hessian {spectrum.attrs.get('package_version', '?')}, torch "
             f"{spectrum.attrs.get('torch_version', '?')}"]
    lines += [f"   in progress or cut off: {line}" for line in spectrum.progress]
    lines += _eigs_lines(spectrum, num_top)
    if spectrum.quadrature is not None:
        lines += _slq_lines(spectrum, spectrum.quadrature)
    return "\n".join(lines)


def _eigs_lines(spectrum, num_top):
    """The eigenpair table (ascending, array index first: :func:`~.report.eigen_table`) of the
    top ``num_top`` pairs and the 5 smallest (of a ``BE`` run: of its bottom end), and the
    outlier counts of the top."""
    if spectrum.eigenvalues is None:
        return []
    state = "complete" if spectrum.eigs_complete else "CUT OFF: last committed Ritz values"
    order = np.argsort(spectrum.eigenvalues, kind="stable")
    num_bottom = 5
    if spectrum.eigs_attrs.get("which") == "BE":
        num_bottom = min(5, int(spectrum.eigs_attrs.get("k_bottom") or len(order) // 2))
    shown = list(order[:num_bottom]) + list(order[-num_top:] if num_top > 0 else [])
    table = eigen_table(spectrum.eigenvalues, spectrum.residual_bounds,
                        residuals=spectrum.residuals, converged=spectrum.converged,
                        rows=shown)
    lines = [f"   eigenpairs ({spectrum.eigs_attrs.get('which', '?')}, {state}):"]
    lines += ["     " + line for line in table.splitlines()]
    counts = spectrum.outlier_counts(num_top)
    if counts is not None:
        lines.append(f"   outliers among the top {min(num_top, len(counts.values))}: "
                     f"gap {counts.gap}, ratio {counts.ratio}, elbow {counts.elbow}, "
                     f"below-top {counts.below_top}"
                     + (" (the rules disagree: see analysis/outliers.py)" if counts.disagree()
                        else ""))
    return lines


#: Thresholds of the negative (and near-zero) mass, as fractions of ``lambda_max``.
MASS_THRESHOLDS = (1e-2, 1e-3, 1e-4)


def _slq_lines(spectrum, q: Quadrature):
    """Trace, second moment, and the spectral mass at several thresholds.

    The negative mass of a trained network's Hessian sits mostly within ``1e-3 lambda_max``
    of zero, so one threshold hides it or drowns it: at ``1e-2 lambda_max`` a bulk whose
    negative part reaches only ``-1e-3 lambda_max`` reads 0, while below ``-1e-4
    lambda_max`` the node spacing of an ``m``-node Gauss rule (about range / m) decides
    which side of the threshold the atom at zero falls. The table therefore gives the mass
    below ``-t lambda_max`` and within ``t lambda_max`` of zero for each ``t`` in
    :data:`MASS_THRESHOLDS`, with the fraction below 0 and the bottom eigenvalue (from the
    eigensolver when it computed the bottom end, else the smallest quadrature node), so a
    reader sees where the mass lies rather than one count at one arbitrary cut.
    ``lambda_max`` is the largest eigenvalue known (eigensolver, outliers or nodes); for a
    spectrum with no positive part the spectral radius stands in.
    """
    state = "complete" if q.complete else f"CUT OFF after {q.num_steps_done} committed steps"
    trace = q.trace()
    second = q.moments(2, normalized=False)[2]
    lo, hi = np.nanmin(q.nodes), np.nanmax(q.nodes)
    scale, scale_name = _lambda_max(spectrum, q, lo, hi)
    lines = [
        f"   SLQ ({q.nodes.shape[0]} probes x {q.nodes.shape[1]} nodes, {len(q.outliers)} "
        f"deflated outliers, {state}):",
        f"     trace          {trace.value: .6e} +- {trace.stderr:.2e}",
        f"     tr(H^2)        {second.value: .6e} +- {second.stderr:.2e}",
        f"     support        [{lo:.4e}, {hi:.4e}]",
        f"     spectral mass (fraction of the {q.dim} eigenvalues) by threshold "
        f"t * {scale_name} ({scale_name} = {scale:.4e}):",
        f"       {'t':>7}  {'threshold':>10}  {'mass below -threshold':>22}  "
        f"{'mass |l| <= threshold':>22}",
    ]
    for t in MASS_THRESHOLDS:
        below, near = q.fraction_below(-t * scale), q.fraction_within(t * scale)
        lines.append(f"       {t:>7.0e}  {t * scale:>10.2e}  {below.value:>11.4f} +- "
                     f"{below.stderr:.4f}  {near.value:>11.4f} +- {near.stderr:.4f}")
    negative = q.fraction_below(0.0)
    lines.append(f"     mass below 0   {negative.value: .4f} +- {negative.stderr:.4f}")
    lines.append(_bottom_line(spectrum, lo))
    return lines


def _lambda_max(spectrum, q, lo, hi) -> tuple:
    """``(lambda_max, its name)``: the largest known eigenvalue, or the spectral radius when
    no eigenvalue is positive."""
    known = [hi, *np.asarray(q.outliers, dtype=float)]
    if spectrum.eigenvalues is not None and len(spectrum.eigenvalues):
        known.append(float(np.nanmax(spectrum.eigenvalues)))
    top = max(known)
    if top > 0:
        return float(top), "lambda_max"
    return float(max(abs(lo), abs(top), 1e-300)), "spectral radius"


def _bottom_line(spectrum, smallest_node) -> str:
    """The bottom eigenvalue when an eigensolver computed it, else the smallest node."""
    bottom = spectrum.bottom_eigenvalues()
    if len(bottom) and spectrum.dense_eigenvalues is None:
        return f"     bottom eigenvalue  {bottom[0]: .6e} (eigensolver)"
    if spectrum.dense_eigenvalues is not None and len(spectrum.dense_eigenvalues):
        return (f"     bottom eigenvalue  {np.min(spectrum.dense_eigenvalues): .6e} (exact, "
                "dense)")
    return (f"     bottom eigenvalue  unknown (no bottom-end eigensolver run); smallest SLQ "
            f"node {smallest_node: .6e}")
