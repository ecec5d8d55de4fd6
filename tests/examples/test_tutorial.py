"""The tutorial (examples/tutorial.py, percent format) runs from top to bottom and draws its
figures, so that it cannot fall out of step with the package."""

import runpy
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[2] / "examples" / "tutorial.py"


@pytest.mark.slow
def test_the_tutorial_runs_and_draws_its_figures(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    monkeypatch.setenv("TUTORIAL_OUT", str(tmp_path))
    runpy.run_path(str(TUTORIAL), run_name="__main__")
    printed = capsys.readouterr().out
    for name in ("tutorial_spectrum.png", "tutorial_tracking.png", "tutorial_file.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    assert (tmp_path / "tutorial.h5").is_file()
    assert "mass below 0:" in printed and "effective_rank" in printed
    assert "SpectrumTracker(hessian, k=5" in printed


def test_the_tutorial_is_in_percent_format():
    text = TUTORIAL.read_text()
    assert text.startswith("# %% [markdown]") and text.count("\n# %%") >= 10
