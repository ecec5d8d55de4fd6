"""The smaller cases of the hostile-input audit (issue 16, point 6), each a clear message
naming the bad value instead of a traceback, a wrong action or a file left behind."""

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_mlp, mlp_data
from lanczos_hessian import HessianOperator, LanczosHessianError, SpectrumFileError, run
from lanczos_hessian.analysis.spectrum import read_spectrum, summarize
from lanczos_hessian.cli import main
from lanczos_hessian.storage.hdf5 import SpectrumWriter
from lanczos_hessian.storage.lock import lock_path

LOSS = torch.nn.CrossEntropyLoss()
PROBLEMS = str(Path(__file__).parent / "problems")
SMALL = ["--problem", "slow_mlp:build", "--batch-size", "30", "--no-progress"]


@pytest.fixture
def problems(monkeypatch):
    monkeypatch.syspath_prepend(PROBLEMS)


def test_a_crafted_slq_group_with_nodes_but_no_weights(tmp_path, capsys):
    path = tmp_path / "crafted.h5"
    with SpectrumWriter(path, {"num_params": 10}) as writer:
        writer.write_arrays("slq", {"nodes": np.ones((2, 3))})
        writer.set_attrs("slq", {"dim": 10})
    with pytest.raises(SpectrumFileError, match="its slq group has nodes but no weights"):
        read_spectrum(path)
    assert main(["analyze", str(path)]) == 2
    assert "nodes but no weights" in capsys.readouterr().err


def test_random_bytes_inside_a_file_give_a_clear_error_when_read_or_resumed(tmp_path):
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    try:
        base = tmp_path / "base.h5"
        run.eigs(HessianOperator(make_mlp(), LOSS, mlp_data()), base, k=3, which="BE", seed=0,
                 save_vectors=True, progress=False)
        data, copy = base.read_bytes(), tmp_path / "damaged.h5"
        outcomes = {"ok": 0, "clear": 0}
        for seed in (2, 3):  # 25 places each, among them some that once gave raw errors
            rng = np.random.default_rng(seed)
            for _ in range(25):
                damaged = bytearray(data)
                offset = int(rng.integers(0, len(data) - 16))
                damaged[offset:offset + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
                copy.write_bytes(bytes(damaged))
                for attempt in (lambda: summarize(read_spectrum(copy)),
                                lambda: run.eigs(HessianOperator(make_mlp(), LOSS, mlp_data()),
                                                 copy, k=3, which="BE", seed=0,
                                                 save_vectors=True, resume=True,
                                                 progress=False)):
                    try:
                        attempt()
                        outcomes["ok"] += 1
                    except LanczosHessianError:  # anything else fails the test
                        outcomes["clear"] += 1
                assert not lock_path(copy).exists()  # a refused resume leaves the file free
        assert outcomes["clear"] >= 5, outcomes
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("args, named", [
    (["eigs", "--k", "0"], "--k must be a positive integer, got 0"),
    (["slq", "--num-steps", "-5"], "--num-steps must be a positive integer, got -5"),
    (["eigs", "--tol", "-1"], "--tol must be positive, got -1.0"),
    (["slq", "--deflate-top", "-2"], "--deflate-top must be a non-negative integer, got -2"),
    (["eigs", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["eigs", "--k", "500"], "k=500 out of range: need 1 <= k <= n = 136")])
def test_invalid_arguments_are_refused_before_any_file_is_created(args, named, tmp_path,
                                                                  problems, capsys):
    out = tmp_path / "run.h5"
    assert main(args + SMALL + ["--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []  # no file, no lock file: the rerun is free


def test_invalid_run_arguments_in_python_create_no_file(tmp_path):
    op = HessianOperator(make_mlp(), LOSS, mlp_data())
    out = tmp_path / "run.h5"
    for call, named in ((lambda: run.slq(op, out, num_steps=-5), "num_steps must be"),
                        (lambda: run.slq(op, out, k_top=2, tol=-1), "tol must be positive"),
                        (lambda: run.eigs(op, out, k=0), "k=0 out of range"),
                        (lambda: run.eigs(op, out, k=2, seed=-1), r"seed must be a non-negative"
                                                                  r" integer \(--seed\), got -1")):
        with pytest.raises(ValueError, match=named):
            call()
        assert not out.exists() and not lock_path(out).exists()
    assert op.num_applications == 0


def test_a_problem_that_is_not_a_model_loss_and_data(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_problems.py").write_text(
        "def strings():\n    return ('m', 'l', 'd')\n"
        "import torch\n"
        "def no_loss():\n"
        "    return torch.nn.Linear(2, 2), 'l', (torch.ones(3, 2), torch.zeros(3))\n"
        "CONSTANT = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, named in (("bad_problems:strings", "returned a model of type str; expected a "
                                                 "torch.nn.Module"),
                        ("bad_problems:no_loss", "returned a loss_fn of type str; expected a "
                                                 "callable"),
                        ("bad_problems:CONSTANT", "names a int, not a function")):
        assert main(["eigs", "--problem", spec, "--no-progress"]) == 2
        assert named in capsys.readouterr().err, spec


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_here(problems, capsys):
    assert main(["eigs", "--device", "cuda"] + SMALL) == 2
    err = capsys.readouterr().err
    assert "--device cuda: " in err and "use --device cpu" in err
    assert main(["eigs", "--device", "gpu7"] + SMALL) == 2
    assert "--device 'gpu7' is not a device name" in capsys.readouterr().err


def test_params_given_as_one_string():
    with pytest.raises(TypeError, match=r"got the string '0.weight' .*pass \['0.weight'\]"):
        HessianOperator(make_mlp(), LOSS, mlp_data(), params="0.weight")


@pytest.mark.parametrize("content, named", [
    (b"not a checkpoint at all", "not a state_dict saved by torch.save"),
    ([1, 2, 3], "it holds list"),
    ({101: torch.zeros(2)}, "whose entry 101 is not a named tensor"),
    ({"weight": torch.zeros(2)}, "does not fit the problem's model")])
def test_a_checkpoint_that_is_not_a_state_dict(content, named, tmp_path, problems, capsys):
    path = tmp_path / "ckpt.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert main(["eigs", "--checkpoint", str(path)] + SMALL) == 2
    assert f"--checkpoint {path}" in (err := capsys.readouterr().err) and named in err, err


def test_an_slq_run_cut_off_in_its_deflation_phase_shows_its_progress(tmp_path, capsys,
                                                                      monkeypatch):
    """analyze used to fail with 'committed no step yet', hiding the deflation's progress."""
    monkeypatch.syspath_prepend(PROBLEMS)
    import slow_mlp

    calls = {"count": 0}

    def forward(self, x):  # stops the run at its 40th forward: inside the deflation
        calls["count"] += 1
        if calls["count"] == 40:
            raise KeyboardInterrupt
        return self.net(x)

    monkeypatch.setattr(slow_mlp.SlowMLP, "forward", forward)
    out = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        main(["slq", "--deflate-top", "3", "--num-probes", "2", "--num-steps", "5",
              "--out", str(out)] + SMALL)
    spectrum = read_spectrum(out)
    assert spectrum.quadrature is None and len(spectrum.eigenvalues) == 3
    assert any(line.startswith("eigs (the SLQ run's deflation): CUT OFF, ")
               for line in spectrum.progress), spectrum.progress
    assert "slq: no step committed yet (its deflation phase is running" in summarize(spectrum)
    assert main(["analyze", str(out)]) == 0
    assert "operator applications committed" in capsys.readouterr().out
    assert not lock_path(out).exists()
