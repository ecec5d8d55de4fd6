"""Progress off a terminal: plain status lines, no carriage returns, at most one per interval."""

import io

import numpy as np
import pytest

from conftest import spectrum_matrix
from lanczos_hessian import lanczos_eigsh, slq
from lanczos_hessian.progress import Progress


def test_a_log_file_gets_plain_lines_at_most_one_per_interval():
    stream = io.StringIO()  # not a terminal
    bar = Progress("SLQ", "step", total=80, stream=stream, every=3600)
    for _ in range(80):
        bar.update(1, converged="3/5")
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [text.splitlines()[-1]]  # only the closing line
    assert text.startswith("SLQ: done: 80/80 steps in") and "converged 3/5" in text


def test_status_lines_name_what_they_count_and_the_time_left():
    stream = io.StringIO()
    bar = Progress("Lanczos", "pass", stream=stream, every=0.0)
    bar.update(1, top="0.5")
    bar.update(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("Lanczos: 1 pass in") and lines[1].startswith("Lanczos: 2 passes")
    timed = io.StringIO()
    bar = Progress("SLQ", "step", total=10, stream=timed, every=0.0)
    bar.update(1)  # the first update gives no rate of its own: no time left yet
    assert "1/10 step in" in timed.getvalue() and "s left" not in timed.getvalue()
    bar.update(3)
    assert "4/10 steps" in timed.getvalue() and "s left" in timed.getvalue()


def test_the_time_left_is_the_rate_after_the_first_update(monkeypatch):
    """A first pass of 60 s (one-time costs) then passes of 10 s: 8 passes left take 80 s,
    not the 8 x 35 s that the mean over all passes (the first included) would say."""
    now = [0.0]
    monkeypatch.setattr("lanczos_hessian.progress.time.monotonic", lambda: now[0])
    bar = Progress("SLQ", "step", total=10, stream=io.StringIO(), every=3600)
    now[0] = 60.0
    bar.update(1)
    assert bar.seconds_left() is None
    now[0] = 70.0
    bar.update(1)
    assert bar.seconds_left() == pytest.approx(80.0)


def test_solvers_write_no_carriage_returns_into_a_log(capsys):
    A = spectrum_matrix(np.linspace(-1, 3, 120), seed=0)
    lanczos_eigsh(A, k=3, rng=0, progress=True)
    slq(A, 3, 10, rng=0, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "Lanczos: done:" in err and "SLQ: done: 10/10 steps" in err


def test_a_bad_interval_is_named(monkeypatch):
    monkeypatch.setenv("LANCZOS_HESSIAN_LOG_EVERY", "often")
    with pytest.raises(ValueError, match="LANCZOS_HESSIAN_LOG_EVERY='often'"):
        Progress("SLQ", stream=io.StringIO())


@pytest.mark.slow  # two command-line runs: about 2 s
def test_quiet_and_log_every_on_the_command_line(tmp_path, capsys, monkeypatch):
    from lanczos_hessian.cli import main

    monkeypatch.delenv("LANCZOS_HESSIAN_LOG_EVERY", raising=False)
    out = tmp_path / "run.h5"
    assert main(["eigs", "--k", "3", "--quiet", "--log-every", "5", "--out", str(out),
                 "--problem", "clusters-mlp"]) == 0
    captured = capsys.readouterr()
    closing = captured.out.strip()  # one line: the file and the headline numbers
    assert closing.startswith(f"written to {out}: top eigenvalue ") and "\n" not in closing
    assert "pairs converged" in closing
    assert "\r" not in captured.err
    assert main(["eigs", "--problem", "clusters-mlp", "--k", "3", "--log-every", "0", "--out",
                 str(tmp_path / "x.h5")]) == 2
    assert "--log-every must be a positive number" in capsys.readouterr().err
