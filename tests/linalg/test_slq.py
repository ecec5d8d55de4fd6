"""Tests for lanczos_hessian.linalg.slq against dense float64 matrices with known spectra.

Test spectra (``A = Q diag(lam) Q^T`` with a random orthogonal ``Q``):

* ``uniform``: ``n = 800`` values equispaced on ``[0, 1]``;
* ``spiked``: a Marchenko-Pastur bulk (eigenvalues of ``X^T X / N``, ``X`` ``1200 x 600``
  standard normal, bulk on ~``[0.09, 2.9]``) whose 10 largest values are replaced by
  spikes equispaced on ``[15, 40]``;
* ``null``: ``n = 800`` with 720 exact zeros, 70 positive MP values (on ~``[0.07, 2.9]``)
  and 10 negative ones on ``[-0.5, -0.1]`` (an over-parametrized Hessian).

Operators are passed as torch tensors (the fast path); counting goes through a
``BlockMatvec`` or a counting ``scipy`` ``LinearOperator``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator
from conftest import spectrum_matrix

from lanczos_hessian.linalg import density as D
from lanczos_hessian.linalg.eigsh import lanczos_eigsh
from lanczos_hessian.linalg.lanczos import LanczosProcess
from lanczos_hessian.linalg.linop import as_block_matvec
from lanczos_hessian.linalg.slq import (
    SLQResult,
    SLQStep,
    deflated_slq,
    draw_probes,
    gauss_quadrature,
    slq,
)

NUM_SPIKES = 10
SPIKES = np.linspace(15.0, 40.0, NUM_SPIKES)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: these matrices are small, and on a busy 2-core machine torch's
    spinning OpenMP threads make each tiny operation ~40x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ test matrices


def rotate(lam, seed):
    """``(Q diag(lam) Q^T, Q)`` for a random orthogonal ``Q`` (QR of a Gaussian matrix)."""
    g = np.random.default_rng(seed)
    Q = torch.linalg.qr(torch.from_numpy(g.standard_normal((lam.size, lam.size))))[0]
    A = (Q * torch.from_numpy(lam)) @ Q.T
    return (0.5 * (A + A.T)).numpy(), Q.numpy()


def mp_values(n, ratio, seed):
    """Eigenvalues of ``X^T X / N`` for a standard normal ``N x n`` ``X``, ``n / N = ratio``."""
    g = np.random.default_rng(seed)
    X = torch.from_numpy(g.standard_normal((int(round(n / ratio)), n)))
    return torch.linalg.eigvalsh(X.T @ X / X.shape[0]).numpy()


@pytest.fixture(scope="module")
def uniform():
    lam = np.linspace(0.0, 1.0, 800)
    A, _ = rotate(lam, 1)
    return lam, torch.from_numpy(A)


@pytest.fixture(scope="module")
def spiked():
    lam = mp_values(600, 0.5, 0)
    lam[-NUM_SPIKES:] = SPIKES
    A, Q = rotate(lam, 2)
    return lam, torch.from_numpy(A), Q


@pytest.fixture(scope="module")
def null_space():
    g = np.random.default_rng(3)
    lam = np.concatenate([np.zeros(720), mp_values(70, 0.5, 4), -0.1 - 0.4 * g.random(10)])
    A, _ = rotate(lam, 5)
    return lam, torch.from_numpy(A)


def w1_to_exact(result, lam):
    return D.wasserstein1(*result.measure(), *D.exact_measure(lam))


def unit(Z):
    return Z / np.linalg.norm(Z, axis=0)


# ------------------------------------------------------------------ convergence in W1


def test_w1_decreases_with_num_steps(uniform):
    lam, A = uniform
    steps = (4, 8, 16, 32, 64)
    w1 = [w1_to_exact(slq(A, 10, m, rng=0), lam) for m in steps]
    # measured: 0.0642, 0.0329, 0.0165, 0.00873, 0.00568
    assert all(a > b for a, b in zip(w1, w1[1:])), w1
    assert w1[0] > 0.05 and w1[-1] < 0.008
    assert w1[0] / w1[3] > 6  # ~1/m while the quadrature error dominates


def test_w1_decreases_with_num_probes(spiked):
    lam, A, _ = spiked
    probes = (1, 4, 16, 64)
    # m = 40 steps: the remaining error is the probes' (their random spike weights)
    w1 = [np.mean([w1_to_exact(slq(A, P, 40, rng=seed), lam) for seed in range(3)])
          for P in probes]
    # measured (mean of 3 seeds): 0.278, 0.100, 0.0847, 0.0385
    assert all(a > b for a, b in zip(w1, w1[1:])), w1
    assert w1[0] / w1[-1] > 5


# ------------------------------------------------------------------ trace and moments


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_trace_unbiased_within_error_bars(spiked, probe):
    lam, A, _ = spiked
    z = []
    for seed in range(20):
        est = slq(A, 10, 20, probe=probe, rng=100 + seed).trace()
        z.append((est.value - lam.sum()) / est.stderr)
    z = np.array(z)
    # measured: mean z = -0.30 (Rademacher), -0.02 (Gaussian); max |z| = 2.6, 2.2.
    # A bias of one error bar would put mean(z) near 1 (its noise is ~1/sqrt(20) = 0.22)
    assert abs(z.mean()) < 0.6, z
    assert np.mean(np.abs(z) < 3) >= 0.9, z


def test_rademacher_trace_exact_on_diagonal():
    lam = np.random.default_rng(0).standard_normal(300)
    est = slq(torch.from_numpy(np.diag(lam)), 5, 3, rng=1).trace()
    # z^T D z = sum_i d_i z_i^2 = tr(D) for z in {-1, 1}^n: every probe is exact
    np.testing.assert_allclose(est.per_probe, lam.sum(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_moments_are_exact_probe_by_probe(spiked, probe):
    lam, A, _ = spiked
    m, P, n = 4, 5, lam.size
    result = slq(A, P, m, probe=probe, rng=7)
    U = unit(draw_probes(n, P, probe, 7))
    An = A.numpy()
    moments = result.moments(2 * m - 1, normalized=False)
    V = U.copy()
    for q in range(2 * m):
        exact = n * np.einsum("ip,ip->p", U, V)  # n u^T A^q u, degree <= 2m - 1
        np.testing.assert_allclose(moments[q].per_probe, exact, rtol=1e-10)
        V = An @ V
    assert moments[0].value == pytest.approx(n, rel=1e-12)


def test_moment_estimates_match_true_moments(null_space):
    lam, A = null_space
    result = slq(A, 30, 15, rng=3)
    for q, est in enumerate(result.moments(4, normalized=False)):
        truth = np.sum(lam ** q)
        assert abs(est.value - truth) <= 4 * est.stderr + 1e-9 * abs(truth), (q, est, truth)


def test_null_space_mass(null_space):
    lam, A = null_space
    result = slq(A, 10, 30, rng=0)
    # 720 / 800 = 0.9 of the spectrum is exactly 0, and no other eigenvalue lies within
    # 0.05 of 0: each Gauss rule puts one node of weight ~0.9 there (at |theta| ~ 4e-6)
    near_zero = result.fraction_within(0.01)
    assert near_zero.value == pytest.approx(0.9, abs=3 * near_zero.stderr + 0.005)
    assert (np.sum(np.abs(result.nodes) <= 0.01, axis=1) == 1).all()
    negative = result.fraction_below(-0.01)
    assert negative.value == pytest.approx(10 / 800, abs=3 * negative.stderr + 0.005)
    assert w1_to_exact(result, lam) < 0.02  # measured 0.0038


# ------------------------------------------------------------------ lockstep


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_lockstep_equals_probe_by_probe(spiked, uniform, reorthogonalize):
    """Same alphas, betas, nodes, weights to rounding. Without reorthogonalization the
    spiked matrix is not used: once its spikes converge (step ~18) the three-term recurrence
    amplifies rounding differences (block vs single products) ~1e3-fold per step, as it
    must in floating point; on the uniform spectrum they stay at 1e-15 for 80 steps."""
    lam, A = (spiked[:2] if reorthogonalize else uniform)
    n, P, m = lam.size, 4, 25
    Z = draw_probes(n, P, "rademacher", 11)
    block = slq(A, P, m, rng=11, reorthogonalize=reorthogonalize)
    assert block.seed == 11
    for p in range(P):
        single = slq(A, 1, m, probes=Z[:, [p]], reorthogonalize=reorthogonalize)
        np.testing.assert_allclose(block.alphas[p], single.alphas[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(block.betas[p], single.betas[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(block.nodes[p], single.nodes[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(block.weights[p], single.weights[0], rtol=0, atol=1e-10)


def test_lockstep_matches_lanczos_process(spiked):
    """Each probe is the recurrence of lanczos.LanczosProcess started from the probe."""
    lam, A, _ = spiked
    n, P, m = lam.size, 3, 30
    Z = draw_probes(n, P, "gaussian", 5)
    result = slq(A, P, m, probe="gaussian", rng=5)
    matvec = as_block_matvec(A)
    for p in range(P):
        proc = LanczosProcess(matvec, torch.from_numpy(Z[:, p]), m, torch.Generator())
        for _ in range(m):
            proc.step()
        np.testing.assert_allclose(result.alphas[p], proc.alphas, rtol=0, atol=1e-10)
        np.testing.assert_allclose(result.betas[p], proc.betas, rtol=0, atol=1e-10)
        theta, weights = gauss_quadrature(proc.alphas, proc.betas[:-1])
        np.testing.assert_allclose(result.nodes[p], theta, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.weights[p], weights, rtol=0, atol=1e-10)


def test_one_pass_per_step_whatever_num_probes(uniform):
    lam, A = uniform
    matvec = as_block_matvec(A)
    result = slq(matvec, 7, 13, rng=0)
    assert matvec.num_passes == 13 == result.num_passes
    assert matvec.num_vectors == 7 * 13 == result.num_matvecs
    calls = []
    An = A.numpy()

    def matmat(X):
        calls.append(X.shape[1])
        return An @ X

    op = LinearOperator(An.shape, matvec=lambda x: An @ x, matmat=matmat, dtype=np.float64)
    result = slq(op, 9, 6, rng=0)
    assert calls == [9] * 6 and result.num_passes == 6


def test_breakdown_ends_probe_with_exact_quadrature():
    values = np.array([-1.0, 0.5, 2.0, 3.0, 7.0])
    lam = np.repeat(values, 20)  # n = 100, five distinct eigenvalues
    A = torch.from_numpy(np.diag(lam))
    result = slq(A, 4, 20, rng=2)
    # the Krylov space of any probe has dimension 5: every probe stops after 5 steps
    assert list(result.num_nodes) == [5] * 4
    assert result.num_passes == 5 and result.nodes.shape == (4, 5)
    np.testing.assert_allclose(result.betas[:, -1], 0.0)
    U = unit(draw_probes(100, 4, "rademacher", 2))
    for p in range(4):
        np.testing.assert_allclose(result.nodes[p], values, atol=1e-12)
        exact = (U[:, p] ** 2).reshape(5, 20).sum(axis=1)  # mass of u_p on each eigenspace
        np.testing.assert_allclose(result.weights[p], exact, atol=1e-12)


def test_finished_probe_is_dropped_from_later_products():
    lam = np.linspace(1.0, 2.0, 50)
    A = torch.from_numpy(np.diag(lam))
    Z = draw_probes(50, 3, "gaussian", 0)
    Z[:, 1] = 0.0
    Z[7, 1] = 1.0  # an eigenvector: breakdown after one step
    matvec = as_block_matvec(A)
    result = slq(matvec, 3, 10, probes=Z)
    assert list(result.num_nodes) == [10, 1, 10]
    assert result.num_passes == 10 and result.num_matvecs == 3 + 9 * 2
    assert result.nodes[1, 0] == pytest.approx(lam[7], abs=1e-14)
    assert np.isnan(result.nodes[1, 1:]).all() and (result.weights[1, 1:] == 0).all()
    assert result.probe == "given" and result.seed is None
    assert D.trace_estimate(result.nodes, result.weights, dim=50).per_probe[1] == \
        pytest.approx(50 * lam[7])


def test_more_steps_than_dimension():
    lam = np.linspace(-1.0, 1.0, 30)
    A, _ = rotate(lam, 0)
    result = slq(torch.from_numpy(A), 2, 50, rng=0)
    assert list(result.num_nodes) == [30, 30] and result.num_passes == 30
    for p in range(2):  # the full Krylov space: the nodes are the eigenvalues
        np.testing.assert_allclose(result.nodes[p], lam, atol=1e-10)


# ------------------------------------------------------------------ deflation


def test_deflation_with_exact_eigenpairs(spiked):
    lam, A, Q = spiked
    n, k = lam.size, NUM_SPIKES
    result = slq(A, 10, 30, rng=1, deflate=(lam[-k:], Q[:, -k:]))
    assert result.bulk_mass == pytest.approx((n - k) / n)
    np.testing.assert_array_equal(result.outliers, SPIKES)
    assert np.isnan(result.outlier_residuals).all()
    # no node of the bulk rules comes near a spike
    assert np.nanmax(result.nodes) < lam[-k - 1] + 1e-8
    x, w = result.measure()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w[x > 10].sum() == pytest.approx(k / n, abs=1e-14)
    est = result.trace()
    assert abs(est.value - lam.sum()) < 4 * est.stderr
    # the bulk measure alone is close to the true bulk
    # measured 0.0313 (probe noise: 10 probes; cf. 0.0331 below with 20 steps)
    assert D.wasserstein1(result.nodes, result.weights, *D.exact_measure(lam[:-k])) < 0.045


def test_deflated_probe_moments_exact(spiked):
    lam, A, Q = spiked
    n, k, m = lam.size, 3, 3
    Y = Q[:, -k:]
    result = slq(A, 4, m, probe="gaussian", rng=9, deflate=(lam[-k:], Y))
    Z = draw_probes(n, 4, "gaussian", 9)
    U = unit(Z - Y @ (Y.T @ Z))
    An = A.numpy()
    moments = result.moments(2 * m - 1, normalized=False)
    V = U.copy()
    for q in range(2 * m):
        exact = np.sum(lam[-k:] ** q) + (n - k) * np.einsum("ip,ip->p", U, V)
        np.testing.assert_allclose(moments[q].per_probe, exact, rtol=1e-10)
        V = An @ V


def test_deflated_slq_beats_plain_slq_at_equal_cost(spiked):
    """Same number of single-vector operator applications for both (eigsh included)."""
    lam, A, _ = spiked
    bulk = lam[:-NUM_SPIKES]
    P, m = 10, 20
    cut = 0.5 * (bulk[-1] + SPIKES[0])  # between the bulk edge and the smallest spike
    rows = []
    for seed in range(3):
        defl = deflated_slq(A, NUM_SPIKES, 0, P, m, rng=seed)
        budget = defl.num_matvecs
        assert budget == defl.deflation_matvecs + P * m
        plain_steps = slq(A, P, budget // P, rng=seed)     # the budget as longer probes
        plain_probes = slq(A, budget // m, m, rng=seed)    # ... or as more probes
        assert plain_steps.num_matvecs <= budget and plain_probes.num_matvecs <= budget
        bulk_w1 = [D.wasserstein1(defl.nodes, defl.weights, *D.exact_measure(bulk))]
        for plain in (plain_steps, plain_probes):
            x, w = plain.measure()
            bulk_w1.append(D.wasserstein1(x[x < cut], w[x < cut], *D.exact_measure(bulk)))
        full_w1 = [w1_to_exact(r, lam) for r in (defl, plain_steps, plain_probes)]
        rows.append(bulk_w1 + full_w1)
    bulk_d, bulk_s, bulk_p, full_d, full_s, full_p = np.mean(rows, axis=0)
    # measured (mean of 3 seeds; budget 219-220 = 19-20 eigsh + 200 SLQ): bulk W1 0.0331
    # deflated, 0.0554 plain with 21-22 steps, 0.0629 plain with 20-22 probes; whole
    # spectrum 0.0325 deflated vs 0.0892 and 0.0939
    assert bulk_d < 0.7 * min(bulk_s, bulk_p), rows
    assert full_d < 0.45 * min(full_s, full_p), rows
    np.testing.assert_allclose(defl.outliers, SPIKES, rtol=1e-6)
    assert (defl.outlier_residuals <= 1e-6 * 40.0).all()


def test_deflated_slq_counts_every_application(spiked):
    lam, _, Q = spiked
    lam = lam.copy()
    lam[:3] = [-10.0, -8.0, -5.0]  # separated bottom eigenvalues, for k_bottom
    A = torch.from_numpy(Q) @ (torch.from_numpy(lam)[:, None] * torch.from_numpy(Q).T)
    for k_top, k_bottom in ((4, 3), (5, 1), (0, 2)):
        matvec = as_block_matvec(A)
        result = deflated_slq(matvec, k_top, k_bottom, 3, 8, rng=0)
        assert matvec.num_vectors == result.num_matvecs
        assert matvec.num_passes == result.num_passes
        assert result.num_matvecs == result.deflation_matvecs + 3 * 8
        assert result.deflation_matvecs > 0 and len(result.outliers) == k_top + k_bottom
        expected = np.sort(np.concatenate([lam[:k_bottom], lam[lam.size - k_top:]]))
        np.testing.assert_allclose(np.sort(result.outliers), expected, atol=1e-5)
        assert result.bulk_mass == pytest.approx(1 - (k_top + k_bottom) / lam.size)


def test_deflate_accepts_eigsh_result(spiked):
    lam, A, _ = spiked
    eig = lanczos_eigsh(A, 5, "LA", rng=0)
    result = slq(A, 3, 10, rng=0, deflate=eig)
    np.testing.assert_array_equal(result.outliers, eig.eigenvalues)
    np.testing.assert_array_equal(result.outlier_residuals, eig.residual_bounds)


# ------------------------------------------------------------------ no reorthogonalization


def test_no_reorthogonalization_close_to_full(spiked):
    lam, A, _ = spiked
    full = slq(A, 10, 80, rng=0)
    plain = slq(A, 10, 80, rng=0, reorthogonalize=False)
    # orthogonality IS lost: every probe has ghost copies of the top spike (measured: 4)
    ghosts = np.sum(np.abs(plain.nodes - SPIKES[-1]) < 1e-6, axis=1)
    assert (ghosts >= 2).all() and (np.sum(np.abs(full.nodes - SPIKES[-1]) < 1e-6, 1) == 1).all()
    # ... yet the quadrature measure barely moves: measured W1 = 0.0119 (spectral range 40),
    # against 0.0484 (no reorthogonalization) and 0.0465 (full) to the exact spectrum
    assert D.wasserstein1(*plain.measure(), *full.measure()) < 0.02
    assert abs(w1_to_exact(plain, lam) - w1_to_exact(full, lam)) < 0.005
    for a, b in zip(plain.moments(6), full.moments(6)):
        assert a.value == pytest.approx(b.value, rel=1e-10)


# ------------------------------------------------------------------ callback, seeds, errors


def test_callback_streams_every_step(uniform):
    lam, A = uniform
    states = []
    result = slq(A, 3, 6, rng=0, callback=lambda step, state: states.append((step, state)))
    assert [s for s, _ in states] == list(range(1, 7))
    assert all(isinstance(st, SLQStep) and st.step == s for s, st in states)
    assert [st.num_passes for _, st in states] == list(range(1, 7))
    last = states[-1][1]
    np.testing.assert_array_equal(last.alphas, result.alphas)
    np.testing.assert_array_equal(np.stack([st.alpha for _, st in states], 1), result.alphas)
    nodes, weights = last.quadrature()
    np.testing.assert_array_equal(nodes, result.nodes)
    np.testing.assert_array_equal(weights, result.weights)


def test_seed_reproduces_probes(uniform):
    lam, A = uniform
    first = slq(A, 2, 5)
    assert isinstance(first.seed, int) and isinstance(first, SLQResult)
    again = slq(A, 2, 5, rng=first.seed)
    np.testing.assert_array_equal(first.nodes, again.nodes)
    from_gen = slq(A, 2, 5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(from_gen.nodes, slq(A, 2, 5, rng=from_gen.seed).nodes)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_probes": 0}, "num_probes"),
    ({"num_steps": 0}, "num_steps"),
    ({"num_probes": 2.5}, "num_probes"),
    ({"probe": "sphere"}, "probe"),
    ({"probes": np.ones((5, 2))}, "probes have shape"),
    ({"deflate": (np.ones(2), np.ones((40, 3)))}, "eigenvectors have shape"),
    ({"deflate": (np.ones(2), np.ones((40, 2)))}, "orthonormal"),
])
def test_bad_arguments(kwargs, match):
    A = torch.eye(40, dtype=torch.float64)
    args = {"num_probes": 2, "num_steps": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        slq(A, args.pop("num_probes"), args.pop("num_steps"), **args)


def test_bad_deflated_slq_arguments():
    A = torch.eye(40, dtype=torch.float64)
    with pytest.raises(ValueError, match="k_top"):
        deflated_slq(A, -1)
    with pytest.raises(ValueError, match="k_top \\+ k_bottom"):
        deflated_slq(A, 0, 0)
    with pytest.raises(ValueError, match="num_steps"):
        deflated_slq(A, 2, num_steps=0)


def test_basis_in_host_memory_gives_same_numbers(uniform):
    lam, A = uniform
    a = slq(A, 3, 10, rng=0)
    b = slq(A, 3, 10, rng=0, basis_device="cpu")
    np.testing.assert_array_equal(a.nodes, b.nodes)


# ---- adaptive probes ------------------------------------------------------------------------
@pytest.mark.slow  # ten adaptive runs, 2-5 s
def test_adaptive_slq_stops_when_the_interval_is_narrow_enough():
    """Probes are added in rounds until the 95% interval of the trace has half-width at most
    the target; the exact trace is then within the target in about 95% of seeds."""
    from scipy.stats import t as student_t

    from lanczos_hessian import adaptive_slq

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-0.5, 1.0, 290), [4.0, 5.0, 6.0, 8.0]])
    A = spectrum_matrix(values, seed=1)
    exact = values.sum()
    target = 0.04 * abs(exact)
    inside, probes = 0, []
    for seed in range(10):
        result = adaptive_slq(A, target, probes_per_round=5, max_probes=400, num_steps=20,
                              rng=seed)
        trace = result.trace()
        P = result.num_probes
        assert student_t.ppf(0.975, P - 1) * trace.stderr <= target
        if P > 5:  # the round before did not meet the rule
            before = trace.per_probe[:P - 5]
            assert student_t.ppf(0.975, P - 6) * before.std(ddof=1) / np.sqrt(P - 5) > target
        assert result.target_error == target and result.confidence == 0.95
        assert P % 5 == 0 and result.nodes.shape[0] == P
        assert result.num_passes == 20 * P // 5  # one pass per step and round
        inside += abs(trace.value - exact) <= target
        probes.append(P)
    assert inside >= 9
    assert max(probes) > 5  # the target needed more than one round somewhere


def test_adaptive_slq_confidence_sets_the_quantile():
    """A lower confidence stops earlier: 68.27% asks for a standard error of the target."""
    from lanczos_hessian import adaptive_slq

    A = spectrum_matrix(np.linspace(-1, 3, 120), seed=0)
    loose = adaptive_slq(A, 4.0, confidence=0.6827, probes_per_round=4, max_probes=400,
                         num_steps=10, rng=3)
    strict = adaptive_slq(A, 4.0, confidence=0.99, probes_per_round=4, max_probes=400,
                          num_steps=10, rng=3)
    assert loose.num_probes < strict.num_probes
    assert loose.trace().stderr <= 4.0 * 1.2  # t quantile ~1 (a little more for small P)


def test_adaptive_slq_refuses_a_bad_target_before_any_application():
    from lanczos_hessian import adaptive_slq

    calls = []

    def matvec(x):
        calls.append(1)
        return x

    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="target_error must be a positive number"):
            adaptive_slq(matvec, bad, dim=20)
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="confidence must be a probability"):
            adaptive_slq(matvec, 1.0, confidence=bad, dim=20)
    with pytest.raises(ValueError, match="target_error must be a positive number"):
        deflated_slq(matvec, 1, 0, dim=20, target_error=-2.0)
    with pytest.raises(ValueError, match="confidence must be a probability"):
        deflated_slq(matvec, 1, 0, dim=20, target_error=1.0, confidence=2)
    assert not calls


def test_adaptive_slq_warns_when_the_probe_budget_runs_out():
    from lanczos_hessian import NumericalWarning, adaptive_slq

    A = spectrum_matrix(np.linspace(-1, 3, 120), seed=0)
    with pytest.warns(NumericalWarning, match="max_probes=6"):
        result = adaptive_slq(A, 1e-9, probes_per_round=3, max_probes=6, num_steps=10, rng=0)
    assert result.num_probes == 6


def test_every_slq_result_measures_its_orthogonality():
    A = spectrum_matrix(np.linspace(-1, 3, 150), seed=0)
    full = slq(A, 3, 40, rng=0)
    assert full.orthogonality < 1e-13 and full.duplicate_nodes == 0
    plain = slq(A, 3, 60, rng=0, reorthogonalize=False)
    assert np.isnan(plain.orthogonality)


def test_hutchinson_trace_against_the_exact_trace_one_pass_per_block():
    from lanczos_hessian import hutchinson_trace

    values = np.linspace(-1.0, 3.0, 200)
    A = spectrum_matrix(values, seed=0)
    calls = []

    def matmat(X):
        calls.append(X.shape[1])
        return A @ X

    op = LinearOperator(A.shape, matvec=matmat, matmat=matmat, dtype=np.float64)
    t = hutchinson_trace(op, 60, probes_per_pass=20, rng=0)
    assert calls == [20, 20, 20]  # three passes for 60 probes
    assert t.num_probes == 60 and abs(t.value - values.sum()) <= 3 * t.stderr
    # the same probes as SLQ with one step: the same trace
    one_step = slq(A, 60, 1, rng=0).trace()
    np.testing.assert_allclose(t.value, one_step.value, rtol=1e-12)
    with pytest.raises(ValueError, match="num_probes must be an integer >= 1"):
        hutchinson_trace(A, 0)
