"""Tracking as a table and a figure: one row per step and eigenpair, the same from memory and
from the file; eigenvalues, trace and negative mass over the steps with the line 2/lr."""

import numpy as np
import pytest
import torch

from lanczos_hessian.analysis.tracking import SpectrumTracker, read_tracking
from lanczos_hessian.examples.training import train

from conftest import reference_matrices


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double()
    loss_fn = torch.nn.CrossEntropyLoss()
    path = tmp_path_factory.mktemp("traj") / "track.h5"
    dim = sum(p.numel() for p in model.parameters())
    tracker = SpectrumTracker(model, loss_fn, (x, y), k=3, every=10, tol=1e-10, path=path,
                              attrs={"num_params": dim}, slq_probes=4, slq_steps=20, rng=0)
    with tracker:
        tracker.measure(0)
        train(model, loss_fn, x, y, steps=20, lr=0.5, callback=tracker)
    H, _ = reference_matrices(model, loss_fn, x, y)
    return tracker, path, np.linalg.eigvalsh(H)


def test_one_row_per_step_and_eigenpair_from_memory_and_file(tracked):
    pytest.importorskip("pandas")
    tracker, path, _ = tracked
    table = tracker.to_dataframe()
    assert len(table) == 3 * 3
    assert list(table["step"]) == [0, 0, 0, 10, 10, 10, 20, 20, 20]
    assert list(table["pair"]) == [0, 1, 2] * 3
    for column in ("eigenvalue", "residual_bound", "converged", "overlap_part", "loss",
                   "overlap", "trace", "trace_stderr", "negative_mass", "negative_lower"):
        assert column in table, column
    np.testing.assert_array_equal(table["eigenvalue"],
                                  np.stack([r["eigenvalues"] for r in tracker.records]).ravel())
    from_file = read_tracking(path).to_dataframe()
    for column in ("step", "pair", "eigenvalue", "loss", "trace", "negative_mass"):
        np.testing.assert_array_equal(from_file[column], table[column])


def test_trace_and_negative_mass_series_contain_the_exact_ones_at_the_last_step(tracked):
    tracker, path, exact = tracked
    series = read_tracking(path).slq_series()
    trace, stderr = series["trace"][-1], series["trace_stderr"][-1]
    assert abs(trace - exact.sum()) <= 4 * stderr + 1e-12
    assert series["negative_lower"][-1] <= np.mean(exact < 0) <= series["negative_upper"][-1]


def test_the_plot_has_the_edge_of_stability_line_and_reprs_are_short(tracked, tmp_path):
    pytest.importorskip("matplotlib")
    tracker, path, _ = tracked
    fig = read_tracking(path).plot(lr=0.5)
    eig_ax, trace_ax, negative_ax = fig.axes[:3]
    lines = {line.get_label(): line for line in eig_ax.lines}
    assert any(label.startswith("edge of stability 2/lr = 4") for label in lines)
    edge = next(v for k, v in lines.items() if k.startswith("edge"))
    assert np.allclose(edge.get_ydata(), 4.0)
    assert "loss / param^2" in eig_ax.get_ylabel() and negative_ax.get_ylim() == (0, 1)
    assert tracker.plot(tmp_path / "t.png").stat().st_size > 10_000
    assert repr(tracker).startswith("SpectrumTracker(hessian, k=3") and len(repr(tracker)) < 200
    assert "3 measurements" in repr(tracker) and "3 measurements" in repr(read_tracking(path))
    top = float(np.max(tracker.records[0]["eigenvalues"]))
    far = read_tracking(path).plot(lr=2.0 / (50 * top))  # 2/lr far above: said, not drawn
    far_lines = {line.get_label(): line for line in far.axes[0].lines}
    off = next(v for k, v in far_lines.items() if k.startswith("edge of stability"))
    assert "off the axis" in off.get_label() and len(off.get_ydata()) == 0
    assert far.axes[0].get_ylim()[1] < 10 * top
    series = read_tracking(path).slq_series()
    markers = {line.get_label(): line for line in negative_ax.lines}
    assert len(markers["resolved: a measurement"].get_xdata()) == series[
        "negative_resolved"].sum()
    assert len(markers["unresolved: the bracket only"].get_xdata()) == (
        ~series["negative_resolved"]).sum()
