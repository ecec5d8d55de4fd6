"""Lanczos and lanczos_eigsh against dense float64 spectra."""


import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg as spla
import torch

from conftest import make_cnn, cnn_data, make_mlp, mlp_data, spectrum_matrix
from lanczos_hessian import (
    HessianOperator,
    NoConvergenceError,
    NumericalWarning,
    dense_matrix,
    lanczos_eigsh,
)
from lanczos_hessian.linalg.lanczos import LanczosProcess
from lanczos_hessian.linalg.linop import as_block_matvec

EPS = np.finfo(np.float64).eps


def run_process(A, steps, seed=0, capacity=None):
    n = A.shape[0]
    matvec = as_block_matvec(A)
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(n, generator=g, dtype=torch.float64)
    process = LanczosProcess(matvec, v0, capacity or steps, g)
    for _ in range(steps):
        process.step()
    return process


@pytest.fixture(scope="module")
def network_hessian():
    model, (x, y) = make_mlp(), mlp_data()
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=5)
    return op, dense_matrix(op)


def test_full_lanczos_reproduces_eigvalsh_of_a_network_hessian(network_hessian):
    op, H = network_hessian
    n = H.shape[0]
    process = run_process(H, n)
    theta, _ = process.ritz()
    exact = np.linalg.eigvalsh(H)
    assert np.abs(theta - exact).max() <= 1e3 * EPS * np.abs(exact).max()
    # the first cycle is a true tridiagonalization: Q^T A Q = T and eigvalsh_tridiagonal agrees
    Q = process.basis.Q[:, :n].numpy()
    T = process.T[:n, :n]
    assert np.abs(Q.T @ H @ Q - T).max() <= 1e3 * EPS * np.abs(exact).max()
    tri = scipy.linalg.eigvalsh_tridiagonal(np.array(process.alphas),
                                            np.array(process.betas[: n - 1]))
    assert np.abs(tri - exact).max() <= 1e3 * EPS * np.abs(exact).max()


def test_krylov_decomposition_holds(network_hessian):
    """A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T to rounding."""
    _, H = network_hessian
    j = 15
    p = run_process(H, j, capacity=j + 1)
    Q = p.basis.Q[:, :j].numpy()
    E = H @ Q - Q @ p.T[:j, :j]
    E[:, -1] -= p.beta * p.next_q.numpy()
    assert np.abs(E).max() <= 1e3 * EPS * np.abs(H).max()


def plain_lanczos(A, steps, v0):
    """Three-term recurrence without reorthogonalization (the textbook algorithm)."""
    n = A.shape[0]
    Q = np.zeros((n, steps))
    alphas, betas = [], []
    q, q_prev, beta = v0 / np.linalg.norm(v0), np.zeros(n), 0.0
    for j in range(steps):
        Q[:, j] = q
        w = A @ q - beta * q_prev
        alpha = q @ w
        w -= alpha * q
        beta = np.linalg.norm(w)
        alphas.append(alpha)
        betas.append(beta)
        q_prev, q = q, w / beta
    return Q, np.array(alphas), np.array(betas[:-1])


def test_full_reorthogonalization_keeps_orthogonality_where_plain_lanczos_makes_ghosts():
    # well separated top eigenvalues above a cluster: the top ones converge fast, and then
    # plain Lanczos loses orthogonality and produces spurious copies ("ghosts")
    eigenvalues = np.concatenate([np.linspace(0, 1, 190), [5.0, 6.0, 8.0, 10.0, 20.0] * 2])
    eigenvalues = np.unique(eigenvalues)  # distinct: every copy in a Ritz set is a ghost
    A = spectrum_matrix(eigenvalues, seed=3)
    steps = 120
    v0 = np.random.default_rng(0).standard_normal(len(eigenvalues))
    Q, alphas, betas = plain_lanczos(A, steps, v0)
    plain_theta = scipy.linalg.eigvalsh_tridiagonal(alphas, betas)
    ghosts = int(np.sum(np.abs(plain_theta - 20.0) < 1e-8)) - 1
    assert ghosts >= 1, "the test matrix must provoke ghosts in plain Lanczos"
    assert np.abs(Q.T @ Q - np.eye(steps)).max() > 0.1

    process = run_process(A, steps)
    Q = process.basis.Q[:, :steps].numpy()
    orthogonality = np.abs(Q.T @ Q - np.eye(steps)).max()
    assert orthogonality <= 100 * EPS * np.sqrt(steps), orthogonality
    theta, _ = process.ritz()
    assert int(np.sum(np.abs(theta - 20.0) < 1e-8)) == 1


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
def test_eigsh_matches_dense_spectrum_of_a_cnn_hessian(which):
    model, (x, y) = make_cnn(), cnn_data()
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=6)
    exact = np.linalg.eigvalsh(dense_matrix(op))
    k = 6
    result = lanczos_eigsh(op, k=k, which=which, tol=1e-10, rng=0, ncv=20, true_residuals=True)
    expected = {
        "LA": exact[-k:], "SA": exact[:k],
        "BE": np.concatenate([exact[: k // 2], exact[-(k - k // 2):]]),
        "LM": np.sort(exact[np.argsort(np.abs(exact))[-k:]]),
    }[which]
    scale = np.abs(exact).max()
    assert result.all_converged
    # a half-converged value is off by far more than 1e-9 relative
    assert np.abs(result.eigenvalues - expected).max() <= 1e-9 * scale
    assert np.all(np.abs(result.eigenvalues - expected) <= result.error_bounds + 1e-12 * scale)
    # returned pairs satisfy their reported residuals
    assert np.all(result.residuals <= result.residual_bounds + 1e3 * EPS * scale)
    Y = result.eigenvectors
    assert np.abs(Y.T @ Y - np.eye(k)).max() < 1e-10
    assert result.num_passes == result.num_matvecs - k + 1  # one block pass for residuals


def test_thick_restart_converges_with_a_small_basis():
    rng = np.random.default_rng(1)
    eigenvalues = np.concatenate([rng.uniform(-1, 1, 290), np.arange(10) + 5.0])
    A = spectrum_matrix(eigenvalues, seed=1)
    exact = np.sort(eigenvalues)
    result = lanczos_eigsh(A, k=5, which="SA", tol=1e-9, ncv=12, rng=0, max_matvecs=5000)
    assert result.num_restarts > 5 and result.all_converged
    assert np.abs(result.eigenvalues - exact[:5]).max() < 1e-8
    result = lanczos_eigsh(A, k=8, which="LA", tol=1e-10, ncv=12, rng=0)
    assert np.abs(result.eigenvalues - exact[-8:]).max() < 1e-9


def test_breakdown_finds_every_copy_of_a_multiple_eigenvalue():
    eigenvalues = np.array([5.0] * 3 + [4.0] * 2 + [1.0] * 20 + [0.0] * 15)
    A = spectrum_matrix(eigenvalues, seed=2)
    # from one start vector the Krylov space has dimension 4 (distinct values): breakdown
    result = lanczos_eigsh(A, k=5, which="LA", tol=1e-10, rng=0)
    np.testing.assert_allclose(result.eigenvalues, [4.0, 4.0, 5.0, 5.0, 5.0], atol=1e-10)
    assert result.all_converged


def test_scipy_eigsh_and_lobpcg_run_on_the_operator_and_agree(network_hessian):
    op, H = network_hessian
    exact = np.linalg.eigvalsh(H)
    arpack = np.sort(spla.eigsh(op, k=4, which="LA", tol=1e-10)[0])
    ours = lanczos_eigsh(op, k=4, which="LA", tol=1e-10, rng=0).eigenvalues
    X = np.random.default_rng(0).standard_normal((op.shape[0], 4))
    lobpcg = np.sort(spla.lobpcg(op, X, tol=1e-8, maxiter=500, largest=True)[0])
    np.testing.assert_allclose(arpack, exact[-4:], rtol=1e-8)
    np.testing.assert_allclose(ours, arpack, rtol=1e-8)
    np.testing.assert_allclose(lobpcg, arpack, rtol=1e-5)


def test_unconverged_pairs_warn_or_raise_with_the_partial_result():
    A = spectrum_matrix(np.linspace(0, 1, 200), seed=0)  # no gaps: slow convergence
    with pytest.warns(NumericalWarning, match="did not reach"):
        result = lanczos_eigsh(A, k=4, which="LA", tol=1e-12, max_matvecs=25, rng=0)
    assert not result.all_converged and result.num_matvecs == 25
    with pytest.raises(NoConvergenceError) as info:
        lanczos_eigsh(A, k=4, which="LA", tol=1e-12, max_matvecs=25, rng=0,
                      raise_on_unconverged=True)
    assert len(info.value.result.eigenvalues) == 4


def test_reproducible_from_seed_and_v0():
    A = spectrum_matrix(np.linspace(-1, 3, 80), seed=4)
    a = lanczos_eigsh(A, k=3, rng=7)
    b = lanczos_eigsh(A, k=3, rng=7)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.num_matvecs == b.num_matvecs
    v0 = np.ones(80)
    c = lanczos_eigsh(A, k=3, v0=v0)
    d = lanczos_eigsh(A, k=3, v0=torch.ones(80))
    assert np.array_equal(c.eigenvalues, d.eigenvalues)


def test_bare_callable_and_k_bottom():
    eigenvalues = np.linspace(-2, 7, 60)
    A = spectrum_matrix(eigenvalues, seed=5)
    result = lanczos_eigsh(lambda x: A @ x, k=5, which="BE", k_bottom=2, dim=60, tol=1e-10,
                           rng=0)
    np.testing.assert_allclose(result.eigenvalues,
                               np.concatenate([eigenvalues[:2], eigenvalues[-3:]]), atol=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "out of range"), ({"k": 61}, "out of range"), ({"which": "XX"}, "unknown which"),
    ({"tol": 0.0}, "tol must be positive"), ({"k": 5, "ncv": 4}, "ncv"),
    ({"k": 4, "which": "LA", "k_bottom": 2}, "k_bottom"),
])
def test_bad_arguments_fail_before_any_product(kwargs, message):
    calls = []

    def matvec(x):
        calls.append(1)
        return x

    with pytest.raises(ValueError, match=message):
        lanczos_eigsh(matvec, dim=60, **kwargs)
    assert not calls


def test_converged_needs_the_measured_residual_and_a_tol_below_float32s_floor_is_said():
    """float32 products cannot confirm residuals near float64 levels: a tol below the
    floor is reported before any product, and no pair whose measured residual misses the
    threshold is called converged."""
    import torch

    from lanczos_hessian import HessianOperator, NumericalWarning

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
    with pytest.warns(NumericalWarning, match=r"tol=1e-10 is below the precision floor 4\.8e-07"):
        result = lanczos_eigsh(op, k=3, which="LA", tol=1e-10, rng=0, true_residuals=True,
                               max_matvecs=200)
    threshold = 1e-10 * result.anorm
    assert np.all(result.residual_bounds <= threshold)  # the free bound alone says yes...
    assert np.any(result.residuals > threshold)  # ...the float32 products say otherwise
    assert not result.converged[result.residuals > threshold].any()
