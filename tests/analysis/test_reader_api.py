"""One reader API: a run read back from its file and the same run in memory are the same
objects with the same methods, summaries, tables and short reprs; the scalar summaries
agree with the exact spectrum."""

import numpy as np
import pytest
import torch

from lanczos_hessian import HessianOperator, read_spectrum
from lanczos_hessian.analysis.spectrum import Spectrum
from lanczos_hessian.run import slq as run_slq

from conftest import spectrum_matrix


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                                torch.nn.Linear(12, 4)).double()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(80, 6, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (80,), generator=g))
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data)
    path = tmp_path_factory.mktemp("reader") / "run.h5"
    returned = run_slq(op, path, num_probes=6, num_steps=25, k_top=5, k_bottom=2, seed=3,
                       progress=False)
    eigs, bulk = returned  # the pair it unpacks as
    return path, eigs, bulk, returned


def test_what_a_run_returns_is_what_its_file_reads_back(run):
    """``run.slq`` returns the Spectrum that ``read_spectrum`` reads from its file: the same
    summary text (path and provenance included), dataframes, repr and solver results."""
    pytest.importorskip("pandas")
    path, eigs, bulk, returned = run
    from_file = read_spectrum(path)
    assert type(returned) is type(from_file) is Spectrum
    assert returned.summary() == from_file.summary()
    assert returned.summary().splitlines()[0] == f"== {path}"
    for what in ("eigs", "slq", "summary"):
        assert returned.to_dataframe(what).equals(from_file.to_dataframe(what)), what
    assert repr(returned) == repr(from_file)
    assert repr(returned).startswith(f"Spectrum({str(path)!r}: hessian of 136 parameters; "
                                     "7 eigenpairs (BE, complete); SLQ 6 probes x 25 nodes")
    assert len(repr(returned)) < 200
    assert returned.eigs is eigs and returned.slq is bulk
    assert repr(from_file.eigs) == repr(eigs) and repr(from_file.slq) == repr(bulk)
    assert from_file.eigs.to_dataframe().equals(eigs.to_dataframe())
    assert from_file.eigs.summary() == eigs.summary()
    assert from_file.slq.summary() == bulk.summary()
    assert returned.attrs == from_file.attrs and returned.path == from_file.path


def test_a_run_without_a_file_returns_the_same_kind_of_spectrum(tmp_path):
    op = HessianOperator(torch.nn.Linear(3, 2).double(), torch.nn.CrossEntropyLoss(),
                         (torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))))
    spectrum = run_slq(op, num_probes=2, num_steps=4, progress=False)
    assert type(spectrum) is Spectrum and spectrum.eigs is None
    assert spectrum.attrs["num_params"] == 8 and spectrum.attrs["operator"] == "hessian"
    assert "hessian of 8 parameters; SLQ 2 probes x 4 nodes" in repr(spectrum)
    assert spectrum.summary().splitlines()[1].startswith("   hessian of 8 parameters, 10 "
                                                         "samples")


def body(text):
    """The summary without its first two lines (the path and the file's provenance)."""
    return text.splitlines()[2:]


def test_memory_and_file_give_equal_summaries_and_dataframes(run):
    pytest.importorskip("pandas")
    path, eigs, bulk, _ = run
    from_file = read_spectrum(path)
    in_memory = Spectrum.from_results(eigs, bulk, label="run")
    assert type(from_file) is type(in_memory)
    assert body(from_file.summary()) == body(in_memory.summary())
    for what in ("eigs", "slq", "summary"):
        a, b = from_file.to_dataframe(what), in_memory.to_dataframe(what)
        assert a.equals(b), what
    assert from_file.to_dataframe("slq", per="probe").equals(
        in_memory.to_dataframe("slq", per="probe"))
    assert from_file.trace().value == in_memory.trace().value
    for name in ("fraction_below", "mass_above"):
        assert getattr(from_file, name)(0.0).value == getattr(in_memory, name)(0.0).value
    grid, phi = from_file.density()
    assert np.array_equal(phi, in_memory.density()[1])


def test_reprs_are_short_and_say_what_is_inside(run):
    path, _, _, _ = run
    spectrum = read_spectrum(path)
    text = repr(spectrum)
    assert len(text) < 200 and "7 eigenpairs" in text and "SLQ 6 probes" in text
    assert len(repr(spectrum.quadrature)) < 120 and "6 probes" in repr(spectrum.quadrature)


def test_the_exact_spectrum_stands_in_for_missing_rules():
    values = np.linspace(-1, 3, 50)
    spectrum = Spectrum.from_results(label="dense")
    spectrum.dense_eigenvalues = values
    assert spectrum.trace().value == pytest.approx(values.sum())
    assert spectrum.fraction_below(0.0).contains(np.mean(values < 0))
    with pytest.raises(ValueError, match="no SLQ rules and no exact spectrum"):
        Spectrum.from_results(label="empty").trace()


def test_summaries_contain_the_exact_values():
    """Effective rank, stable rank, participation ratio, negative share and the top-k trace
    share from SLQ against numpy.linalg.eigh of the same matrix, within 3 standard errors
    (the interval printed), and equal to it from the exact spectrum."""
    from lanczos_hessian import deflated_slq, lanczos_eigsh

    values = np.concatenate([np.linspace(-0.05, 0.3, 400), np.zeros(100), [2.0, 3.0, 5.0]])
    A = spectrum_matrix(values, seed=0)
    lam = np.linalg.eigvalsh(A)
    p = np.abs(lam) / np.abs(lam).sum()
    p = p[p > 0]
    exact = {"effective_rank": np.exp(-np.sum(p * np.log(p))),
             "stable_rank": np.sum(lam ** 2) / np.max(np.abs(lam)) ** 2,
             "participation_ratio": lam.sum() ** 2 / np.sum(lam ** 2),
             "negative_magnitude_share": -lam[lam < 0].sum() / np.abs(lam).sum(),
             "top_3_trace_share": np.sort(lam)[-3:].sum() / lam.sum()}
    eigs = lanczos_eigsh(A, k=20, which="LA", tol=1e-10, rng=0)
    bulk = deflated_slq(A, 3, 0, num_probes=20, num_steps=40, rng=1)
    spectrum = Spectrum.from_results(eigs, bulk)
    spectrum.dense_eigenvalues = lam
    rows = {(s.name, s.source): s for s in spectrum.statistics()}
    assert spectrum.outlier_verdict(20) == (3, "below_top")
    for name, value in exact.items():
        assert rows[name, "exact"].value == pytest.approx(value, rel=1e-10), name
        slq_row = rows[name, "SLQ"]
        assert slq_row.lower <= value <= slq_row.upper, (name, value, slq_row)
        assert slq_row.stderr < 0.05 * abs(value), name  # an error bar that says something


def test_an_eigs_file_and_an_slq_file_of_one_operator_are_read_as_one_run(tmp_path):
    from lanczos_hessian.analysis.runs import merge_runs
    from lanczos_hessian.run import eigs as run_eigs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(2)
    data = (torch.randn(50, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (50,), generator=g))
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data)
    attrs = {"problem": "unit"}
    run_eigs(op, tmp_path / "e.h5", k=6, which="BE", k_bottom=2, tol=1e-10, progress=False,
             attrs=attrs)
    run_slq(op, tmp_path / "s.h5", num_probes=4, num_steps=15, progress=False, attrs=attrs)
    alone = read_spectrum(tmp_path / "s.h5").summary()
    assert "bottom eigenvalue  unknown" in alone
    (one,) = merge_runs([read_spectrum(tmp_path / "e.h5"), read_spectrum(tmp_path / "s.h5")])
    text = one.summary()
    assert "(eigensolver)" in text and "unknown" not in text and "e.h5 + " in text
    assert text.count("outliers among the top") == 1
    # a deflated SLQ file holds its deflation's pairs: the eigensolver's file gives the run's
    run_slq(op, tmp_path / "d.h5", num_probes=4, num_steps=15, k_top=3, progress=False,
            attrs=attrs)
    for order in (["e.h5", "d.h5"], ["d.h5", "e.h5"]):
        (one,) = merge_runs([read_spectrum(tmp_path / name) for name in order])
        text = one.summary()
        assert "(eigensolver)" in text and "unknown" not in text, order
        assert text.count("outliers among the top") == 1 and "3 deflated outliers" in text
        assert len(one.eigenvalues) == 6 and one.eigs_attrs["which"] == "BE"
        assert one.eigs.which == "BE" and one.slq.num_probes == 4
    other = {"problem": "another"}
    run_slq(op, tmp_path / "t.h5", num_probes=2, num_steps=5, progress=False, attrs=other)
    assert len(merge_runs([read_spectrum(tmp_path / "e.h5"),
                           read_spectrum(tmp_path / "t.h5")])) == 2


def test_a_cut_off_file_says_the_command_that_continues_it():
    from lanczos_hessian.analysis.summary import resume_hint

    spectrum = Spectrum.from_results(label="x")
    spectrum.attrs["command"] = "/venv/bin/lanczos-hessian eigs --k 3 --out x.h5 --overwrite"
    spectrum.progress.append("eigs: CUT OFF, 15 operator applications committed")
    assert resume_hint(spectrum) == "lanczos-hessian eigs --k 3 --out x.h5 --resume"
    assert "to continue it: lanczos-hessian eigs --k 3 --out x.h5 --resume" in \
        spectrum.summary()
    spectrum.attrs["command"] = "train.py --epochs 3"
    assert "resume=True" in resume_hint(spectrum)


def test_attributes_given_by_the_caller_override_the_provenance_in_memory_and_on_file(tmp_path):
    """``attrs`` may name a key the provenance also has (a script records its own ``seed``):
    the caller's value wins, in the returned spectrum as in the file."""
    op = HessianOperator(torch.nn.Linear(3, 2).double(), torch.nn.CrossEntropyLoss(),
                         (torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))))
    path = tmp_path / "attrs.h5"
    returned = run_slq(op, path, num_probes=2, num_steps=4, seed=3, progress=False,
                       attrs={"seed": 7, "label": "mine"})
    assert returned.attrs["seed"] == 7 and returned.attrs["label"] == "mine"
    assert read_spectrum(path).attrs["seed"] == 7
    in_memory = run_slq(op, num_probes=2, num_steps=4, seed=3, progress=False,
                        attrs={"seed": 7})
    assert in_memory.attrs["seed"] == 7
