"""Block Lanczos (``block_size > 1``) against dense float64 spectra.

One application of the operator serves ``b`` vectors; the eigenpairs must be those of the
single-vector mode and of ``numpy.linalg.eigvalsh``: at both ends, on clustered spectra, with
multiplicities larger than the block, with a large exact null space, and after an invariant
subspace is found early (block breakdown).
"""

import numpy as np
import pytest
import torch

from conftest import spectrum_matrix
from lanczos_hessian import lanczos_eigsh

TOL = 1e-10


def _spectrum(kind: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    if kind == "clustered":  # outliers over a dense cluster, a clustered negative end
        return np.concatenate([rng.uniform(-0.05, 0.05, 250), -0.3 + 1e-3 * rng.random(20),
                               [2.0, 2.5, 3.0, 4.0]])
    if kind == "multiple":  # the top eigenvalue five times, more copies than the block
        return np.concatenate([rng.uniform(-1, 1, 200), [3.0] * 5, [2.0, -2.0, -2.0]])
    if kind == "null":  # a null space of dimension 200, a few values each side
        return np.concatenate([np.zeros(200), rng.uniform(0.5, 1, 30), -rng.uniform(0.1, 0.2, 10)])
    raise ValueError(kind)


def _wanted(values, k, which, k_bottom=None):
    values = np.sort(values)
    if which == "LA":
        return values[-k:]
    if which == "SA":
        return values[:k]
    return np.concatenate([values[:k_bottom], values[len(values) - (k - k_bottom):]])


@pytest.mark.parametrize("kind", ["clustered", "multiple", "null"])
@pytest.mark.parametrize("which,k,k_bottom", [("LA", 6, None), ("SA", 4, None), ("BE", 7, 3)])
@pytest.mark.parametrize("block_size", [3, 5])
def test_block_mode_finds_the_dense_eigenvalues(kind, which, k, k_bottom, block_size):
    values = _spectrum(kind)
    A = spectrum_matrix(values, seed=1)
    exact = _wanted(values, k, which, k_bottom)
    scale = np.abs(values).max()
    block = lanczos_eigsh(A, k=k, which=which, k_bottom=k_bottom, tol=TOL, rng=0, ncv=60,
                          block_size=block_size, max_matvecs=6000, true_residuals=True)
    single = lanczos_eigsh(A, k=k, which=which, k_bottom=k_bottom, tol=TOL, rng=0, ncv=60,
                           max_matvecs=6000)
    assert block.converged.all()
    np.testing.assert_allclose(np.sort(block.eigenvalues), exact, atol=1e-8 * scale)
    if kind != "multiple":  # single-vector Lanczos sees one copy of a multiple eigenvalue
        np.testing.assert_allclose(np.sort(block.eigenvalues), np.sort(single.eigenvalues),
                                   atol=1e-8 * scale)
    # the free bounds are honest: the measured residuals are no larger (up to rounding)
    assert np.all(block.residuals <= block.residual_bounds + 1e-12 * scale)
    assert np.all(block.residuals <= TOL * scale * 1.01)
    # Ritz vectors orthonormal and eigenvectors of A
    Y = block.eigenvectors
    np.testing.assert_allclose(Y.T @ Y, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(A @ Y, Y * block.eigenvalues, atol=1e-8 * scale)
    # one pass serves the whole block (the last pass measures the k residuals)
    assert block.num_matvecs == (block.num_passes - 1) * block_size + k


def test_block_mode_counts_passes_not_vectors_against_the_single_mode():
    values = _spectrum("clustered")
    A = spectrum_matrix(values, seed=1)
    single = lanczos_eigsh(A, k=4, which="LA", tol=TOL, rng=0, ncv=60)
    block = lanczos_eigsh(A, k=4, which="LA", tol=TOL, rng=0, ncv=60, block_size=4)
    np.testing.assert_allclose(np.sort(block.eigenvalues), np.sort(single.eigenvalues),
                               atol=1e-9)
    assert block.num_passes < single.num_passes  # the point of the block mode


def test_an_invariant_subspace_found_early_is_a_block_breakdown():
    """Three distinct eigenvalues: the Krylov space of a block of 4 is exhausted after a few
    steps. The solver must continue in the complement and find every copy."""
    values = np.repeat([-1.0, 0.5, 2.0], 40)
    A = spectrum_matrix(values, seed=2)
    holder = {}
    result = lanczos_eigsh(A, k=6, which="LA", tol=TOL, rng=0, block_size=4, ncv=40,
                           callback=lambda process, theta, bounds: holder.update(p=process))
    assert result.converged.all()
    np.testing.assert_allclose(result.eigenvalues, np.full(6, 2.0), atol=1e-9)
    assert holder["p"].num_breakdowns >= 1


def test_the_block_basis_stays_orthonormal_to_machine_precision():
    values = _spectrum("clustered")
    A = spectrum_matrix(values, seed=1)
    holder = {}
    lanczos_eigsh(A, k=4, which="SA", tol=1e-12, rng=0, ncv=48, block_size=4,
                  max_matvecs=400, callback=lambda process, *_: holder.update(p=process))
    basis = holder["p"].basis
    Q = basis.combine(np.eye(basis.size))
    error = float((Q.T @ Q - torch.eye(basis.size, dtype=torch.float64)).abs().max())
    assert error < 1e-13


@pytest.mark.parametrize("bad", [0, -1, 2.5, 1000])
def test_a_bad_block_size_is_refused_before_any_application(bad):
    A = spectrum_matrix(np.linspace(-1, 1, 50), seed=0)
    calls = []

    def matvec(x):
        calls.append(1)
        return A @ x

    with pytest.raises(ValueError, match="block_size"):
        lanczos_eigsh(matvec, k=2, block_size=bad, dim=50)
    assert not calls


def test_a_basis_too_small_for_the_blocks_is_refused():
    A = spectrum_matrix(np.linspace(-1, 1, 50), seed=0)
    with pytest.raises(ValueError, match="ncv=8 leaves no room for blocks of 4"):
        lanczos_eigsh(A, k=2, block_size=4, ncv=8)


@pytest.mark.parametrize("location", ["memory", "disk"])
def test_block_mode_runs_the_same_with_its_basis_on_disk_and_in_a_file(location, tmp_path):
    """Through the run path with a file: the basis in memory (mirrored to the file) or on disk
    (a memory budget too small for it) gives the numbers of the plain call, bit for bit."""
    from lanczos_hessian import HessianOperator, run

    from conftest import make_mlp, mlp_data

    op = HessianOperator(make_mlp(), torch.nn.CrossEntropyLoss(), mlp_data(n=40), batch_size=8)
    plain = lanczos_eigsh(op, k=4, which="BE", tol=1e-9, rng=3, block_size=3,
                          return_eigenvectors=False)
    budget = None if location == "memory" else 4 * op.shape[0] * 8 + 1
    saved = run.eigs(op, tmp_path / "run.h5", k=4, which="BE", tol=1e-9, seed=3, block_size=3,
                     true_residuals=False, memory_budget=budget, progress=False)
    np.testing.assert_array_equal(saved.eigenvalues, plain.eigenvalues)
    np.testing.assert_array_equal(saved.residual_bounds, plain.residual_bounds)
    from lanczos_hessian import read_file

    attrs = read_file(tmp_path / "run.h5")["eigs"].attrs
    assert attrs["basis_location"] == ("device" if location == "memory" else "disk")
    assert attrs["block_size"] == 3 and attrs["orthogonality"] < 1e-12


def test_the_default_bottom_call_converges_on_an_over_parametrized_spectrum():
    """A few large outliers, a huge cluster at zero and hundreds of small negative values
    packed together: lanczos_eigsh(op, k, which="SA") with nothing else (but a seed, for a
    reproducible test) converges (the basis-size policy), with no warning, to the dense
    bottom 5."""
    import warnings

    rng = np.random.default_rng(7)
    values = np.concatenate([np.zeros(1200), -3e-3 * rng.random(400) ** 2,
                             1e-3 * rng.random(300), [0.5, 0.8, 1.0, 1.5, 2.0]])
    A = spectrum_matrix(values, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any NumericalWarning fails the test
        result = lanczos_eigsh(A, k=5, which="SA", rng=0)  # the seed only fixes the start
    assert result.converged.all()
    np.testing.assert_allclose(np.sort(result.eigenvalues), np.sort(values)[:5],
                               atol=1e-6 * 2.0)


def test_the_budget_includes_the_measured_residuals():
    A = spectrum_matrix(np.linspace(-1, 3, 300), seed=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lanczos_eigsh(A, k=5, which="LA", max_matvecs=6, true_residuals=True, rng=0)
    assert result.num_matvecs <= 6
