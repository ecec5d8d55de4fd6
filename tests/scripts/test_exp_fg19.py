"""Quick modes of the Fort-Ganguli experiments (docs/RESULTS.md, sections 8 and 9): the
gradient's overlap with the top eigenspace, the C large eigenvalues and the early transient
(all four parts of exp_fort_ganguli.py); logit gradients cluster and their cluster means span
the top Hessian eigenspace; training in random subspaces against the curvature there.

Each asserts what held on every seed of the quick and full runs (quick seeds 0-3 for the logit
gradients, 0-1 for the subspaces; full seeds 0-2), not one seed's value.
"""

import numpy as np
import pytest
import torch


pytest.importorskip("matplotlib")


def test_logit_gradients_against_autograd():
    """The batched logit gradients equal autograd's gradient of each logit (fast)."""
    from exp_logit_gradients import logit_gradients

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    model = model.double()
    x = torch.randn(6, 5, dtype=torch.float64)
    g = logit_gradients(model, x)
    assert g.shape == (6, 3, sum(p.numel() for p in model.parameters()))
    for i in (0, 5):
        for c in range(3):
            direct = torch.autograd.grad(model(x[i:i + 1])[0, c], list(model.parameters()))
            torch.testing.assert_close(g[i, c], torch.cat([t.reshape(-1) for t in direct]))


def test_subspace_overlap_is_one_inside_and_k_over_m_at_random():
    """The overlap measure: 1 for a subspace inside the span, 0 for an orthogonal one (fast)."""
    from exp_logit_gradients import subspace_overlap

    Q, _ = torch.linalg.qr(torch.randn(50, 6, dtype=torch.float64))
    assert subspace_overlap(Q[:, :2], Q[:, :4]) == pytest.approx(1.0)
    assert subspace_overlap(Q[:, :2], Q[:, 2:]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_logit_gradients_quick(tmp_path, quiet):
    """Quick mode (300 digits, MLP 784-16-10): at initialization and after training, logit
    gradients of one logit are similar (same class more than other classes), those of
    different logits are not, and the top-10 Hessian eigenspace lies mostly (>= 0.75) in the
    span of the 100 (logit, class) means; a random span of that size would hold 0.008."""
    from exp_logit_gradients import main

    out = main(quick=True, out_dir=tmp_path, echo=quiet)
    for point in ("init", "trained"):
        p = out["points"][point]["pairs"]
        assert p["same logit, same class"] > p["same logit, other class"] > 0.1, p
        assert abs(p["other logit"]) < 0.05, p
        H = out["points"][point]["H"]
        assert H["overlap_class_logit_means"] >= 0.75 > 50 * H["random_baseline_C2"], H
    assert (out["points"]["trained"]["pairs"]["same logit, same class"]
            > out["points"]["init"]["pairs"]["same logit, same class"])


@pytest.mark.slow
def test_goldilocks_quick(tmp_path, quiet):
    """Quick mode (d = 50, r = 0.1, 1, 10, the step scaled with r): on each seed, training in
    the random subspace reaches its best accuracy at the usual radius r = 1; the normalized
    trace of the subspace Hessian is more than 3x larger at r = 1 than at r = 0.1, and stays
    more than half as large at r = 10, where training fails: curvature alone does not decide."""
    from exp_goldilocks import main

    out = main(quick=True, out_dir=tmp_path, echo=quiet)
    runs = [r for r in out["runs"] if r["rule"] == "scaled" and r["dim"] == 50]
    for seed in out["settings"]["seeds"]:
        by_r = {r["radius"]: r for r in runs if r["seed"] == seed}
        acc = {k: v["accuracy"] for k, v in by_r.items()}
        trace = {k: v["normalized_trace"] for k, v in by_r.items()}
        assert acc[1.0] > max(acc[0.1], acc[10.0]), acc
        assert trace[1.0] > 3 * trace[0.1] and trace[10.0] > 0.5 * trace[1.0], trace
    assert np.isfinite(out["summary"]["spearman_trace_accuracy"]["scaled"])
    # each cell's mean is that of its seeds' runs; --replot recomputes the same summary
    import json

    from exp_goldilocks import replot

    cell = next(c for c in out["summary"]["table"]
                if (c["rule"], c["dim"], c["radius"]) == ("scaled", 50, 1.0))
    accs = [r["accuracy"] for r in runs if r["radius"] == 1.0]
    assert cell["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    replot(tmp_path, quick=True)
    again = json.loads((tmp_path / "exp_goldilocks.json").read_text())["summary"]
    assert again["spearman_trace_accuracy"] == pytest.approx(
        out["summary"]["spearman_trace_accuracy"])


@pytest.mark.slow
def test_fort_ganguli_quick(tmp_path, quiet):
    """Experiment 8's quick mode, all four parts and the figure (about 20 CPU s). Parts A-C
    as measured on quick seeds 0, 1, 2 (full mode: seeds 0-4): SGD keeps the gradient in the
    top-10 eigenspace (median from step 100: 0.54-0.72; full 0.81-0.90), GD does not (largest
    0.002-0.003; full below 0.01); the ratio rule finds C - 1 = 4 large eigenvalues for C = 5
    (4 on each quick seed; full 2-4) and 1 for C = 2; the larger step keeps more overlap (lr 1:
    0.74-0.79 against lr 0.1: 0.01-0.02) with `lr lambda_max` above 1. Part D (seeds 0-2):
    lambda_1 rises, then falls, for SGD and GD, by the margins below."""
    from exp_fort_ganguli import headline, main

    out = main(quick=True, out_dir=tmp_path, echo=quiet)
    h = headline(out)
    sgd = h["A SGD: median overlap with top-10, step >= 100"]
    gd = h["A GD: largest overlap with top-10, step >= 100"]
    assert sgd > 0.45 and 0 <= gd < 0.01 and sgd > 20 * gd, h
    assert h["B C = 2: ratio-rule count, 2nd half (median)"] == 1
    assert 3 <= h["B C = 5: ratio-rule count, 2nd half (median)"] <= 5
    overlap = [h[f"C lr {lr}: median overlap with top-10"] for lr in ("0.1", "1")]
    assert overlap[1] > 10 * overlap[0], overlap
    assert h["C lr 1: median lr lambda_max"] > 1 > h["C lr 0.1: median lr lambda_max"]
    for label in ("SGD", "GD"):
        for r in out["transient"]["runs"][label]:
            lam = r["lambda_1"]
            assert lam["rise"] > 1 and lam["fall"] > 1, lam
    assert (tmp_path / "exp_fort_ganguli.png").exists()
    # Part D's own claims (its quick settings: 300 digits, seeds 0-2, lambda_1 every 5
    # steps up to 60, then at 150; the run main makes, once): on every seed, SGD and GD,
    # lambda_1 first rises (peak >= 1.3 x its initial value, at a step > 0 inside the
    # window) and then falls (peak >= 2 x the value at step 150)
    transient = out["transient"]
    for label in ("SGD", "GD"):
        assert len(transient["runs"][label]) == 3
        for r in transient["runs"][label]:
            lam = r["lambda_1"]
            assert 0 < lam["peak_step"] <= transient["settings"]["window"], lam
            assert lam["rise"] >= 1.3 and lam["fall"] >= 2.0, lam
