"""The Jensen-Shannon distance against hand-computed cases and scipy, and the blocks'
heterogeneity: equal shapes at different scales are one spectrum once scaled."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from lanczos_hessian.blocks import BlockSpectra, BlockSpectrum, block_heterogeneity, js_distance
from lanczos_hessian.linalg.slq import slq

EPS = np.finfo(np.float64).eps


def test_js_distance_of_hand_computed_cases():
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4), KL(p||m) = ln(4/3)/2, KL(q||m) = ln(4/3)
    assert js_distance([0.5, 0.5], [1.0, 0.0]) == pytest.approx(np.sqrt(0.75 * np.log(4 / 3)),
                                                                rel=10 * EPS)
    assert js_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.sqrt(np.log(2)), rel=10 * EPS)
    assert js_distance([2.0, 6.0], [1.0, 3.0]) == 0.0  # normalized first: the same distribution
    rng = np.random.default_rng(0)
    p, q = rng.random(50), rng.random(50)
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q), rel=1e-12)
    assert js_distance(p, q) == js_distance(q, p)


def test_js_distance_refuses_what_is_not_a_distribution():
    with pytest.raises(ValueError, match="shapes"):
        js_distance([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        js_distance([1.0, -1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="positive total"):
        js_distance([0.0, 0.0], [1.0, 0.0])


def test_blocks_of_one_shape_at_other_scales_are_alike_once_scaled():
    spectrum = np.linspace(-1.0, 4.0, 40)
    A = np.diag(spectrum)
    flat = np.diag(np.full(40, 2.0) + np.linspace(0, 0.01, 40))
    rule = {name: slq(M, num_probes=3, num_steps=12, rng=0)
            for name, M in (("a", A), ("a_times_50", 50 * A), ("flat", flat))}
    spectra = BlockSpectra([BlockSpectrum(name, 40, density=r) for name, r in rule.items()], 0)
    scaled = block_heterogeneity(spectra, width=0.02)
    assert scaled.names == ["a", "a_times_50", "flat"]
    assert scaled.scales[1] / scaled.scales[0] == pytest.approx(50, rel=1e-10)
    assert scaled.scales[0] == pytest.approx(4.0, rel=0.01)  # ||A||, as 12 steps see it
    assert scaled.distances[0, 1] < 1e-6  # the same shape
    assert scaled.distances[0, 2] > 0.5 and scaled.distances[1, 2] > 0.5
    np.testing.assert_allclose(scaled.distances, scaled.distances.T)
    assert scaled.mean_distance == pytest.approx(scaled.pairs.mean())
    raw = block_heterogeneity(spectra, width=1.0, scale=None)
    assert raw.distances[0, 1] > 0.5  # raw eigenvalues: 50 times apart
    for phi in scaled.densities:  # each a probability density on the common grid
        assert abs(np.trapezoid(phi, scaled.grid) - 1) < 1e-3
