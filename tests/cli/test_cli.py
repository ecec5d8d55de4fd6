"""The command line: demo (reduced size) and eigs, end to end through HDF5."""

import subprocess
import sys

import numpy as np
import pytest

from lanczos_hessian.cli import main
from lanczos_hessian.storage.hdf5 import read_file


@pytest.mark.slow
def test_demo_runs_on_a_reduced_size_and_writes_its_file(tmp_path, capsys):
    out = tmp_path / "demo.h5"
    code = main(["demo", "--out", str(out), "--num-examples", "200", "--steps", "300",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Hessian eigenvalues, top 20 and bottom 5" in printed
    assert "outliers among the top 20" in printed and "dense spectrum" in printed
    assert "step after the 9th eigenvalue: lambda_9 / lambda_10 =" in printed
    saved = read_file(out)
    eigs, dense = saved["eigs"], saved["dense"]
    assert eigs.attrs["complete"] and len(eigs["eigenvalues"]) == 25
    assert eigs["converged"].all()
    exact = np.sort(dense["eigenvalues"])
    top = np.sort(eigs["eigenvalues"])[-20:]
    bottom = np.sort(eigs["eigenvalues"])[:5]
    scale = np.abs(exact).max()
    assert np.abs(top - exact[-20:]).max() <= 1e-8 * scale
    assert np.abs(bottom - exact[:5]).max() <= 1e-6 * scale
    assert saved["attrs"]["num_params"] == 4270 and saved["attrs"]["num_samples"] == 200
    assert len(eigs.steps["alpha"]) > 25  # one committed record per application
    assert main(["demo", "--out", str(out), "--num-examples", "200", "--steps", "10",
                 "--no-progress"]) == 2  # exists
    assert "exists" in capsys.readouterr().err


def test_eigs_command_on_a_user_problem(tmp_path, capsys, monkeypatch):
    module = tmp_path / "my_problem.py"
    module.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(),"
        " torch.nn.Linear(5, 2))\n"
        "    x = torch.randn(40, 3); y = torch.randint(0, 2, (40,))\n"
        "    return model, torch.nn.CrossEntropyLoss(), (x, y)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "eigs.h5"
    code = main(["eigs", "--problem", "my_problem:build", "--k", "4", "--which", "BE",
                 "--operator", "ggn", "--tol", "1e-8", "--model-dtype", "float64",
                 "--save-vectors", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "ggn eigenvalues (BE, k=4), 32 parameters" in capsys.readouterr().out
    saved = read_file(out)
    assert saved["attrs"]["operator"] == "ggn" and saved["eigs"]["eigenvectors"].shape == (32, 4)
    assert saved["eigs"]["eigenvalues"].min() >= -1e-10  # G is positive semi-definite


def test_bad_problem_is_a_clear_error(capsys):
    assert main(["eigs", "--problem", "no_such_module:f", "--no-progress"]) == 2
    assert "cannot load problem" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch: about 2 s
def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "lanczos_hessian", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout and "eigs" in done.stdout


def test_demo_on_a_tiny_size_agrees_with_arpack(tmp_path):
    """The fast tier's demo check (the reduced-size run above, with its dense spectrum, is
    slow): 3 classes, 60 samples, no dense spectrum. Its top eigenvalues equal ARPACK's on
    the same operator, the gap rule finds one outlier per class, and the file holds both."""
    from scipy.sparse.linalg import eigsh

    from lanczos_hessian.examples.demo import run_demo

    out, printed = tmp_path / "demo.h5", []
    numbers = run_demo(out, num_classes=3, num_examples=60, steps=50, k_top=4, k_bottom=2,
                       num_probes=2, num_steps=10, dense=False, progress=False,
                       echo=printed.append)
    result = numbers["result"]
    assert numbers["exact"] is None and result.converged.all()
    arpack = np.sort(eigsh(numbers["op"], k=4, which="LA", tol=1e-10)[0])
    np.testing.assert_allclose(np.sort(result.eigenvalues)[-4:], arpack, rtol=1e-8)
    assert numbers["counts"].gap == 3
    summary = [line for line in printed if "outliers among the top 4 (3 classes" in line]
    assert len(summary) == 1 and "gap 3 (between" in summary[0]
    assert "by the below-top rule" in summary[0] and "step after the 2nd eigenvalue" in summary[0]
    saved = read_file(out)
    np.testing.assert_array_equal(saved["eigs"]["eigenvalues"], result.eigenvalues)
    assert saved["eigs"].attrs["outliers_gap"] == 3 and "dense" not in saved
    loss = saved["training"]["loss"]
    assert len(loss) >= 50 and loss[-1] < loss[0]
    slq = saved["slq"].attrs  # 10 lockstep passes after the deflation's own
    assert slq["complete"] and slq["num_passes"] == 10 + slq["deflation_passes"] > 10
