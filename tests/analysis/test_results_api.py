"""Result objects as a notebook user meets them: one ordering (ascending, array index shown),
residual columns named for what they are, ``to_dataframe`` (pandas optional), normalized
moments, and ``analyze``'s spectral mass at several thresholds."""

import sys

import numpy as np
import pytest
import torch

from lanczos_hessian.analysis.report import eigen_table
from lanczos_hessian.analysis.spectrum import MASS_THRESHOLDS, Spectrum, summarize
from lanczos_hessian.linalg import density as D
from lanczos_hessian.linalg.eigsh import lanczos_eigsh
from lanczos_hessian.linalg.slq import slq

#: 400 eigenvalues: 4 outliers at 10, 8 (2%) at -0.02 = -2e-3 lambda_max, a bulk in [0.05, 1].
LAMBDAS = np.concatenate([np.full(4, 10.0), np.full(8, -0.02), np.linspace(0.05, 1.0, 388)])


@pytest.fixture(scope="module")
def results():
    torch.set_num_threads(1)
    A = torch.diag(torch.from_numpy(LAMBDAS))  # a random start vector mixes every eigenvector
    eigs = lanczos_eigsh(A, k=7, which="BE", k_bottom=3, tol=1e-10, rng=0, true_residuals=True)
    bulk = slq(A, 8, 30, rng=1)
    return eigs, bulk


def _rows(table):
    """``(index, eigenvalue)`` of every data row of a printed table."""
    rows = []
    for line in table.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].isdigit():
            rows.append((int(parts[0]), float(parts[1])))
    return rows


def test_tables_list_pairs_in_array_order_with_their_index(results):
    eigs, _ = results
    assert np.all(np.diff(eigs.eigenvalues) >= 0)  # the arrays: ascending, as scipy's eigsh
    for table in (eigen_table(eigs.eigenvalues, eigs.residual_bounds, eigs.error_bounds,
                              eigs.residuals, eigs.converged), eigs.summary()):
        rows = _rows(table)
        assert [i for i, _ in rows] == list(range(len(eigs.eigenvalues)))
        for i, value in rows:  # row i is result.eigenvalues[i]
            assert value == pytest.approx(eigs.eigenvalues[i], rel=1e-7)
        assert "Ritz bound" in table and "measured" in table and "ascending" in table
    text = summarize(Spectrum.from_results(eigs=eigs), num_top=2)
    rows = _rows(text)  # the bottom 3 (all shown: fewer than 5) and the top 2, still ascending
    assert [i for i, _ in rows] == [0, 1, 2, 5, 6] and "..." in text
    assert rows[-1][1] == pytest.approx(10.0, rel=1e-8)


def test_bounds_below_the_float64_floor_print_as_the_floor():
    """A converged pair's Ritz bound (e.g. 1e-30) says only "at the floor": ``< 4e-17`` in
    EigshResult.summary(), its HTML table and analyze's table alike, never 1.15e-31."""
    import re

    from lanczos_hessian.linalg.eigsh_result import EigshResult, bound_floor

    values = np.array([0.05, 0.16])
    floor = bound_floor(values)
    assert floor == pytest.approx(np.finfo(np.float64).eps * 0.16)
    result = EigshResult(eigenvalues=values, eigenvectors=None,
                         residual_bounds=np.array([1e-31, 3e-9]),
                         error_bounds=np.array([5e-101, 2e-12]),
                         residuals=np.array([2e-17, 3e-9]), converged=np.array([True, True]),
                         num_matvecs=10, num_passes=10, num_restarts=0,
                         alphas=np.zeros(0), betas=np.zeros(0), which="LA", tol=1e-8)
    shown = f"< {floor:.0e}"
    for text in (result.summary(), result._repr_html_(),
                 eigen_table(values, result.residual_bounds, result.error_bounds,
                             result.residuals)):
        assert shown in text and "3.00e-09" in text
        assert not re.search(r"e-(1[7-9]|[2-9]\d|\d{3})", text.replace(shown, "")), text
    assert result.summary().count(shown) == 3  # pair 0's Ritz, measured and error bounds


def test_residual_names_and_aliases(results):
    eigs, _ = results
    assert eigs.ritz_bounds is eigs.residual_bounds
    assert eigs.measured_residuals is eigs.residuals
    html = eigs._repr_html_()
    assert "Ritz bound" in html and "measured residual" in html and len(repr(eigs)) < 300


def test_to_dataframe_without_pandas_names_the_install(results, monkeypatch):
    eigs, bulk = results
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    spectrum = Spectrum.from_results(eigs=eigs, slq=bulk)
    for call in (eigs.to_dataframe, bulk.to_dataframe, spectrum.to_dataframe,
                 lambda: spectrum.to_dataframe("slq", per="probe")):
        with pytest.raises(ImportError, match="pip install pandas"):
            call()


def test_to_dataframe_with_pandas(results):
    pytest.importorskip("pandas")
    eigs, bulk = results
    frame = eigs.to_dataframe()
    assert list(frame.columns) == ["eigenvalue", "ritz_bound", "measured_residual",
                                   "error_bound", "converged"]
    np.testing.assert_array_equal(frame["eigenvalue"].to_numpy(), eigs.eigenvalues)
    nodes = bulk.to_dataframe()
    assert len(nodes) == int(np.sum(bulk.weights > 0))
    np.testing.assert_allclose(nodes.groupby("probe")["weight"].sum().to_numpy(), 1.0)
    probes = bulk.to_dataframe(per="probe")
    assert probes["trace"].mean() == pytest.approx(bulk.trace().value, rel=1e-12)
    spectrum = Spectrum.from_results(eigs=eigs, slq=bulk)
    assert len(spectrum.to_dataframe()) == len(eigs.eigenvalues)
    assert len(spectrum.to_dataframe("slq")) == len(nodes)


def test_moments_are_normalized_by_default(results):
    _, bulk = results
    n = len(LAMBDAS)
    normalized, traces = bulk.moments(4), bulk.moments(4, normalized=False)
    assert normalized.normalized and not traces.normalized
    assert normalized[0].value == pytest.approx(1.0, rel=1e-12)  # the mass of the density
    assert traces[0].value == pytest.approx(n, rel=1e-12)
    for q in range(5):
        np.testing.assert_allclose(n * normalized[q].per_probe, traces[q].per_probe, rtol=1e-12)
        exact = np.mean(LAMBDAS ** q)  # the q-th moment of the spectral density
        assert abs(normalized[q].value - exact) <= 4 * normalized[q].stderr + 1e-12 * exact
    np.testing.assert_allclose(normalized.values, [m.value for m in normalized])
    assert "(1/n) tr(A^q)" in repr(normalized) and len(repr(normalized)) < 300
    assert traces[1].value == pytest.approx(bulk.trace().value, rel=1e-12)
    # the pure functions agree: normalized per probe is sum_i w theta^q
    nodes, weights = np.array([[1.0, 3.0]]), np.array([[0.5, 0.5]])
    assert D.moment_estimates(nodes, weights, 2, dim=4)[2].value == pytest.approx(5.0)
    assert D.moment_estimates(nodes, weights, 2, dim=4, normalized=False)[2].value == 20.0


def test_summary_reports_negative_mass_at_every_threshold(results):
    eigs, bulk = results
    text = summarize(Spectrum.from_results(eigs=eigs, slq=bulk))
    assert "lambda_max = 1.0000e+01" in text
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in {f"{t:.0e}" for t in MASS_THRESHOLDS}:
            rows[float(parts[0])] = float(parts[2])  # mass below -t lambda_max
    assert sorted(rows) == sorted(MASS_THRESHOLDS)
    # 2% of the spectrum sits at -2e-3 lambda_max: invisible at 1e-2, counted at 1e-3, 1e-4
    assert rows[1e-2] < 0.005 and 0.01 < rows[1e-3] < 0.03 and rows[1e-4] == rows[1e-3]
    assert "mass below 0" in text
    assert "bottom eigenvalue  -2.000000e-02 (eigensolver)" in text
    top_only = summarize(Spectrum.from_results(slq=bulk))
    assert "bottom eigenvalue  unknown" in top_only and "smallest SLQ node" in top_only
