"""Quick mode of the Why-Adam experiment (Zhang et al. 2024 at small scale; docs/RESULTS.md):
blockwise SLQ densities of a small GPT and of a CNN of similar size, and the Jensen-Shannon
distances between their blocks' densities. About 10 CPU seconds."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow


def test_why_adam_quick(tmp_path, quiet):
    """The claim that held on every seed: the transformer's blocks are further apart (mean
    JS distance of the scaled spectra) than the CNN's, at initialization and after training;
    each block's density took one pass per step for all blocks."""
    from exp_why_adam import main

    out = main(quick=True, out_dir=tmp_path, seed=0, echo=quiet)
    (row,) = out["seeds_results"]
    steps = out["settings"]["num_steps"]
    for point in ("init", "trained"):
        gpt, cnn = row["gpt"][point], row["cnn"][point]
        assert gpt["mean_js"] > cnn["mean_js"], (point, gpt["mean_js"], cnn["mean_js"])
        assert row[f"claim_{point}"]
        for result in (gpt, cnn):
            assert result["num_passes"] == steps  # lockstep: one pass per step, all blocks
            D = np.asarray(result["js_matrix"])
            assert np.allclose(D, D.T) and np.all(np.diag(D) == 0)
            assert 0 <= D.min() and D.max() <= np.sqrt(np.log(2)) + 1e-12
    assert len(row["gpt"]["trained"]["names"]) == 7 and len(row["cnn"]["trained"]["names"]) == 5
    assert out["summary"]["claim_holds_trained"] == "1/1"
    assert (tmp_path / "exp_why_adam.png").stat().st_size > 0
