"""Tests for lanczos_hessian.linalg.density: pure functions of quadrature nodes and weights.

References are hand computations, ``scipy.stats.wasserstein_distance``, and Gauss-Legendre
rules (an exact quadrature of the uniform measure, independent of the SLQ code).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from lanczos_hessian.linalg import density as D

NAN = math.nan


def two_probes():
    """Two probes, the second padded (it ended after 2 nodes)."""
    nodes = np.array([[1.0, 2.0, 4.0], [0.0, 3.0, NAN]])
    weights = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0]])
    return nodes, weights


# ------------------------------------------------------------------ Wasserstein-1


def test_wasserstein1_matches_scipy():
    g = np.random.default_rng(0)
    for _ in range(5):
        xa, xb = g.standard_normal(30), 2 + g.standard_normal(17)
        wa, wb = g.random(30), g.random(17)
        expected = wasserstein_distance(xa, xb, wa, wb)
        assert D.wasserstein1(xa, wa, xb, wb) == pytest.approx(expected, rel=1e-12)


def test_wasserstein1_simple_cases():
    assert D.wasserstein1([0.0], [1.0], [1.0], [1.0]) == pytest.approx(1.0)
    x, w = D.exact_measure([0.0, 1.0, 5.0])
    assert D.wasserstein1(x, w, x + 0.3, w) == pytest.approx(0.3)      # a shift
    assert D.wasserstein1(x, w, x, w) == 0.0
    # symmetric, and padding (NaN node, zero weight) and 2-D layouts are ignored
    a = (np.array([[0.0, 2.0, NAN]]), np.array([[0.5, 0.5, 0.0]]))
    b = (np.array([1.0, 1.5]), np.array([3.0, 1.0]))  # normalized to 0.75, 0.25
    expected = wasserstein_distance([0.0, 2.0], [1.0, 1.5], [0.5, 0.5], [0.75, 0.25])
    assert D.wasserstein1(*a, *b) == pytest.approx(expected)
    assert D.wasserstein1(*b, *a) == pytest.approx(expected)


def test_wasserstein1_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        D.wasserstein1([0.0, 1.0], [1.0, -0.5], [0.0], [1.0])
    with pytest.raises(ValueError, match="no mass"):
        D.wasserstein1([0.0], [0.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="differ in size"):
        D.wasserstein1([0.0, 1.0], [1.0], [0.0], [1.0])


# ------------------------------------------------------------------ measures


def test_average_measure_and_outliers():
    nodes, weights = two_probes()
    x, w = D.average_measure(nodes, weights)
    np.testing.assert_allclose(x, [0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(w, [0.25, 0.25, 0.125, 0.25, 0.125])
    # two deflated outliers in dimension 10: each 1/10, the quadrature part scaled by 8/10
    x, w = D.average_measure(nodes, weights, outliers=[9.0, -7.0], dim=10)
    assert w.sum() == pytest.approx(1.0)
    assert x[0] == -7.0 and x[-1] == 9.0 and w[0] == w[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(w[1:-1], 0.8 * np.array([0.25, 0.25, 0.125, 0.25, 0.125]))
    result = SimpleNamespace(nodes=nodes, weights=weights, outliers=np.array([9.0, -7.0]),
                             dim=10)
    xr, wr = D.quadrature_measure(result)
    np.testing.assert_array_equal(xr, x)
    np.testing.assert_array_equal(wr, w)


def test_exact_measure():
    x, w = D.exact_measure([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(x, [1.0, 2.0, 2.0, 3.0])
    np.testing.assert_array_equal(w, [0.25] * 4)


def test_outliers_need_dim():
    nodes, weights = two_probes()
    with pytest.raises(ValueError, match="dim"):
        D.average_measure(nodes, weights, outliers=[5.0])
    with pytest.raises(ValueError, match="no bulk"):
        D.average_measure(nodes, weights, outliers=[5.0, 6.0], dim=2)
    with pytest.raises(ValueError, match="one shape"):
        D.average_measure(nodes, weights[:, :2])


# ------------------------------------------------------------------ estimates


def test_trace_and_moments_by_hand():
    nodes, weights = two_probes()
    n = 8
    # probe 0: 0.5*1 + 0.25*2 + 0.25*4 = 2;  probe 1: 0.5*0 + 0.5*3 = 1.5
    est = D.trace_estimate(nodes, weights, dim=n)
    np.testing.assert_allclose(est.per_probe, [16.0, 12.0])
    assert est.value == pytest.approx(14.0)
    assert est.stderr == pytest.approx(np.std([16.0, 12.0], ddof=1) / math.sqrt(2))
    moments = D.moment_estimates(nodes, weights, 3, dim=n, normalized=False)
    assert len(moments) == 4
    np.testing.assert_allclose(moments[0].per_probe, [8.0, 8.0])
    np.testing.assert_allclose(moments[2].per_probe, [8 * (0.5 + 1 + 4), 8 * 4.5])
    np.testing.assert_allclose(moments[3].per_probe, [8 * (0.5 + 2 + 16), 8 * 13.5])
    # with outliers: sum of outliers^q + (n - k) * quadrature
    out = D.moment_estimates(nodes, weights, 2, dim=n, outliers=[10.0, -1.0], normalized=False)
    np.testing.assert_allclose(out[1].per_probe, [9 + 6 * 2.0, 9 + 6 * 1.5])
    np.testing.assert_allclose(out[2].per_probe, [101 + 6 * 5.5, 101 + 6 * 4.5])
    np.testing.assert_allclose(out[0].per_probe, [8.0, 8.0])


def test_single_probe_has_no_error_bar():
    est = D.trace_estimate([1.0, 2.0], [0.5, 0.5], dim=4)
    assert est.value == pytest.approx(6.0) and math.isnan(est.stderr)
    assert est.num_probes == 1 and float(est) == pytest.approx(6.0)


def test_fractions_by_hand():
    nodes, weights = two_probes()
    below = D.fraction_below(nodes, weights, 2.0)
    np.testing.assert_allclose(below.per_probe, [0.5, 0.5])  # strict: node 2 not counted
    within = D.fraction_within(nodes, weights, 1.0)
    np.testing.assert_allclose(within.per_probe, [0.5, 0.5])  # |x| <= 1: nodes 0 and 1
    above = D.mass_above(nodes, weights, 2.5)
    np.testing.assert_allclose(above.per_probe, [0.25, 0.5])
    above = D.mass_above(nodes, weights, 2.5, outliers=[9.0], dim=4)
    np.testing.assert_allclose(above.per_probe, [0.25 + 0.75 * 0.25, 0.25 + 0.75 * 0.5])
    with pytest.raises(ValueError, match="band"):
        D.fraction_within(nodes, weights, -1.0)


def test_moment_estimates_bad_arguments():
    nodes, weights = two_probes()
    with pytest.raises(ValueError, match="dim"):
        D.trace_estimate(nodes, weights, dim=None)
    with pytest.raises(ValueError, match="order"):
        D.moment_estimates(nodes, weights, -1, dim=3)


# ------------------------------------------------------------------ density


def test_density_of_one_node():
    grid, phi = D.spectral_density([2.0], [1.0], grid=[2.0, 3.0], width=0.5)
    expected = np.exp(-0.5 * np.array([0.0, 2.0]) ** 2) / (0.5 * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(phi, expected, rtol=1e-14)
    np.testing.assert_array_equal(grid, [2.0, 3.0])


def test_density_integrates_to_one_with_default_grid():
    nodes, weights = two_probes()
    grid, phi = D.spectral_density(nodes, weights, outliers=[20.0], dim=50)
    assert grid.size == D.DEFAULT_NUM_POINTS
    assert np.trapezoid(phi, grid) == pytest.approx(1.0, abs=1e-6)
    # the outlier carries mass 1/50 around 20
    near = grid > 15
    assert np.trapezoid(phi[near], grid[near]) == pytest.approx(1 / 50, abs=1e-6)


def test_default_width_is_ghorbani():
    nodes, weights = two_probes()
    width = D.default_width(nodes, weights)
    assert width == pytest.approx(math.sqrt(1e-5) * (4.0 - 0.0) / 2)
    grid, _ = D.spectral_density(nodes, weights)
    assert grid[0] == pytest.approx(-5 * width) and grid[-1] == pytest.approx(4 + 5 * width)
    assert D.default_width([3.0], [1.0]) == pytest.approx(math.sqrt(1e-5) * 3.0)


def test_density_of_uniform_gauss_legendre_rule():
    """Two 40-node Gauss-Legendre rules of the uniform measure on [0, 1], smoothed with a
    width much larger than the node spacing: a density close to 1 inside the interval."""
    x, w = np.polynomial.legendre.leggauss(40)
    nodes = np.stack([(x + 1) / 2, (x + 1) / 2])
    weights = np.stack([w / 2, w / 2])
    grid, phi = D.spectral_density(nodes, weights, grid=np.linspace(0.2, 0.8, 61), width=0.05)
    np.testing.assert_allclose(phi, 1.0, atol=0.01)


@pytest.mark.parametrize("width", [0.0, -1.0, NAN, math.inf])
def test_density_rejects_bad_width(width):
    nodes, weights = two_probes()
    with pytest.raises(ValueError, match="width"):
        D.spectral_density(nodes, weights, width=width)


def test_density_rejects_bad_num_points():
    with pytest.raises(ValueError, match="num_points"):
        D.spectral_density([1.0], [1.0], num_points=1)
