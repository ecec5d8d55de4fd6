"""The measure helpers of the experiment figures (scripts/expcommon.py) against an exact
spectrum: the deflated bulk's mass, its smoothed density, and the tail fractions with their
brackets."""

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


def test_bulk_measure_and_density_carry_the_undeflated_mass():
    values = np.random.default_rng(0).normal(size=400)
    q = _deflated(values, 10)
    x, w = ec.bulk_measure(q)
    assert np.all(np.diff(x) >= 0) and np.isclose(w.sum(), 390 / 400)
    grid = np.linspace(-8, 8, 16001)
    phi = ec.bulk_density(q, grid, 0.05)
    assert np.isclose(np.trapezoid(phi, grid), 390 / 400, atol=1e-6)


def test_tail_fractions_count_the_exact_spectrum_with_one_eigenvalue_brackets():
    """The figures' kernel-free panels (exps 2-4): with the exact spectrum as one rule and the
    top 10 deflated, the fraction beyond ``t`` is the count of eigenvalues beyond ``t`` over
    n, on both sides and for ``abs(lambda) > t``; the bracket is at most one eigenvalue
    wide on either side of ``t`` in the bulk (the weights of the two nodes around it, 1/n
    each) and exact among the deflated values; the rules survive a round trip through the
    JSON record."""
    values = np.sort(np.random.default_rng(2).normal(size=500))
    q = ec.quadrature_from_record(ec.to_jsonable(ec.quadrature_record(_deflated(values, 10))))
    t = np.array([-1.5, -0.2, 0.3, 1.0])
    value, lower, upper = ec.tail_fractions(q, t)
    expected = np.where(t < 0, (values[:, None] < t).sum(0), (values[:, None] > t).sum(0)) / 500
    assert np.allclose(value, expected, atol=1e-12)
    assert np.all(lower <= value + 1e-12) and np.all(value <= upper + 1e-12)
    assert np.all(upper - lower <= 2.0 / 500 + 1e-12)  # the nodes on either side of t
    above_top = np.array([values[-5] + 1e-9])  # among the deflated: 4 above, known exactly
    v, lo, hi = ec.tail_fractions(q, above_top)
    assert np.allclose([v[0], lo[0], hi[0]], 4 / 500)
    s = np.array([0.5, 1.2])
    v, lo, hi = ec.tail_fractions(q, s, absolute=True)
    assert np.allclose(v, (np.abs(values)[:, None] > s).sum(0) / 500, atol=1e-12)
    assert np.all(lo <= v + 1e-12) and np.all(v <= hi + 1e-12)
