"""The measure helpers of the experiment figures (scripts/expcommon.py) against an exact
spectrum: the deflated bulk's mass, its smoothed density and CDF, and the quantiles."""

import numpy as np

import expcommon as ec

from lanczos_hessian.analysis.spectrum import Quadrature


def _deflated(values, k):
    """One 'probe' whose nodes are the n - k smallest values (weight 1/(n - k) each), with
    the k largest deflated: the exact spectrum written as a deflated SLQ result."""
    values = np.sort(values)
    rest, top = values[:-k], values[-k:]
    return Quadrature(rest[None, :], np.full((1, rest.size), 1.0 / rest.size), values.size,
                      top, rest.size)


def test_bulk_measure_density_and_cdf_carry_the_undeflated_mass():
    values = np.random.default_rng(0).normal(size=400)
    q = _deflated(values, 10)
    x, w = ec.bulk_measure(q)
    assert np.all(np.diff(x) >= 0) and np.isclose(w.sum(), 390 / 400)
    grid = np.linspace(-8, 8, 16001)
    phi = ec.bulk_density(q, grid, 0.05)
    assert np.isclose(np.trapezoid(phi, grid), 390 / 400, atol=1e-6)
    cdf = ec.smoothed_cdf(q, np.array([-20.0, 20.0]), 0.05, exact=np.sort(values)[-10:])
    assert np.allclose(cdf, [0.0, 1.0])


def test_smoothed_quantiles_are_the_exact_eigenvalues_for_a_narrow_kernel():
    values = np.sort(np.random.default_rng(1).normal(size=300))
    q = _deflated(values, 5)
    ranks = np.array([3, 40, 150, 290])
    p = (ranks - 0.5) / 300  # half-way up each eigenvalue's step
    got = ec.smoothed_quantiles(q, p, 1e-9, exact=values[-5:])
    assert np.allclose(got, values[ranks - 1], atol=1e-6)
    # the 5 deflated values count as exact steps at the top
    assert np.isclose(ec.smoothed_quantiles(q, [1 - 2.5 / 300], 1e-9, exact=values[-5:])[0],
                      values[-3], atol=1e-6)
