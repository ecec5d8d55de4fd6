"""Figures of saved spectra, as in Sagun et al. (2017, 2018) and Ghorbani et al. (2019).

Needs matplotlib (``pip install lanczos_hessian[plot]``); imported only when plotting.
One figure, three panels, every run overlaid:

1. ordered eigenvalues: rank on x, value on y (Sagun et al. 2018, Figs. 1-6), from the
   eigenpairs of each run (or its exact dense spectrum);
2. the smoothed spectral density on a linear scale, zoomed to the bulk (the central 99% of
   the mass);
3. the same density on a log scale, where the bulk's tails and the outliers show.
"""

from __future__ import annotations

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'lanczos_hessian[plot]'") from exc
    return plt


def plot_spectra(spectra, path, width=None, num_top: int = 50):
    """Draw the three panels for the :class:`~lanczos_hessian.analysis.spectrum.Spectrum` list; save PNG.

    ``width`` is the Gaussian kernel's standard deviation (default: each run's own,
    :func:`lanczos_hessian.linalg.density.default_width`).
    """
    if width is not None and not width > 0:
        raise ValueError(f"width (kernel standard deviation) must be positive, got {width!r}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    bulk_ranges = []
    for spectrum in spectra:
        _ordered(axes[0], spectrum, num_top)
        bulk_ranges.append(_densities(axes[1], axes[2], spectrum, width))
    bulk_ranges = [r for r in bulk_ranges if r is not None]
    if bulk_ranges:  # the linear panel shows the bulk: where 99% of the mass lies
        lo, hi = min(r[0] for r in bulk_ranges), max(r[1] for r in bulk_ranges)
        pad = 0.05 * (hi - lo) or abs(hi) or 1.0
        axes[1].set_xlim(lo - pad, hi + pad)
    axes[0].set(title="ordered eigenvalues", xlabel="rank", ylabel="eigenvalue")
    axes[1].set(title="bulk density (central 99% of the mass)", xlabel="eigenvalue",
                ylabel="density")
    axes[2].set(title="spectral density (log scale)", xlabel="eigenvalue", ylabel="density",
                yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ordered(ax, spectrum, num_top):
    top = spectrum.top_eigenvalues()[:num_top]
    if len(top) == 0:
        return
    ax.plot(np.arange(1, len(top) + 1), top, "o-", ms=3, label=spectrum.label)
    counts = spectrum.outlier_counts(num_top)
    if counts is not None and counts.gap:
        ax.axvline(counts.gap + 0.5, ls=":", color=ax.lines[-1].get_color(), lw=1)


def _densities(ax_lin, ax_log, spectrum, width):
    if spectrum.quadrature is not None:
        grid, phi = spectrum.quadrature.density(width=width)
        label = f"{spectrum.label} (SLQ)"
    elif spectrum.dense_eigenvalues is not None:
        from ..linalg.density import exact_measure, spectral_density

        nodes, weights = exact_measure(spectrum.dense_eigenvalues)
        grid, phi = spectral_density(nodes, weights, width=width)
        label = f"{spectrum.label} (exact)"
    else:
        return
    ax_lin.plot(grid, phi, lw=1.2, label=label)
    floor = max(phi.max() * 1e-7, 1e-300)
    ax_log.plot(grid, np.maximum(phi, floor), lw=1.2, label=label)
    ax_log.set_ylim(bottom=floor)
    return _central_range(grid, phi, 0.005)


def _central_range(grid, phi, tail):
    """The interval holding all but ``tail`` of the density's mass at each end."""
    cdf = np.cumsum(phi)
    cdf = cdf / cdf[-1]
    return grid[np.searchsorted(cdf, tail)], grid[min(np.searchsorted(cdf, 1 - tail),
                                                      len(grid) - 1)]
