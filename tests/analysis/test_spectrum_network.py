"""SLQ, deflation and outlier counts on a network against its exact dense spectrum, and the
offline analysis of saved runs (round trip, cut-off files, plots, bad input)."""

import numpy as np
import pytest

from lanczos_hessian import (
    HessianOperator,
    SpectrumFileError,
    count_outliers,
    dense_spectrum,
    lanczos_eigsh,
    read_spectrum,
    slq,
    wasserstein1,
)
from lanczos_hessian.cli import main
from lanczos_hessian.linalg.density import exact_measure, quadrature_measure
from lanczos_hessian.run import slq_job
from lanczos_hessian.examples.problems import clusters_mlp


@pytest.fixture(scope="module")
def trained():
    """A reduced demo network (MLP 20-16-5 on 5 clusters, 505 parameters), float64."""
    problem = clusters_mlp(num_classes=5, num_examples=300, widths=(20, 16), steps=400,
                           lr=0.2, seed=1)
    x, y = problem.data
    op = HessianOperator(problem.model.double(), problem.loss_fn, (x.double(), y),
                         batch_size=128)
    return op, dense_spectrum(op)


def test_slq_and_deflated_slq_against_the_exact_spectrum(trained):
    op, exact = trained
    spread = exact.max() - exact.min()
    plain = slq(op, num_probes=8, num_steps=30, rng=0)
    assert op.num_applications >= 30
    w_plain = wasserstein1(*quadrature_measure(plain), *exact_measure(exact))
    eig = lanczos_eigsh(op, k=8, which="LA", tol=1e-8, rng=0)
    deflated = slq(op, num_probes=8, num_steps=30, rng=0, deflate=eig)
    w_deflated = wasserstein1(*quadrature_measure(deflated), *exact_measure(exact))
    # Bounds: the quadrature error of m Gauss nodes is about 0.26 * range / m on a flat
    # spectrum (tests/linalg/test_slq.py): 0.0087 * range for m = 30. Measured here over seeds
    # 0-2: plain 0.0024-0.0035, deflated 0.0010-0.0015 of the range. A wrong scale (a
    # missing 1/N), a wrong sign or unconverged outliers move W1 by tens of percent.
    assert w_plain <= 0.01 * spread, (w_plain, spread)
    assert w_deflated <= 0.005 * spread, (w_deflated, spread)
    # trace within 4 standard errors of the exact trace
    for result in (plain, deflated):
        trace = result.trace()
        assert abs(trace.value - exact.sum()) <= 4 * trace.stderr + 1e-12
    np.testing.assert_allclose(np.sort(deflated.outliers), exact[-8:], rtol=1e-7)


def test_lockstep_on_a_network_makes_one_pass_per_step(trained):
    op, _ = trained
    before = op.num_applications
    result = slq(op, num_probes=6, num_steps=12, rng=3)
    assert op.num_applications - before == 12 == result.num_passes
    assert result.num_matvecs == 72
    single = [slq(op, num_probes=1, num_steps=12, probes=result_probe, rng=None)
              for result_probe in _probes(op.shape[0], 6, 3)]
    for p, one in enumerate(single):
        np.testing.assert_allclose(one.nodes[0], result.nodes[p], rtol=1e-9, atol=1e-13)


def _probes(n, num, seed):
    from lanczos_hessian.linalg.slq import draw_probes

    Z = draw_probes(n, num, "rademacher", seed)
    return [Z[:, [p]] for p in range(num)]


def test_outlier_counts_agree_with_the_dense_spectrum(trained):
    op, exact = trained
    top = lanczos_eigsh(op, k=15, which="LA", tol=1e-9, rng=0).eigenvalues
    ours, reference = count_outliers(top), count_outliers(exact[-15:])
    assert (ours.gap, ours.ratio, ours.elbow) == (reference.gap, reference.ratio, reference.elbow)
    assert ours.gap >= 1


def test_saved_run_round_trips_and_a_cut_off_run_stays_readable(trained, tmp_path):
    op, _ = trained
    path = tmp_path / "slq.h5"
    eigs, result = slq_job(op, path, num_probes=4, num_steps=15, k_top=3, seed=5,
                           progress=False)
    spectrum = read_spectrum(path)
    np.testing.assert_array_equal(spectrum.quadrature.nodes, result.nodes)
    np.testing.assert_array_equal(spectrum.quadrature.weights, result.weights)
    np.testing.assert_array_equal(spectrum.quadrature.outliers, result.outliers)
    np.testing.assert_array_equal(spectrum.eigenvalues, eigs.eigenvalues)
    assert spectrum.quadrature.trace().value == result.trace().value
    assert spectrum.eigs_complete and spectrum.quadrature.complete

    class Killed(Exception):
        pass

    cut = tmp_path / "cut.h5"

    def stop_after_9(step, state):
        if step == 9:
            raise Killed

    import lanczos_hessian.run.entry as jobs  # the entry points look the recorder up here
    original = jobs.slq_recorder

    def recorder(writer, group="slq"):
        record = original(writer, group)

        def both(step, state):
            record(step, state)
            stop_after_9(step, state)
        return both

    jobs.slq_recorder = recorder
    try:
        with pytest.raises(Killed):
            slq_job(op, cut, num_probes=4, num_steps=15, seed=5, progress=False)
    finally:
        jobs.slq_recorder = original
    partial = read_spectrum(cut)
    assert not partial.quadrature.complete and partial.quadrature.num_steps_done == 9
    slq_seed = int(np.random.SeedSequence(5).spawn(2)[1].generate_state(1)[0])
    full = slq(op, 4, 9, rng=slq_seed)
    np.testing.assert_allclose(partial.quadrature.nodes, full.nodes, rtol=1e-10, atol=1e-14)


def test_analyze_command_summarizes_plots_and_recomputes_density(trained, tmp_path, capsys):
    op, _ = trained
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    slq_job(op, a, num_probes=4, num_steps=20, k_top=5, seed=0, progress=False)
    slq_job(op, b, num_probes=4, num_steps=20, seed=1, progress=False)
    png = tmp_path / "fig.png"
    assert main(["analyze", str(a), str(b), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "outliers among the top" in out and "trace" in out and "mass below" in out
    assert png.stat().st_size > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels[..., :3].std() > 0.05  # not blank
    spectrum = read_spectrum(a)
    wide = spectrum.quadrature.density(width=1e-2)[1]
    narrow = spectrum.quadrature.density(width=1e-4)[1]
    assert narrow.max() > 5 * wide.max()  # another width from the saved nodes, no rerun
    assert main(["analyze", str(a), "--width", "-1"]) == 2
    assert "width" in capsys.readouterr().err


def test_bad_files_and_arguments(tmp_path, capsys):
    text = tmp_path / "x.h5"
    text.write_text("not hdf5")
    with pytest.raises(SpectrumFileError):
        read_spectrum(text)
    assert main(["analyze", str(text)]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    A = np.diag(np.arange(5.0))
    with pytest.raises(ValueError, match="num_probes"):
        slq(A, num_probes=0)
    with pytest.raises(ValueError, match="num_steps"):
        slq(A, num_steps=0)


def test_plots_of_results_in_memory_draw_the_bottom_eigenvalues_and_label_every_line(tmp_path):
    pytest.importorskip("matplotlib")
    from lanczos_hessian import deflated_slq, lanczos_eigsh
    from lanczos_hessian.analysis.plotting import plot_spectra

    from conftest import spectrum_matrix

    values = np.concatenate([np.linspace(-0.02, 0.05, 300), [-0.3, -0.2, 1.0, 2.0, 3.0]])
    A = spectrum_matrix(values, seed=0)
    eigs = lanczos_eigsh(A, k=8, which="BE", k_bottom=3, rng=0)
    bulk = deflated_slq(A, 5, 3, num_probes=4, num_steps=30, rng=0)
    fig = plot_spectra((eigs, bulk), labels=["synthetic"])
    top, bottom, linear, log = fig.axes
    np.testing.assert_allclose(bottom.lines[0].get_ydata(), np.sort(eigs.eigenvalues)[:3])
    np.testing.assert_allclose(top.lines[0].get_ydata(), np.sort(eigs.eigenvalues)[::-1][:5])
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    # one verdict per run, its rule named: the count the text summary prints
    from lanczos_hessian.analysis.plotting import as_spectrum

    count, rule = as_spectrum((eigs, bulk), "synthetic").outlier_verdict(50)
    assert "synthetic" in legend and any(f"{count} outliers ({rule.replace('_', '-')} rule)"
                                         in t for t in legend)
    assert linear.get_legend() is not None and log.get_yscale() == "log"
    for ranks in (top, bottom):  # three bottom eigenvalues: ticks 1, 2, 3, never 1.5
        ticks = ranks.get_xticks()
        np.testing.assert_array_equal(ticks, np.round(ticks))
    out = plot_spectra([(eigs, bulk)], tmp_path / "spectra.png")
    assert out.stat().st_size > 10_000
