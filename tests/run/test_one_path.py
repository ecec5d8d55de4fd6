"""One run path: the same seed gives the same numbers from Python, the command line and the demo.

A deflated SLQ is computed by :func:`lanczos_hessian.deflated_slq` (Python),
``lanczos-hessian slq`` (the command line, through :mod:`lanczos_hessian.run`) and the demo.
All three split the seed and plan the deflation in one place, so their eigenvalues, nodes
and weights must agree bit for bit, not merely to a tolerance.
"""

import numpy as np

from lanczos_hessian import HessianOperator, deflated_slq
from lanczos_hessian.cli import main
from lanczos_hessian.examples.demo import run_demo
from lanczos_hessian.run import eigs as run_eigs
from lanczos_hessian.storage.hdf5 import read_file

PROBLEM = (
    "import torch\n"
    "def build():\n"
    "    torch.manual_seed(0)\n"
    "    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),"
    " torch.nn.Linear(6, 3)).double()\n"
    "    g = torch.Generator().manual_seed(1)\n"
    "    x = torch.randn(50, 4, generator=g, dtype=torch.float64)\n"
    "    y = torch.randint(0, 3, (50,), generator=g)\n"
    "    return model, torch.nn.CrossEntropyLoss(), (x, y)\n")
STRATEGY = "forward-over-reverse"  # fixed: "auto" chooses by timing


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.tobytes() == b.tobytes(), (a, b)


def _problem(tmp_path, monkeypatch):
    (tmp_path / "one_path_problem.py").write_text(PROBLEM)
    monkeypatch.syspath_prepend(str(tmp_path))
    import one_path_problem

    model, loss, data = one_path_problem.build()
    return HessianOperator(model, loss, data, strategy=STRATEGY)


def test_command_line_and_python_give_the_same_deflated_slq(tmp_path, monkeypatch):
    op = _problem(tmp_path, monkeypatch)
    out = tmp_path / "slq.h5"
    assert main(["slq", "--problem", "one_path_problem:build", "--strategy", STRATEGY,
                 "--deflate-top", "3", "--deflate-bottom", "2", "--num-probes", "3",
                 "--num-steps", "12", "--seed", "7", "--out", str(out), "--no-progress"]) == 0
    saved = read_file(out)
    api = deflated_slq(op, 3, 2, num_probes=3, num_steps=12, rng=7)
    _same(saved["slq"]["outliers"], api.outliers)
    _same(saved["slq"]["nodes"], api.nodes)
    _same(saved["slq"]["weights"], api.weights)
    _same(saved["eigs"]["eigenvalues"], api.outliers)
    assert saved["slq"].attrs["num_passes"] == api.num_passes


def test_command_line_and_python_give_the_same_eigenpairs(tmp_path, monkeypatch):
    op = _problem(tmp_path, monkeypatch)
    out = tmp_path / "eigs.h5"
    assert main(["eigs", "--problem", "one_path_problem:build", "--strategy", STRATEGY,
                 "--k", "4", "--which", "BE", "--k-bottom", "1", "--seed", "5",
                 "--out", str(out), "--no-progress"]) == 0
    saved = read_file(out)
    api = run_eigs(op, k=4, which="BE", k_bottom=1, seed=5, progress=False)
    _same(saved["eigs"]["eigenvalues"], api.eigenvalues)
    _same(saved["eigs"]["residual_bounds"], api.residual_bounds)


def test_the_demo_is_the_deflated_slq_of_its_network(tmp_path):
    numbers = run_demo(tmp_path / "demo.h5", num_examples=200, steps=150, k_top=6, k_bottom=2,
                       num_probes=3, num_steps=15, seed=4, dense=False, progress=False,
                       echo=lambda *args: None)
    saved = read_file(tmp_path / "demo.h5")
    api = deflated_slq(numbers["op"], 6, 2, num_probes=3, num_steps=15, rng=4)
    _same(saved["eigs"]["eigenvalues"], api.outliers)
    _same(saved["slq"]["nodes"], api.nodes)
    _same(saved["slq"]["weights"], api.weights)
    _same(numbers["slq"].nodes, api.nodes)
