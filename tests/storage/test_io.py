"""HDF5 spectrum files: round trip, committed records, damaged and foreign files."""

import h5py
import numpy as np
import pytest

from conftest import spectrum_matrix
from lanczos_hessian import SpectrumFileError, lanczos_eigsh
from lanczos_hessian.storage.hdf5 import SpectrumWriter, read_file
from lanczos_hessian.storage.records import write_eigs
from lanczos_hessian.storage.records import step_recorder


def test_eigs_round_trip_with_streamed_steps(tmp_path):
    A = spectrum_matrix(np.linspace(-1, 4, 70), seed=0)
    path = tmp_path / "run.h5"
    with SpectrumWriter(path, {"seed": 3, "num_params": 70}) as writer:
        result = lanczos_eigsh(A, k=4, which="BE", tol=1e-10, rng=3, true_residuals=True,
                               callback=step_recorder(writer, "eigs", 4, "BE"))
        write_eigs(writer, result, "eigs", {"k": 4})
    back = read_file(path)
    assert back["attrs"]["format"] == "lanczos_hessian.spectrum"
    assert back["attrs"]["seed"] == 3 and back["attrs"]["package_version"]
    eigs = back["eigs"]
    assert np.array_equal(eigs["eigenvalues"], result.eigenvalues)
    assert np.array_equal(eigs["residual_bounds"], result.residual_bounds)
    assert np.array_equal(eigs["residuals"], result.residuals)
    assert np.array_equal(eigs["alphas"], result.alphas)
    assert eigs.attrs["complete"] and eigs.attrs["which"] == "BE"
    assert eigs.attrs["timings"]["total"] > 0
    steps = eigs.steps
    assert len(steps["alpha"]) == result.num_passes - 1  # all but the true-residual pass
    np.testing.assert_array_equal(steps["alpha"][: len(result.alphas)], result.alphas)
    np.testing.assert_allclose(steps["ritz_values"][-1], result.eigenvalues)


def test_reader_trusts_only_committed_records(tmp_path):
    path = tmp_path / "partial.h5"
    writer = SpectrumWriter(path, {})
    for i in range(5):
        writer.append_step("slq", {"value": float(i), "row": np.arange(3) * i})
    # a crash between resizing and committing leaves an uncommitted row behind
    steps = writer.file["slq/steps"]
    assert int(steps["committed"][0]) == 5
    steps["value"].resize(6, axis=0)
    steps["value"][5] = 99.0
    writer.file.flush()
    writer.file.close()
    back = read_file(path)["slq"]
    assert back.steps["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert back.steps["row"].shape == (5, 3)


def test_truncated_foreign_and_future_files_are_refused(tmp_path):
    good = tmp_path / "good.h5"
    with SpectrumWriter(good, {}) as writer:
        writer.write_arrays("eigs", {"eigenvalues": np.arange(1000.0)})
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(SpectrumFileError, match="truncated|not a readable"):
        read_file(cut)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(SpectrumFileError, match="not a lanczos_hessian spectrum"):
        read_file(foreign)
    future = tmp_path / "future.h5"
    with SpectrumWriter(future, {"format_version": 99}):
        pass
    with pytest.raises(SpectrumFileError, match="format version 99"):
        read_file(future)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(SpectrumFileError, match="not an HDF5 file"):
        read_file(text)
    with pytest.raises(SpectrumFileError, match="no such file"):
        read_file(tmp_path / "absent.h5")


@pytest.mark.slow  # 3-4 s
def test_a_finished_file_can_drop_its_resume_state(tmp_path):
    """Results and provenance only: the SLQ state (bases of every probe) is most of a file."""
    import h5py
    import torch

    from conftest import make_mlp, mlp_data
    from lanczos_hessian import HessianOperator, ResumeError, run

    op = HessianOperator(make_mlp(), torch.nn.CrossEntropyLoss(), mlp_data(n=40), batch_size=8)
    lean, kept = tmp_path / "lean.h5", tmp_path / "kept.h5"
    a = run.slq(op, lean, num_probes=4, num_steps=12, k_top=2, seed=1, progress=False).slq
    b = run.slq(op, kept, num_probes=4, num_steps=12, k_top=2, seed=1, progress=False,
                keep_state=True).slq
    np.testing.assert_array_equal(a.nodes, b.nodes)
    with h5py.File(lean, "r") as f:
        assert "state" not in f["slq"] and "state" not in f["eigs"]
        np.testing.assert_array_equal(f["slq/nodes"][()], a.nodes)
    assert lean.stat().st_size < kept.stat().st_size / 2
    saved = read_file(lean)
    assert saved["slq"].attrs["complete"] and len(saved["slq"].steps["alpha"]) == 12
    again = run.slq(op, kept, num_probes=4, num_steps=12, k_top=2, seed=1, progress=False,
                    resume=True, keep_state=True).slq  # a kept state still resumes
    np.testing.assert_array_equal(again.nodes, a.nodes)
    stored = run.slq(op, lean, num_probes=4, num_steps=12, k_top=2, seed=1, progress=False,
                     resume=True).slq  # finished, state dropped: the stored result
    np.testing.assert_array_equal(stored.nodes, a.nodes)
    assert stored.num_passes == a.num_passes and stored.seed == a.seed
    with pytest.raises(ResumeError, match=r"num_steps: file has 12, this run has 16.*"
                                          r"resume state was dropped.*--keep-state"):
        run.slq(op, lean, num_probes=4, num_steps=16, k_top=2, seed=1, progress=False,
                resume=True)
