"""Figures of spectra, as in Sagun et al. (2017, 2018) and Ghorbani et al. (2019).

Needs matplotlib (``pip install lanczos_hessian[plot]``); imported only when plotting.
One figure, four panels, every run overlaid, each line labelled:

1. the top eigenvalues by rank (Sagun et al. 2018, Figs. 1-6), with the run's outlier
   verdict marked and its rule named in the legend (the count ``analyze`` prints);
2. the bottom eigenvalues by rank from the bottom (the small negative eigenvalues of a
   trained network; from a ``BE``/``SA`` run or the dense spectrum);
3. the smoothed spectral density on a linear scale, zoomed to the bulk (the central 99% of
   the mass), with its band (the quadrature's resolution and the probes' error,
   :meth:`~lanczos_hessian.linalg.density.QuadratureStatistics.density_band`) and, when the
   file holds it, the exact spectrum smoothed by the same kernel, dashed;
4. the same density on a log scale, where the bulk's tails and the outliers show.

Eigenvalue axes carry the units of a curvature, ``loss / param^2``; the figure's title names
the model (problem, parameters) and the operator of each run.

Runs are spectrum files, :class:`~lanczos_hessian.analysis.spectrum.Spectrum` objects, or
results in memory (an ``EigshResult``, an ``SLQResult``, or a pair of them).

The kernel width: by default each run's :func:`bulk_width`, ``1/50`` of the interval that holds
the central 98% of its estimated measure. Ghorbani et al.'s ``sqrt(1e-5)`` of the half range of
the whole support is tied to the outliers: when they sit far above a narrow bulk, that width
is wider than the bulk and draws it as one Gaussian bump. A fiftieth of the bulk's own extent
resolves about 25 features across it while still merging the discrete Gauss nodes (about
``m`` of them per probe across the same extent, ``m`` = 60-80 steps) into a density.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The bulk's extent over the kernel width (see the module docstring).
BULK_RESOLUTION = 50

#: The units of every eigenvalue axis (the files' ``units`` attribute of curvature values).
CURVATURE_UNITS = "loss / param^2"


def figure_title(spectrum) -> str:
    """``label: hessian of clusters-mlp (4270 parameters)``: the run's operator, model and
    size, each as far as its attributes say (results in memory without provenance: the
    label alone)."""
    a = spectrum.attrs
    model = a.get("problem") or a.get("model")
    what = " of ".join(str(part) for part in (a.get("operator"), model) if part)
    size = f"{a['num_params']} parameters" if a.get("num_params") else ""
    detail = f"{what} ({size})" if what and size else what or size
    return f"{spectrum.label}: {detail}" if detail else str(spectrum.label)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display); ImportError naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'lanczos_hessian[plot]'") from exc
    return plt


def as_spectrum(run, label: str | None = None):
    """A :class:`~lanczos_hessian.analysis.spectrum.Spectrum` of a file path, a Spectrum, an
    ``EigshResult``, an ``SLQResult`` or an ``(EigshResult, SLQResult)`` pair."""
    from .spectrum import Spectrum, read_spectrum

    if isinstance(run, Spectrum):
        return run
    if isinstance(run, (str, Path)):
        return read_spectrum(run)
    pair = run if isinstance(run, tuple) else (run,)
    eigs = next((r for r in pair if hasattr(r, "residual_bounds")), None)
    slq = next((r for r in pair if hasattr(r, "nodes")), None)
    if eigs is None and slq is None:
        raise TypeError(f"cannot plot a {type(run).__name__}: pass a spectrum file, a "
                        "Spectrum, an EigshResult, an SLQResult or a pair of them")
    return Spectrum.from_results(eigs, slq, label or "run")


def bulk_width(nodes, weights) -> float:
    """The default kernel width: ``1/50`` of the central 98% interval of the measure."""
    order = np.argsort(nodes)
    nodes, weights = np.asarray(nodes)[order], np.asarray(weights)[order]
    cdf = np.cumsum(weights) / np.sum(weights)
    lo, hi = nodes[np.searchsorted(cdf, 0.01)], nodes[min(np.searchsorted(cdf, 0.99),
                                                          len(nodes) - 1)]
    spread = hi - lo if hi > lo else max(abs(hi), 1e-12)
    return spread / BULK_RESOLUTION


def plot_spectra(runs, path=None, width=None, num_top: int = 50, labels=None):
    """Draw the four panels (module docstring) for ``runs`` (a list of runs, or one run);
    save a PNG at ``path``.

    ``width`` is the Gaussian kernel's standard deviation (default: each run's
    :func:`bulk_width`). Returns ``path``, or the open matplotlib Figure when ``path`` is None.
    """
    if width is not None and not width > 0:
        raise ValueError(f"width (kernel standard deviation) must be positive, got {width!r}")
    if not isinstance(runs, list):  # one run (a file, a Spectrum, a result or a pair)
        runs = [runs]
    labels = labels or [None] * len(runs)
    spectra = [as_spectrum(run, label) for run, label in zip(runs, labels)]
    plt = pyplot()
    plt.rcParams.update({"font.size": 10})
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    bulk_ranges = []
    for spectrum in spectra:
        _ordered(axes[0], spectrum, num_top)
        _bottom(axes[1], spectrum, num_top)
        bulk_ranges.append(_densities(axes[2], axes[3], spectrum, width))
    bulk_ranges = [r for r in bulk_ranges if r is not None]
    if bulk_ranges:  # the linear panel shows the bulk: where 99% of the mass lies
        lo, hi = min(r[0] for r in bulk_ranges), max(r[1] for r in bulk_ranges)
        pad = 0.05 * (hi - lo) or abs(hi) or 1.0
        axes[2].set_xlim(lo - pad, hi + pad)
    value = f"eigenvalue ({CURVATURE_UNITS})"
    per = f"density (fraction per {CURVATURE_UNITS})"
    axes[0].set(title="top eigenvalues", xlabel="rank from the top", ylabel=value)
    axes[1].set(title="bottom eigenvalues", xlabel="rank from the bottom", ylabel=value)
    axes[2].set(title="bulk density (central 99% of the mass), band: resolution + probes",
                xlabel=value, ylabel=per)
    axes[3].set(title="spectral density (log scale)", xlabel=value, ylabel=per, yscale="log")
    fig.suptitle("; ".join(figure_title(s) for s in spectra))
    from matplotlib.ticker import MaxNLocator

    for i, ax in enumerate(axes):
        ax.grid(alpha=0.3)  # ranks (panels 0, 1) are whole numbers: no 1.5 on their axes
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=i < 2))
        if ax.get_xscale() == "linear":
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    for ax in axes[:3]:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return finish_figure(fig, path, dpi=150)


def finish_figure(fig, path=None, dpi: int = 150):
    """Lay ``fig`` out, then return it (``path`` None) or write it to ``path``, close it and
    return the path: what every figure of the package does last."""
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _ordered(ax, spectrum, num_top):
    top = spectrum.top_eigenvalues()[:num_top]
    if len(top) == 0:
        return
    ax.plot(np.arange(1, len(top) + 1), top, "o-", ms=3, label=spectrum.label)
    verdict = spectrum.outlier_verdict(num_top)
    if verdict is not None and verdict[0]:
        count, rule = verdict
        plural = "" if count == 1 else "s"
        ax.axvline(count + 0.5, ls=":", color=ax.lines[-1].get_color(), lw=1,
                   label=f"{spectrum.label}: {count} outlier{plural} "
                         f"({rule.replace('_', '-')} rule)")


def _bottom(ax, spectrum, num):
    bottom = spectrum.bottom_eigenvalues()[:num]
    if len(bottom) == 0:
        return
    ax.plot(np.arange(1, len(bottom) + 1), bottom, "s-", ms=3, label=spectrum.label)
    ax.axhline(0.0, color="0.5", lw=0.8)


def _densities(ax_lin, ax_log, spectrum, width):
    """The SLQ density with its band (else the exact one), and the exact one dashed when
    the run holds both."""
    from ..linalg.density import exact_measure, spectral_density

    exact = spectrum.dense_eigenvalues
    if spectrum.quadrature is None and exact is None:
        return None
    nodes, weights = spectrum.measure_source().measure()
    width = width or bulk_width(nodes, weights)
    if spectrum.quadrature is not None:
        grid, phi, lower, upper = spectrum.quadrature.density_band(width=width)
        label = f"{spectrum.label} (SLQ)"
    else:
        grid, phi = spectral_density(*exact_measure(exact), width=width)
        lower = upper = None
        label = f"{spectrum.label} (exact)"
    line, = ax_lin.plot(grid, phi, lw=1.2, label=label)
    floor = max(phi.max() * 1e-7, 1e-300)
    ax_log.plot(grid, np.maximum(phi, floor), lw=1.2, label=label, color=line.get_color())
    if lower is not None:
        for ax in (ax_lin, ax_log):
            ax.fill_between(grid, np.maximum(lower, floor), np.maximum(upper, floor),
                            color=line.get_color(), alpha=0.2, lw=0,
                            label=f"{spectrum.label}: band" if ax is ax_lin else None)
        if exact is not None:
            _, reference = spectral_density(*exact_measure(exact), grid, width)
            for ax in (ax_lin, ax_log):
                ax.plot(grid, np.maximum(reference, floor), "--", color="k", lw=0.9,
                        label=f"{spectrum.label} (exact)" if ax is ax_lin else None)
    ax_log.set_ylim(bottom=floor)
    return _central_range(grid, phi, 0.005)


def _central_range(grid, phi, tail):
    """The interval holding all but ``tail`` of the density's mass at each end."""
    cdf = np.cumsum(phi)
    cdf = cdf / cdf[-1]
    return grid[np.searchsorted(cdf, tail)], grid[min(np.searchsorted(cdf, 1 - tail),
                                                      len(grid) - 1)]
