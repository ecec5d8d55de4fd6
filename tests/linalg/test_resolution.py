"""The SLQ statistics carry the quadrature's resolution: brackets from the
Chebyshev-Markov-Stieltjes inequalities hold every probe's exact measure, and the reported
fractions contain the exact ones of networks' dense Hessians over 20 seeds."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lanczos_hessian import HessianOperator, dense_matrix, lanczos_eigsh, slq
from lanczos_hessian.linalg import resolution as R
from lanczos_hessian.linalg.slq import draw_probes

N = 300


def atom_spectrum(seed=0):
    """A trained network's shape: 60% of the eigenvalues in an atom within 1e-4 of zero,
    a bulk reaching below zero, a few outliers."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([rng.normal(0, 1e-4, 180), rng.uniform(-0.05, 1, 110),
                          rng.uniform(5, 20, 10)])
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    return lam, Q


def probe_masses(Q, num_probes, seed):
    """``(u_p^T y_j)^2``, ``(N, P)``: the exact measure of each unit probe slq draws."""
    Z = draw_probes(N, num_probes, "rademacher", seed)
    return (Q.T @ (Z / np.linalg.norm(Z, axis=0))) ** 2


def test_the_bracket_holds_every_probe_measure_exactly():
    lam, Q = atom_spectrum()
    A = (Q * lam) @ Q.T
    result = slq(A, num_probes=6, num_steps=20, rng=1)
    mass = probe_masses(Q, 6, result.seed)
    thresholds = np.concatenate([np.linspace(-0.1, 21, 2001), np.linspace(-3e-4, 3e-4, 61)])
    value, lower, upper = R.distribution_bounds(result.nodes, result.weights, thresholds)
    exact = np.stack([(mass[:, p, None] * (lam[:, None] < thresholds)).sum(axis=0)
                      for p in range(6)])
    assert np.all(lower <= exact + 1e-12) and np.all(exact <= upper + 1e-12)
    assert np.abs(value - exact).max() > 0.2  # the Gauss value alone is far off at the atom
    # the smoothed density of each probe lies in its band
    grid, width = np.linspace(-0.2, 21, 400), 0.05
    lo, hi = R.density_bounds(result.nodes, result.weights, grid, width)
    kernel = np.exp(-0.5 * ((grid[:, None] - lam) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    phi = (kernel @ mass).T
    assert np.all(lo <= phi + 1e-9) and np.all(phi <= hi + 1e-9)
    assert np.all(lo >= 0)


def test_a_threshold_at_the_atom_is_unresolved_and_one_in_a_gap_is_resolved():
    lam, Q = atom_spectrum()
    result = slq((Q * lam) @ Q.T, num_probes=10, num_steps=25, rng=2)
    at_zero = result.fraction_below(0.0)
    assert not at_zero.resolved and at_zero.contains(np.mean(lam < 0))
    assert at_zero.upper - at_zero.lower > 0.4  # the atom's weight is in the bracket
    between = result.mass_above(2.0)  # in the empty gap between the bulk and the outliers
    assert between.resolved and between.contains(np.mean(lam > 2.0))
    assert between.upper - between.lower < 0.05
    t = result.nearest_resolved_threshold(2.0, "above")
    assert 1 <= t <= 5 and result.fraction_below(t).resolved
    assert "Fraction(" in repr(at_zero) and len(repr(at_zero)) < 120
    from lanczos_hessian.analysis.summary import describe  # the printed text: no value

    assert describe(at_zero) == f"unresolved [{at_zero.lower:.4f}, {at_zero.upper:.4f}]"
    assert describe(between) == (f"{between.value:.4f} [{between.lower:.4f}, "
                                 f"{between.upper:.4f}]")


def test_deflated_brackets_count_the_outliers_exactly():
    lam, Q = atom_spectrum()
    A = (Q * lam) @ Q.T
    top = lanczos_eigsh(A, k=10, which="LA", tol=1e-10, rng=0)
    result = slq(A, num_probes=8, num_steps=20, rng=3, deflate=top)
    for t in (-0.02, 0.0, 0.5, 4.0, 10.0):
        below = result.fraction_below(t)
        assert below.contains(np.mean(lam < t)), (t, below)
        assert result.mass_above(t).contains(np.mean(lam > t)), t
    assert result.fraction_within(0.3).contains(np.mean(np.abs(lam) <= 0.3))


def check_over_seeds(H, num_probes, num_steps, thresholds, bands, deflate=None, seeds=20,
                     lam=None, results=None):
    """Every reported fraction's bracket contains the exact one, for every seed (``lam``: the
    exact eigenvalues of ``H`` when the caller has them; ``results``: the seeds' SLQ results
    when the caller has them, else ``slq(..., rng=seed)`` for each)."""
    lam = np.linalg.eigvalsh(H) if lam is None else lam
    misses = []
    for seed in range(seeds):
        result = slq(H, num_probes=num_probes, num_steps=num_steps, rng=seed,
                     deflate=deflate) if results is None else results[seed]
        for t in thresholds:
            for name, got, exact in (("below", result.fraction_below(t), np.mean(lam < t)),
                                     ("above", result.mass_above(t), np.mean(lam > t))):
                if not got.contains(exact):
                    misses.append((seed, name, t, exact, got))
        for b in bands:
            got = result.fraction_within(b)
            if not got.contains(np.mean(np.abs(lam) <= b)):
                misses.append((seed, "within", b, np.mean(np.abs(lam) <= b), got))
    assert not misses, misses[:5]
    return lam


def seeds_in_one_run(H, num_probes, num_steps, deflate, seeds=20):
    """The SLQ results of ``rng=0 .. seeds - 1``, from one lockstep run of all their probes
    (``probes=``, projected and normalized as drawn ones): each probe's recurrence is its
    own, so a seed's rows are its run to rounding, and one product with ``seeds x
    num_probes`` columns reads a large dense ``H`` once where the seeds' runs read it
    ``seeds`` times (the demo network: 15 s for 20 seeds, against 2.7 s each)."""
    Z = np.concatenate([draw_probes(H.shape[0], num_probes, "rademacher", seed)
                        for seed in range(seeds)], axis=1)
    together = slq(H, num_probes=seeds * num_probes, num_steps=num_steps, probes=Z,
                   deflate=deflate)
    rows = [slice(seed * num_probes, (seed + 1) * num_probes) for seed in range(seeds)]
    return [replace(together, nodes=together.nodes[r], weights=together.weights[r],
                    alphas=together.alphas[r], betas=together.betas[r],
                    num_nodes=together.num_nodes[r], num_probes=num_probes,
                    probe="rademacher", seed=seed) for seed, r in enumerate(rows)]


def cnn_hessian():
    """A small CNN (conv 3x3 x4, maxpool, linear; 190 parameters) with cross-entropy on 60
    8x8 images, float64: indefinite, with many eigenvalues near zero."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 3 * 3, 4)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (60,), generator=g)
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
    return dense_matrix(op)


def test_cnn_fractions_contain_the_dense_spectrum_over_20_seeds():
    H = cnn_hessian()
    lam = np.linalg.eigvalsh(H)
    scale = np.abs(lam).max()
    assert (lam < 0).any() and (np.abs(lam) < 1e-6 * scale).sum() > 10
    check_over_seeds(H, num_probes=10, num_steps=30,
                     thresholds=[0.0, -1e-3 * scale, 1e-3 * scale, 0.1 * scale],
                     bands=[1e-4 * scale, 1e-2 * scale], lam=lam)


@pytest.mark.slow
def test_demo_network_fractions_contain_the_dense_spectrum_over_20_seeds():
    """The demo's network and settings (10 probes x 60 steps, deflated by the top 20 and
    bottom 5 eigenpairs, Lanczos pairs as the demo's), where the Gauss value of the mass
    below 0 is far from the truth. The exact spectrum is eigvalsh's (half eigh's time); the
    20 seeds' SLQ runs are one run of their 200 probes, split (seed 0 checked alone)."""
    from lanczos_hessian.examples.problems import clusters_mlp

    problem = clusters_mlp(steps=600, seed=0)
    x, y = problem.data
    op = HessianOperator(problem.model.double(), problem.loss_fn, (x.double(), y),
                         batch_size=1000)
    H = dense_matrix(op, method="products", block_size=512)
    lam = np.linalg.eigvalsh(H)
    ends = np.r_[0:5, len(lam) - 20:len(lam)]  # the bottom 5 and top 20 pairs, as the demo
    found = lanczos_eigsh(H, k=25, which="BE", k_bottom=5, tol=1e-10, rng=0)
    assert found.all_converged
    np.testing.assert_allclose(found.eigenvalues, lam[ends], rtol=0, atol=1e-9 * lam.max())
    pairs = (found.eigenvalues, found.eigenvectors)
    scale = float(lam.max())
    results = seeds_in_one_run(H, num_probes=10, num_steps=60, deflate=pairs)
    alone = slq(H, num_probes=10, num_steps=60, rng=0, deflate=pairs)  # seed 0 by itself
    np.testing.assert_allclose(results[0].nodes, alone.nodes, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(results[0].weights, alone.weights, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(results[0].outliers, alone.outliers)
    check_over_seeds(H, num_probes=10, num_steps=60,
                     thresholds=[0.0, -1e-4 * scale, -1e-2 * scale, 1e-2 * scale],
                     bands=[1e-3 * scale], deflate=pairs, lam=lam, results=results)
    assert 0.05 < np.mean(lam < 0) < 0.6


def test_cnn_density_band_contains_the_exact_smoothed_density_over_20_seeds():
    from lanczos_hessian.linalg.density import exact_measure, spectral_density

    H = cnn_hessian()
    lam = np.linalg.eigvalsh(H)
    for seed in range(20):
        result = slq(H, num_probes=10, num_steps=30, rng=seed)
        for width in (0.02 * np.ptp(lam), 0.005 * np.ptp(lam)):
            grid, phi, lower, upper = result.density_band(width=width, num_points=400)
            _, exact = spectral_density(*exact_measure(lam), grid, width)
            assert np.all(lower <= exact + 1e-9) and np.all(exact <= upper + 1e-9), seed
            assert np.all(lower <= phi + 1e-9) and np.all(phi <= upper + 1e-9)
