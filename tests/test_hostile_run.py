"""Hostile inputs to the run layer, its files and its command line (issue 24, cases 1, 2, 4,
5, 6, 8 and 11): each refused or reported by name, before any expensive work where
possible, instead of a silent change of the numbers, a file that locks the user out, or a
raw traceback. (Cases 9 and 10, the signals, are tests/run/test_signals.py.)"""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator

from lanczos_hessian import run
from lanczos_hessian.cli import main
from lanczos_hessian.storage.lock import lock_path

PROBLEMS = str(Path(__file__).parent / "problems")
EIGS = ["eigs", "--problem", "slow_mlp:build", "--batch-size", "30", "--no-progress", "--k",
        "3", "--which", "BE", "--tol", "1e-8", "--strategy", "reverse-over-reverse"]


@pytest.fixture
def problems(monkeypatch):
    monkeypatch.syspath_prepend(PROBLEMS)


@pytest.fixture(scope="module")
def kept_once(tmp_path_factory):
    """A finished run that kept its resume state (so a resume checks its settings)."""
    path = tmp_path_factory.mktemp("kept") / "kept.h5"
    sys.path.insert(0, PROBLEMS)
    try:
        assert main(EIGS + ["--out", str(path), "--keep-state"]) == 0
    finally:
        sys.path.remove(PROBLEMS)
    return path


@pytest.fixture
def kept(kept_once, tmp_path, problems):
    """A copy of :func:`kept_once` of the test's own."""
    return Path(shutil.copy(kept_once, tmp_path / "kept.h5"))


# ---- cases 8 and 11: the output must be a regular file or absent --------------------------
@pytest.mark.parametrize("extra", [[], ["--resume"], ["--overwrite"]])
def test_a_directory_as_output_is_refused_before_the_model_is_built(extra, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr("lanczos_hessian.cli.commands.build_operator",
                        lambda args: pytest.fail("the model was built"))
    assert main(EIGS + ["--out", str(tmp_path)] + extra) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err


def test_a_device_as_output_is_refused_before_the_model_is_built(capsys, monkeypatch):
    monkeypatch.setattr("lanczos_hessian.cli.commands.build_operator",
                        lambda args: pytest.fail("the model was built"))
    for extra in (["--overwrite"], ["--resume"]):
        assert main(EIGS + ["--out", "/dev/null"] + extra) == 2
        assert "not a regular file" in capsys.readouterr().err


def test_a_directory_is_refused_by_the_python_entry_points(tmp_path):
    op = LinearOperator((30, 30), matvec=lambda v: v, dtype=np.float64)
    for resume in (False, True):
        with pytest.raises(OSError, match="is a directory"):
            run.eigs(op, tmp_path, k=2, resume=resume, progress=False)


# ---- cases 1 and 2: the resume identity ------------------------------------------------------
def test_a_resume_with_another_batch_size_is_refused_by_name(kept, capsys):
    assert main(EIGS[:4] + ["7"] + EIGS[5:] + ["--out", str(kept), "--resume"]) == 2
    assert "batch_size: file has 30, this run has 7" in capsys.readouterr().err
    assert not lock_path(kept).exists()


@pytest.mark.parametrize("key, other", [("batch_size", 7), ("strategy", "forward-over-reverse"),
                                        ("allow_tf32", True), ("device", "cuda:0")])
def test_each_setting_of_the_summation_order_is_checked_on_resume(key, other, kept, tmp_path,
                                                                  capsys):
    """Each setting as another process would have recorded it (a GPU, TF32, another
    strategy or batch size): the resume here is refused naming it."""
    with h5py.File(kept, "r+") as f:
        assert f["eigs/state"].attrs[f"run_{key}"] is not None  # recorded
        f["eigs/state"].attrs[f"run_{key}"] = other
    assert main(EIGS + ["--out", str(kept), "--resume"]) == 2
    assert f"{key}: file has {other!r}" in capsys.readouterr().err


def test_a_file_written_before_the_order_settings_still_resumes(kept, capsys):
    with h5py.File(kept, "r+") as f:
        for key in ("batch_size", "device"):
            del f["eigs/state"].attrs[f"run_{key}"]
    assert main(EIGS + ["--out", str(kept), "--resume"]) == 0


@pytest.mark.parametrize("key", ["num_threads", "torch_version"])
def test_a_resume_under_other_rounding_is_reported(key, kept, caplog, monkeypatch):
    """The thread count and the torch version change only the rounding: the resume goes on,
    and says that it continues the run to rounding, not bit for bit."""
    if key == "num_threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    else:
        monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    with caplog.at_level(logging.WARNING, logger="lanczos_hessian"):
        assert main(EIGS + ["--out", str(kept), "--resume"]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert key in said and "to rounding, not bit for bit" in said


def test_a_resume_under_the_same_rounding_says_nothing(kept, caplog):
    with caplog.at_level(logging.WARNING, logger="lanczos_hessian"):
        assert main(EIGS + ["--out", str(kept), "--resume"]) == 0
    assert "rounding" not in " ".join(r.getMessage() for r in caplog.records)


# ---- case 4: a kill -9 at file creation locks nobody out ------------------------------------
@pytest.mark.slow
def test_a_kill_at_file_creation_leaves_no_file_that_locks_the_rerun_out(tmp_path):
    path = tmp_path / "run.h5"
    env = dict(os.environ, PYTHONPATH=PROBLEMS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    killed = subprocess.run([sys.executable, str(Path(__file__).parent / "_kill_at.py"),
                             "creation", "1", "--"] + EIGS + ["--out", str(path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert not path.exists()  # only the hidden file being created, if anything
    rerun = subprocess.run([sys.executable, "-m", "lanczos_hessian"] + EIGS
                           + ["--out", str(path)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(tmp_path)) == ["run.h5"]


def test_an_empty_shell_left_by_an_older_release_names_the_way_out(tmp_path, problems, capsys):
    path = tmp_path / "run.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(40))  # 48 bytes: a header cut off
    for extra in ([], ["--resume"]):
        assert main(EIGS + ["--out", str(path)] + extra) == 2
        assert "holds no run" in capsys.readouterr().err
    assert main(["analyze", str(path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(EIGS + ["--out", str(path), "--overwrite"]) == 0


# ---- case 5: a basis too large for memory is refused before it is allocated -----------------
@pytest.mark.parametrize("kwargs, named", [({"ncv": 200000}, "--ncv 200000"),
                                           ({"k": 100000}, "--k 100000")])
def test_a_basis_larger_than_memory_is_refused_naming_its_option(kwargs, named):
    n = 3_000_000  # 3M parameters: 4.8 TB for 200000 vectors
    op = LinearOperator((n, n), matvec=lambda v: v, dtype=np.float64)
    with pytest.raises(MemoryError, match=named) as caught:
        run.eigs(op, **{"k": 2, **kwargs}, progress=False)
    assert "free" in str(caught.value) and "--memory-budget" in str(caught.value)


def test_a_basis_larger_than_memory_is_refused_by_the_command_line(tmp_path, monkeypatch,
                                                                   capsys):
    (tmp_path / "wide.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(1000, 3000), torch.nn.Linear(3000, 2))\n"
        "    return model, torch.nn.CrossEntropyLoss(), (torch.randn(4, 1000), "
        "torch.tensor([0, 1, 0, 1]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for option in (["--ncv", "200000"], ["--k", "100000"]):
        assert main(["eigs", "--problem", "wide:build", "--no-progress"] + option) == 2
        err = capsys.readouterr().err
        assert f"{option[0]} {option[1]}" in err and "Traceback" not in err, err


# ---- case 6: every reader checks shapes against the format, naming the dataset -------------
class Preempted(Exception):
    """Stands in for a kill: raised inside a pass, before the run's next commit."""


@pytest.fixture
def cut_off(tmp_path, problems, monkeypatch):
    """A run stopped after 10 forwards: a state and records to continue."""
    import slow_mlp

    calls = {"count": 0}

    def forward(self, x):
        calls["count"] += 1
        if calls["count"] == 10:
            raise Preempted
        return self.net(x)

    monkeypatch.setattr(slow_mlp.SlowMLP, "forward", forward)
    path = tmp_path / "cut.h5"
    with pytest.raises(Preempted):
        main(EIGS + ["--out", str(path)])
    monkeypatch.undo()
    monkeypatch.syspath_prepend(PROBLEMS)
    return path


def replace_dataset(path, name, data, **kwargs):
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, data=data, **kwargs)


def test_a_resume_on_step_records_shorter_than_the_state_names_the_dataset(cut_off, capsys):
    replace_dataset(cut_off, "eigs/steps/alpha", np.zeros(1))  # contiguous, 1 row
    assert main(EIGS + ["--out", str(cut_off), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "/eigs/steps/alpha" in err and "Traceback" not in err, err
    assert not lock_path(cut_off).exists()


def test_a_resume_on_step_records_that_cannot_grow_names_the_dataset(cut_off, capsys):
    with h5py.File(cut_off, "r") as f:
        rows = f["eigs/steps/beta"][:]
    replace_dataset(cut_off, "eigs/steps/beta", rows)  # the rows, not growable
    assert main(EIGS + ["--out", str(cut_off), "--resume"]) == 2
    assert "dataset /eigs/steps/beta cannot grow" in capsys.readouterr().err


def test_analyze_on_a_two_dimensional_eigenvalues_dataset_names_it(kept, capsys):
    with h5py.File(kept, "r") as f:
        values = f["eigs/eigenvalues"][:]
    replace_dataset(kept, "eigs/eigenvalues", values[:, None])
    assert main(["analyze", str(kept)]) == 2
    err = capsys.readouterr().err
    assert "dataset /eigs/eigenvalues has shape (3, 1)" in err and "1 axis" in err, err


def test_analyze_on_misaligned_results_names_them(kept, capsys):
    replace_dataset(kept, "eigs/residual_bounds", np.zeros(5))
    assert main(["analyze", str(kept)]) == 2
    assert "/eigs/residual_bounds has shape (5,) but /eigs/eigenvalues" in (
        capsys.readouterr().err)
