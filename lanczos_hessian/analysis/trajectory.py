"""Tracked spectra as a table and a figure: what :class:`~.tracking.SpectrumTracker` measured
at each training step, in memory or read back with :func:`~.tracking.read_tracking`.

:class:`Tracking` is the dict of stacked records ``{field: (R, ...)}`` (``R``
measurements; fields in :mod:`~lanczos_hessian.analysis.tracking`) plus ``attrs``, with

* :meth:`Tracking.to_dataframe`: one row per measurement and eigenpair (``pair`` 0 .. k-1,
  ascending eigenvalues as stored), the step's scalars repeated on each of its rows;
* :meth:`Tracking.plot`: the top and bottom tracked eigenvalues, the trace and the
  negative mass (when SLQ was tracked, with their error bars) against the training step,
  and the edge-of-stability line ``2 / lr`` (Cohen et al., ICLR 2021: gradient descent at
  learning rate ``lr`` drives ``lambda_max`` up to ``2 / lr``) when a learning rate is given.
"""

from __future__ import annotations

import numpy as np

from ..linalg.density import fraction_below, pandas_module, trace_estimate

#: Per-step scalar fields copied onto every row of the step (when recorded).
STEP_FIELDS = ("loss", "grad_norm", "overlap", "num_matvecs", "num_passes", "warm",
               "seconds")


class Tracking(dict):
    """Stacked tracking records ``{field: (R, ...)}``; ``self["attrs"]`` holds the settings
    (module docstring)."""

    @property
    def attrs(self) -> dict:
        return self.get("attrs", {})

    @property
    def num_records(self) -> int:
        return len(self["step"]) if "step" in self else 0

    def __repr__(self) -> str:
        a = self.attrs
        if not self.num_records:
            return f"Tracking(no measurement yet; {a.get('operator', '?')}, k={a.get('k', '?')})"
        steps = self["step"]
        top = np.nanmax(self["eigenvalues"][-1])
        return (f"Tracking({self.num_records} measurements at steps {int(steps[0])}.."
                f"{int(steps[-1])}; {a.get('operator', '?')}, k={a.get('k', '?')}; last "
                f"top eigenvalue {top:.4g})")

    def dim(self):
        """The operator size ``n`` (for traces), from the attributes; None when unknown."""
        for key in ("dim", "num_params"):
            if self.attrs.get(key):
                return int(self.attrs[key])
        return None

    def slq_series(self) -> dict:
        """Per measurement: ``trace`` (with ``trace_stderr``) and ``negative_mass`` (the
        fraction below 0, with its bracket ``negative_lower``/``negative_upper``, and
        ``negative_resolved``: False where the rules cannot place 0, so that only the bracket
        is a measurement), from the tracked SLQ rules; empty without them. The trace needs ``dim`` in the attributes."""
        if "slq_nodes" not in self:
            return {}
        out = {key: np.full(self.num_records, np.nan) for key in
               ("trace", "trace_stderr", "negative_mass", "negative_lower", "negative_upper")}
        out["negative_resolved"] = np.zeros(self.num_records, dtype=bool)
        dim = self.dim()
        for r, (nodes, weights) in enumerate(zip(self["slq_nodes"], self["slq_weights"])):
            negative = fraction_below(nodes, weights, 0.0)
            out["negative_mass"][r] = negative.value
            out["negative_lower"][r], out["negative_upper"][r] = negative.lower, negative.upper
            out["negative_resolved"][r] = negative.resolved
            if dim:
                trace = trace_estimate(nodes, weights, dim=dim)
                out["trace"][r], out["trace_stderr"][r] = trace.value, trace.stderr
        return out

    def to_dataframe(self):
        """One row per measurement and eigenpair: ``step``, ``pair``, ``eigenvalue``,
        ``residual_bound``, ``converged``, ``overlap_part`` (when recorded), then the step's
        scalars (:data:`STEP_FIELDS`) and, with tracked SLQ, ``trace`` and
        ``negative_mass`` with their errors (pandas optional)."""
        pandas = pandas_module("Tracking.to_dataframe")
        R = self.num_records
        k = self["eigenvalues"].shape[1] if R else 0
        columns = {"step": np.repeat(self["step"], k) if R else [],
                   "pair": np.tile(np.arange(k), R),
                   "eigenvalue": self["eigenvalues"].reshape(-1) if R else []}
        for field, name in (("residual_bounds", "residual_bound"), ("converged", "converged"),
                            ("overlap_parts", "overlap_part")):
            if field in self and R:
                columns[name] = self[field].reshape(-1)
        if "converged" in columns:
            columns["converged"] = np.asarray(columns["converged"]).astype(bool)
        scalars = {f: self[f] for f in STEP_FIELDS if f in self}
        scalars.update(self.slq_series())
        for name, values in scalars.items():
            columns[name] = np.repeat(np.asarray(values), k) if R else []
        return pandas.DataFrame(columns)

    def plot(self, path=None, lr: float | None = None, title: str | None = None):
        """Eigenvalues, trace and negative mass against the training step (module docstring);
        save a PNG at ``path`` or return the Figure. ``lr`` adds the line ``2 / lr``."""
        from .plotting import CURVATURE_UNITS, finish_figure, pyplot

        if not self.num_records:
            raise ValueError("nothing to plot: the tracking holds no measurement yet")
        plt = pyplot()
        series = self.slq_series()
        panels = 3 if series else 1
        fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
        axes = axes[0]
        steps, values = self["step"], self["eigenvalues"]
        ax = axes[0]
        top = np.nanmax(values, axis=1)
        ax.plot(steps, top, "o-", ms=3, label="top eigenvalue")
        ax.plot(steps, np.nanmin(values, axis=1), "s-", ms=3,
                label=f"smallest of the {values.shape[1]} tracked")
        if lr:
            edge, highest = 2.0 / lr, float(np.nanmax(top))
            if highest > 0 and edge > 3 * highest:  # drawn, it would flatten the curves
                ax.plot([], [], ls="--", color="k", lw=1,
                        label=f"edge of stability 2/lr = {edge:.3g} (off the axis: "
                              f"{edge / highest:.0f}x the top)")
            else:
                ax.axhline(edge, ls="--", color="k", lw=1,
                           label=f"edge of stability 2/lr = {edge:.3g}")
        ax.set(xlabel="training step", ylabel=f"eigenvalue ({CURVATURE_UNITS})",
               title=f"tracked eigenvalues ({self.attrs.get('which', 'LA')})")
        if series:
            ok = np.isfinite(series["trace"])
            if ok.any():
                axes[1].errorbar(steps[ok], series["trace"][ok],
                                 yerr=3 * series["trace_stderr"][ok], fmt="o-", ms=3,
                                 capsize=2, label="trace (SLQ, 3 s.e.)")
            axes[1].set(xlabel="training step", ylabel=f"trace ({CURVATURE_UNITS})",
                        title="trace")
            resolved = series["negative_resolved"]
            line, = axes[2].plot(steps, series["negative_mass"], "-", lw=1, label="Gauss value")
            axes[2].plot(steps[resolved], series["negative_mass"][resolved], "o", ms=4,
                         color=line.get_color(), label="resolved: a measurement")
            axes[2].plot(steps[~resolved], series["negative_mass"][~resolved], "o", ms=4,
                         mfc="none", color=line.get_color(),
                         label="unresolved: the bracket only")
            axes[2].fill_between(steps, series["negative_lower"], series["negative_upper"],
                                 alpha=0.25, lw=0, label="bracket (resolution + probes)")
            axes[2].set(xlabel="training step", ylabel="fraction of eigenvalues below 0",
                        title="negative mass", ylim=(0, 1))
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        a = self.attrs
        model = f" of {a['problem']}" if a.get("problem") else ""
        fig.suptitle(title or f"{a.get('operator', 'curvature')}{model} during training "
                              f"(k = {a.get('k', values.shape[1])}, every "
                              f"{a.get('every', '?')} steps)")
        return finish_figure(fig, path, dpi=130)
