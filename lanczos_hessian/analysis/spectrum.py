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
from ..linalg.density import DEFAULT_NUM_POINTS
from ..errors import SpectrumFileError
from ..storage.hdf5 import decode_attrs, open_spectrum, read_file
from ..storage.records import read_eigs_result, read_slq_result
from .outliers import count_outliers, outlier_verdict
from .quadrature import Quadrature, quadrature_of_record
from .statistics import spectral_statistics
from .summary import MASS_THRESHOLDS, summarize  # noqa: F401 (their home before summary.py)


@dataclass(repr=False)
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
    eigs, slq : EigshResult, SLQResult or None
        The solvers' results: what :func:`lanczos_hessian.run.slq` computed, or the same read
        back from a complete group (None for a cut-off run, or a file without them). The
        spectrum unpacks as this pair: ``eigs, bulk = run.slq(op, out, ...)``.

    :func:`lanczos_hessian.run.slq` returns the spectrum :func:`read_spectrum` reads back
    from its file: the same path, attributes, summary, dataframes and repr.
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
    eigs: object = None
    slq: object = None

    def __iter__(self):
        """``eigs, bulk = spectrum``: the solvers' results (the pair ``run.slq`` returned
        before it returned the spectrum, so that such code keeps working)."""
        return iter((self.eigs, self.slq))

    @property
    def label(self) -> str:
        return self.attrs.get("label") or self.path.stem

    def __repr__(self) -> str:
        parts = [f"{self.attrs.get('operator', 'operator')} of "
                 f"{self.attrs.get('num_params', '?')} parameters"]
        if self.eigenvalues is not None:
            state = "complete" if self.eigs_complete else "CUT OFF"
            parts.append(f"{len(self.eigenvalues)} eigenpairs "
                         f"({self.eigs_attrs.get('which', '?')}, {state})")
        if self.quadrature is not None:
            q = self.quadrature
            parts.append(f"SLQ {q.nodes.shape[0]} probes x {q.nodes.shape[1]} nodes")
        if self.dense_eigenvalues is not None:
            parts.append("exact spectrum")
        return f"Spectrum({str(self.path)!r}: {'; '.join(parts)})"

    # ---- the statistics of the density: the SLQ rules, else the exact spectrum ----------
    def measure_source(self):
        """The rules the density statistics come from: the SLQ quadrature, or the exact
        spectrum as a rule (:meth:`Quadrature.exact`); a ValueError when there is neither."""
        if self.quadrature is not None:
            return self.quadrature
        if self.dense_eigenvalues is not None:
            return Quadrature.exact(self.dense_eigenvalues)
        raise ValueError(f"{self.path} holds no SLQ rules and no exact spectrum: no density, "
                         "trace or spectral fractions (run slq on the same problem, or "
                         "analyze its slq file together with this one)")

    def trace(self):
        """``tr(A)`` with its standard error (:meth:`QuadratureStatistics.trace`)."""
        return self.measure_source().trace()

    def moments(self, order: int, normalized: bool = True):
        """The spectral moments (:meth:`QuadratureStatistics.moments`)."""
        return self.measure_source().moments(order, normalized)

    def density(self, grid=None, width=None, num_points: int = DEFAULT_NUM_POINTS):
        """``(grid, phi)``, the smoothed density (:meth:`QuadratureStatistics.density`)."""
        return self.measure_source().density(grid, width, num_points)

    def density_band(self, grid=None, width=None,
                     num_points: int = DEFAULT_NUM_POINTS):
        """``(grid, phi, lower, upper)`` (:meth:`QuadratureStatistics.density_band`)."""
        return self.measure_source().density_band(grid, width, num_points)

    def fraction_below(self, threshold: float = 0.0):
        """The bracketed fraction of eigenvalues below ``threshold``."""
        return self.measure_source().fraction_below(threshold)

    def fraction_within(self, band: float):
        """The bracketed fraction of eigenvalues with ``|lambda| <= band``."""
        return self.measure_source().fraction_within(band)

    def mass_above(self, threshold: float):
        """The bracketed fraction of eigenvalues above ``threshold``."""
        return self.measure_source().mass_above(threshold)

    def summary(self, num_top: int = 20) -> str:
        """The plain-text summary ``analyze`` prints (:func:`summarize`)."""
        return summarize(self, num_top)

    def statistics(self, num_top: int = 20) -> list:
        """Effective rank, stable rank, participation ratio, negative magnitude share and the
        top-k trace share, each with its error (:mod:`~.statistics`): from the SLQ rules,
        and from the exact spectrum when the file holds it (error 0)."""
        top = self.top_eigenvalues()
        verdict = self.outlier_verdict(num_top)
        ends = [abs(float(v)) for v in (top[:1].tolist() + self.bottom_eigenvalues()[:1].tolist())]
        common = dict(top=top, num_outliers=verdict[0] if verdict else 0, extremes=ends)
        rows = []
        q = self.quadrature
        if q is not None:
            rows += spectral_statistics(q.dim, nodes=q.nodes, weights=q.weights,
                                        outliers=q.outliers, **common)
        if self.dense_eigenvalues is not None:
            rows += spectral_statistics(len(self.dense_eigenvalues),
                                        exact=self.dense_eigenvalues, **common)
        return rows

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
    def from_results(cls, eigs=None, slq=None, label: str = "run", *, path=None, attrs=None,
                     eigs_attrs=None, slq_attrs=None) -> "Spectrum":
        """A spectrum of results in memory (an ``EigshResult`` and/or an ``SLQResult``), so that
        :func:`~lanczos_hessian.analysis.plotting.plot_spectra` and :func:`summarize` need no
        file. ``path`` and the root, ``eigs`` and ``slq`` attributes are those of the file the
        results were written to, if any (:func:`spectrum_of_run`); by default ``label``
        names it and the groups' attributes are the results' own."""
        spectrum = cls(Path(label) if path is None else Path(path),
                       {"label": label} if attrs is None else dict(attrs), eigs=eigs, slq=slq)
        if eigs is not None:
            spectrum.eigenvalues = np.asarray(eigs.eigenvalues)
            spectrum.residual_bounds = np.asarray(eigs.residual_bounds)
            spectrum.residuals = eigs.residuals
            spectrum.converged = np.asarray(eigs.converged)
            spectrum.eigs_complete = True
            spectrum.eigs_attrs = ({"which": eigs.which, "k_bottom": eigs.k_bottom}
                                   if eigs_attrs is None else dict(eigs_attrs))
        if slq is not None:
            spectrum.quadrature = Quadrature(slq.nodes, slq.weights, slq.dim, slq.outliers,
                                             slq.num_steps, True, dict(slq_attrs or {}))
        return spectrum

    def to_dataframe(self, what: str = "eigs", per: str = "node"):
        """A ``pandas.DataFrame`` (pandas optional: an ImportError naming ``pip install
        pandas`` without it). ``what="eigs"``: one row per eigenpair in array order
        (ascending, index = array index), columns ``eigenvalue``, ``ritz_bound``,
        ``measured_residual`` (NaN when not measured), ``converged``; ``what="slq"``: the
        quadrature rules, ``per="node"`` or ``"probe"``
        (:meth:`~lanczos_hessian.linalg.density.QuadratureStatistics.to_dataframe`);
        ``what="summary"``: one row per scalar summary of :meth:`statistics`, columns
        ``statistic``, ``value``, ``stderr``, ``lower``, ``upper``, ``source``."""
        pandas = density.pandas_module("Spectrum.to_dataframe")
        if what == "summary":
            return pandas.DataFrame([s.as_row() for s in self.statistics()],
                                    columns=["statistic", "value", "stderr", "lower", "upper",
                                             "source"])
        if what == "slq":
            if self.quadrature is None:
                raise ValueError(f"{self.path} holds no SLQ rules (no slq group committed)")
            return self.quadrature.to_dataframe(per)
        if what != "eigs":
            raise ValueError(f"what must be 'eigs', 'slq' or 'summary', got {what!r}")
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

    def outlier_verdict(self, num: int | None = None):
        """``(count, rule)``: the run's one outlier count (:func:`outlier_verdict`, with the
        rule the run recorded, e.g. the demo's), or None with fewer than two top values."""
        counts = self.outlier_counts(num)
        if counts is None:
            return None
        return outlier_verdict(counts, self.eigs_attrs.get("outliers_rule") or None)


def spectrum_of_run(eigs, slq, out=None, attrs=None, read_file_attrs=True) -> Spectrum:
    """The :class:`Spectrum` of a run's results in memory (what :func:`lanczos_hessian.run.slq`
    returns). With the file ``out`` the run wrote (and ``read_file_attrs``: the rank that
    wrote it), its path and the attributes of its root and groups, read back, so that it
    equals :func:`read_spectrum` of ``out``; else ``attrs``, the provenance a file would
    hold."""
    root, groups = dict(attrs or {}), {}
    if out is not None and read_file_attrs and Path(out).is_file():
        with open_spectrum(out) as handle:
            root = decode_attrs(handle.attrs)
            groups = {name: decode_attrs(handle[name].attrs) for name in ("eigs", "slq")
                      if name in handle}
    return Spectrum.from_results(eigs, slq, label=root.get("label") or "run", path=out,
                                 attrs=root, eigs_attrs=groups.get("eigs"),
                                 slq_attrs=groups.get("slq"))


def read_spectrum(path) -> Spectrum:
    """Load a spectrum file (see :mod:`lanczos_hessian.storage.hdf5`), complete or cut off;
    the solvers' results of its complete groups as ``.eigs`` and ``.slq``."""
    path = Path(path)
    content = read_file(path)
    spectrum = Spectrum(path=path, attrs=content["attrs"])
    try:
        if "eigs" in content:
            _load_eigs(spectrum, content["eigs"], deflation="slq" in content)
        if "slq" in content:
            spectrum.quadrature = quadrature_of_record(content["slq"], content["attrs"], path,
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
    spectrum.eigs, spectrum.slq = solver_results(path, content)
    return spectrum


def solver_results(path, content) -> tuple:
    """``(EigshResult or None, SLQResult or None)`` of the complete ``eigs`` and ``slq``
    groups of the file at ``path`` (``content``: what :func:`read_file` read of it); None for a
    group that is cut off, or holds less than a finished run writes (a file of an older
    version, a tracking file)."""
    wanted = [name for name in ("eigs", "slq")
              if name in content and content[name].attrs.get("complete") is True]
    found = {}
    if wanted:
        with open_spectrum(path) as handle:
            for name in wanted:
                read = read_eigs_result if name == "eigs" else read_slq_result
                try:
                    found[name] = read(handle[name])
                except (KeyError, TypeError, ValueError):
                    found[name] = None
    return found.get("eigs"), found.get("slq")


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
