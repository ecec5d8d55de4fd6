"""The command line on par with Python: trace, per-layer spectra, gradient overlap and
tracking as commands, checked against dense references; every option documented; no
carriage return off a terminal; the next step said where it is needed."""

import argparse

import numpy as np
import pytest
import torch

from lanczos_hessian.cli import build_parser, main

from conftest import reference_matrices

PROBLEM = """import torch
def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return model, torch.nn.CrossEntropyLoss(), (x, y)
"""


@pytest.fixture
def problem(tmp_path, monkeypatch):
    (tmp_path / "cli_problem.py").write_text(PROBLEM)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("cli_problem")
    model, loss_fn, (x, y) = importlib.reload(module).build()
    H, _ = reference_matrices(model, loss_fn, x, y)
    return "cli_problem:build", np.linalg.eigh(H), model, loss_fn, (x, y)


def result_line(text):
    return next(line for line in text.splitlines() if line.startswith(("result:",
                                                                         "written to")))


def test_trace_command_against_the_dense_trace(problem, capsys):
    name, (lam, _), *_ = problem
    assert main(["trace", "--problem", name, "--num-probes", "400", "--seed", "1"]) == 0
    line = result_line(capsys.readouterr().out)
    value, stderr = (float(w) for w in line.split("=")[1].split()[0:3:2])
    assert abs(value - lam.sum()) <= 4 * stderr and stderr < 0.2 * abs(lam.sum())


def test_layers_command_against_the_dense_diagonal_blocks(problem, capsys):
    name, _, model, loss_fn, (x, y) = problem
    assert main(["layers", "--problem", name, "--k", "2", "--tol", "1e-10"]) == 0
    printed = capsys.readouterr().out
    H, _ = reference_matrices(model, loss_fn, x, y)
    sizes = {"0": 3 * 5 + 5, "2": 5 * 3 + 3}
    start = 0
    for layer, size in sizes.items():
        block = np.linalg.eigvalsh(H[start:start + size, start:start + size])
        start += size
        row = next(line for line in printed.splitlines() if line.split()[:1] == [layer])
        shown = np.array([float(v) for v in row.split()[1:]])
        np.testing.assert_allclose(shown, block[::-1][:2], rtol=1e-4)
    assert "result: largest block eigenvalue" in printed


def test_overlap_command_against_the_dense_eigenvectors(problem, capsys):
    name, (lam, V), model, loss_fn, (x, y) = problem
    assert main(["overlap", "--problem", name, "--k", "3", "--tol", "1e-10",
                 "--no-progress"]) == 0
    line = result_line(capsys.readouterr().out)
    loss = loss_fn(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, model.parameters())])
    g = g.numpy()
    exact = np.sum((V[:, -3:].T @ g) ** 2) / (g @ g)
    assert float(line.split()[1]) == pytest.approx(exact, abs=2e-4)


def test_track_command_writes_table_file_and_figure(problem, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    name = problem[0]
    out, plot = tmp_path / "track.h5", tmp_path / "track.png"
    assert main(["track", "--problem", name, "--steps", "20", "--every", "10", "--k", "2",
                 "--lr", "0.5", "--slq-probes", "3", "--slq-steps", "10", "--out", str(out),
                 "--plot", str(plot), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    from lanczos_hessian import read_tracking

    tracking = read_tracking(out)
    assert list(tracking["step"]) == [0, 10, 20] and plot.stat().st_size > 10_000
    assert result_line(printed).startswith(f"written to {out}: 3 measurements")
    assert "(2/lr = 4)" in printed
    assert np.isfinite(tracking.slq_series()["trace"]).all()  # the file knows n


def test_every_option_has_help_and_its_default(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"demo", "eigs", "slq", "analyze", "trace", "layers", "overlap",
            "track"} <= set(sub.choices)
    missing = []
    for command, sub_parser in sub.choices.items():
        for action in sub_parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if not action.help or (action.option_strings and not flag
                                   and "default" not in action.help):
                missing.append((command, action.dest))
    assert not missing, missing


OPERATOR_COMMANDS = ("eigs", "slq", "trace", "layers", "overlap", "track", "blocks")


@pytest.mark.parametrize("command", OPERATOR_COMMANDS)
def test_a_forgotten_problem_is_refused_naming_both_forms(command, tmp_path, capsys):
    """No command analyses the demo network unless told to: argparse's refusal (exit 2,
    nothing built, no file) names --problem clusters-mlp and package.module:function."""
    writes = command in ("eigs", "slq", "track", "blocks")
    with pytest.raises(SystemExit) as stopped:
        main([command, "--seed", "0"] + (["--out", str(tmp_path / "run.h5")] if writes else []))
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"lanczos-hessian {command}: error: the following arguments are "
                          "required: --problem")
    assert "--problem clusters-mlp" in err and "--problem package.module:function" in err
    assert sorted(tmp_path.iterdir()) == []


def test_a_forgotten_problem_is_said_and_a_checkpoint_needs_one(problem, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["eigs", "--checkpoint", str(tmp_path / "w.pt"), "--k", "2"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err
    assert "required: --problem" in err and "package.module:function" in err
    parser = build_parser()  # the demo keeps its network: no --problem there
    assert parser.parse_args(["demo"]).command == "demo"


def test_an_existing_output_names_resume(problem, tmp_path, capsys):
    out = tmp_path / "e.h5"
    out.write_bytes(b"not a run")
    assert main(["eigs", "--problem", problem[0], "--k", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


@pytest.mark.slow
def test_no_carriage_return_off_a_terminal(problem, tmp_path, capsys):
    """Training bar (demo and track), solvers and summaries write plain lines to a log."""
    assert main(["demo", "--out", str(tmp_path / "d.h5"), "--num-examples", "100",
                 "--steps", "30", "--no-dense"]) == 0
    demo = capsys.readouterr()
    assert main(["track", "--problem", problem[0], "--steps", "4", "--every", "2", "--k",
                 "2"]) == 0
    track = capsys.readouterr()
    for captured in (demo, track):
        assert "\r" not in captured.out and "\r" not in captured.err
    assert "training: done: 30/30 steps" in demo.err
    assert "no --problem given" not in demo.err
