"""The claims docs/RESULTS.md makes over every seed of experiments 2-6, 7b, 7c, 8 (parts A-C)
and 9a, checked against the committed per-seed numbers (``docs/exp_seeds.json`` with seed 0
from the documented run, exp 3's bottom-check files, and the JSON of 5 and 5b, which run their
seeds themselves): if a rerun moves a number past a stated verdict, this fails.
Reads JSON only (about a second)."""

import json
from pathlib import Path

import numpy as np
import pytest

import exp_seeds

DOCS = Path(__file__).resolve().parents[2] / "docs"


def seeds_of(name):
    seeds = exp_seeds.all_seeds(name)
    assert sorted(seeds) == [0, 1, 2, 3, 4]
    return list(seeds.values())


def test_random_vs_trained_verdicts_hold_on_every_seed():
    """Section 2: on MNIST the negative side shrinks to < 0.2% of lambda_max, 8 outliers by the
    ratio rule, lambda_1 > 6 lambda_10, > 99% within 1e-2 lambda_max of zero; on random inputs
    no outlier group (lambda_1 < 1.6 lambda_10) and less mass at zero."""
    for h in seeds_of("random_vs_trained"):
        assert h["MNIST trained: top / abs(bottom)"] > 600 > 10 > h["MNIST init: top / abs(bottom)"]
        assert h["MNIST trained: outliers (ratio rule)"] == 8
        assert h["MNIST trained: lambda_1 / lambda_10"] > 6
        assert h["MNIST trained: mass within 1e-2 lambda_max"] > 0.99
        assert h["random trained: lambda_1 / lambda_10"] < 1.6
        assert h["random trained: mass within 1e-2 lambda_max"] < 0.86


def test_growing_network_verdicts_hold_on_every_seed():
    """Section 3: the 10-unit network has the largest lambda_1; from h = 30 to 70 lambda_1 does
    not grow (falls on 4/5 seeds, flat within 1% on the fifth); the top 10 of h >= 30 differ
    by 13-34% at the worst rank."""
    falls = 0
    for h in seeds_of("growing_network"):
        lam = [h[f"h = {w}: lambda_1"] for w in (10, 30, 50, 70)]
        assert lam[0] > max(lam[1:])
        assert lam[3] <= 1.01 * lam[1]
        falls += bool(np.all(np.diff(lam) < 0))
        assert 0.12 < h["top-10 spread across h >= 30 (max over ranks)"] < 0.35
    assert falls == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_growing_network_bottom_check_holds_on_every_seed(seed):
    """Section 3's bottom check: at every width the 20 smallest at tol 1e-6 norm(H) leave no SLQ
    mass below the 20th (bracket [0, 0]) and the quadrature's lowest node lies above it, while
    the tol-1e-4 run returned 1-5 values above the accurate 20th."""
    name = "exp_growing_network_bottom" + (f"_seed{seed}" if seed else "") + ".json"
    rows = json.loads((DOCS / name).read_text())["runs"]
    assert sorted(r["hidden"] for r in rows) == [10, 30, 50, 70]
    for r in rows:
        below = r["slq_below_20th"]
        assert below["resolved"] and abs(below["lower"]) < 1e-6 and abs(below["upper"]) < 1e-6
        assert r["slq_lowest_node"] > r["fine"][-1]
        assert 1 <= r["coarse_above_fine_20th"] <= 5


def test_batch_size_verdicts_hold_on_every_seed():
    """Section 4, at each run's convergence: both converge, every top-10 eigenvalue of batch
    512 is at least 3x batch 10's, 9 outliers (ratio rule) for batch 512 and another count for
    batch 10, relatively larger negatives for batch 10, better test accuracy for batch 10."""
    for h in seeds_of("batch_size"):
        assert h["both converged"] == 1
        assert h["smallest top-10 ratio 512 / 10"] > 3.0
        assert h["lambda_1 ratio 512 / 10"] > 4.5
        assert h["outliers (ratio rule), batch 512"] == 9
        assert h["outliers (ratio rule), batch 10"] != 9
        assert h["bottom / lambda_1, batch 10"] < h["bottom / lambda_1, batch 512"] < 0
        assert h["test accuracy 10 - 512"] > 0.02


def test_same_basin_verdicts_hold_on_every_seed():
    """Section 5 (``docs/exp_same_basin.json``, seeds 0-4 of one run): the small-batch path
    climbs to a training loss of 2.2-12.9 on every seed; the segment between the ends carries
    a barrier (0.05-8.0) on every seed; the large-batch end is 4.3-39x sharper; the premise
    (SB better by two paired standard errors, both ends converged) is met on 2 of 5 seeds."""
    out = json.loads((DOCS / "exp_same_basin.json").read_text())
    runs = out["runs"]
    assert out["seeds"] == [0, 1, 2, 3, 4] and len(runs) == 5
    for run in runs:
        summary = run["summary"]
        assert summary["climb_max_train_loss"] > 2.0 > 100 * run["ends"]["LB"]["train_loss"]
        assert summary["barrier_train_loss"] > 0.04
        assert summary["top_ratio_LB_over_SB"] > 4.0
        assert run["ends"]["LB"]["converged"]
    assert sum(run["summary"]["premise"]["met"] for run in runs) == 2


def test_line_interpolation_2016_verdicts_hold_on_every_seed():
    """Section 5b (``docs/exp_line_interpolation_2016.json``, seeds 0-4): as published, the
    one-start segment stays flat at every checkpoint (barrier at most 0.0032), the two-start
    segment's largest loss falls 4.9-6.0x from step 20 to 800 but keeps a barrier of
    0.18-0.23; at convergence the same (0.0009-0.0019 against 0.19-0.27)."""
    out = json.loads((DOCS / "exp_line_interpolation_2016.json").read_text())["summary"]

    def per_seed(record, name):
        value = record[name]
        values = np.asarray(value["per_seed"] if isinstance(value, dict) else value)
        assert values.shape == (5,)
        return values

    shared, separate = out["paths"]["shared"], out["paths"]["separate"]
    assert per_seed(shared, "barrier_max_after_start").max() < 0.004
    assert per_seed(separate, "segment_max_decreases").all()
    fall = per_seed(separate, "max_on_segment_first") / per_seed(separate, "max_on_segment_last")
    assert np.all(fall > 4.5), fall
    assert per_seed(separate, "barrier_last").min() > 0.15
    assert per_seed(out["shared"], "barrier_train_loss").max() < 0.002
    assert per_seed(out["separate"], "barrier_train_loss").min() > 0.15


def test_gauss_newton_verdicts_hold_on_every_seed():
    """Section 6: G has no eigenvalue below rounding at any point; after training the top-10
    spaces of H and G coincide (>= 0.999) and norm(R) / norm(G) is 0.4-1.7%; at the random
    point the spaces differ (0.48-0.87) and R is 12-93% of G."""
    for h in seeds_of("gauss_newton"):
        for data in ("clusters", "mnist"):
            for point in ("init", "trained"):
                assert h[f"{data}_{point}: negative eigenvalues of G"] == 0
                assert h[f"{data}_{point}: min(G) / lambda_max(H)"] > -1e-14
            assert h[f"{data}_trained: overlap of top-10 spaces of H and G"] >= 0.999
            assert h[f"{data}_init: overlap of top-10 spaces of H and G"] < 0.9
            assert h[f"{data}_trained: norm(R) / norm(G)"] < 0.02
            assert h[f"{data}_init: norm(R) / norm(G)"] > 0.1


def test_heat_maps_verdicts_hold_on_every_seed():
    """Section 7b: the diagonal layer blocks' share grows five- to six-fold (to 0.38-0.41), the
    near-zero share and the share of appreciable entries grow, and abs(lambda_min) /
    lambda_max falls more than 100-fold."""
    for h in seeds_of("heat_maps_2016"):
        share = [h[f"{p}: diagonal blocks' share of norm(H)_F^2"] for p in ("init", "trained")]
        assert share[1] > 0.37 and share[1] > 4.5 * share[0]
        assert h["trained: near-zero eigenvalues"] > 0.5 > h["init: near-zero eigenvalues"]
        assert h["trained: entries > 1e-3 max"] > h["init: entries > 1e-3 max"]
        ratio = [h[f"{p}: abs(lambda_min) / lambda_max"] for p in ("init", "trained")]
        assert ratio[1] < 0.01 * ratio[0]


def test_logistic_regression_verdicts_hold_on_every_seed():
    """Section 7c: one blob is Marchenko-Pastur at w = 0 and at the minimum (nothing beyond the
    edge, KS < 0.02); two blobs add exactly one outlier at w = 0, within 2% of BBP, and at the
    minimum spread 23-27 eigenvalues past the edge (KS 0.26-0.29); Example 2 has one outlier at
    W = 0 at each alpha (1.16-2.72x lambda_2, 57-344x below the paper's values) and none after
    training (lambda_1 / lambda_2 at most 1.26)."""
    paper = {"1": 454.4, "2": 819.5, "0.02": 92.7}
    for h in seeds_of("logistic_regression"):
        for point in ("init", "trained"):
            assert h[f"one_blob, {point}: eigenvalues beyond 1.05 x MP edge"] == 0
            assert h[f"one_blob, {point}: KS distance to MP"] < 0.02
        assert h["two_blobs, init: eigenvalues beyond 1.05 x MP edge"] == 1
        assert abs(h["two_blobs, init: lambda_max / BBP prediction"] - 1) < 0.02
        assert 20 <= h["two_blobs, trained: eigenvalues beyond 1.05 x MP edge"] <= 30
        assert h["two_blobs, trained: KS distance to MP"] > 0.2
        for alpha, value in paper.items():
            assert 1.1 < h[f"softmax alpha {alpha}, init: lambda_1 / lambda_2"] < 3
            assert h[f"softmax alpha {alpha}, trained: lambda_1 / lambda_2"] < 1.3
            assert 50 < value / h[f"softmax alpha {alpha}, init: lambda_1"] < 400


def test_fort_ganguli_and_logit_gradient_verdicts_hold_on_every_seed():
    """Sections 8 (parts A-C) and 9a: SGD keeps 0.81-0.90 of the gradient in the top-10 space,
    GD below 0.01; C - 1 large eigenvalues for C = 10 and 20; lr 0.5 keeps more overlap than lr
    0.1. Logit gradients of the same logit have mean cosine 0.17-0.50, of different logits
    0.00 +- 0.02; the top-10 of H lies 79-91% in the span of the 100 (logit, class) means."""
    for h in seeds_of("fort_ganguli"):
        assert h["A SGD: median overlap with top-10, step >= 100"] > 0.8
        assert h["A GD: largest overlap with top-10, step >= 100"] < 0.01
        for classes in (10, 20):
            assert h[f"B C = {classes}: ratio-rule count, 2nd half (median)"] == classes - 1
        assert (h["C lr 0.5: median overlap with top-10"]
                > 1.5 * h["C lr 0.1: median overlap with top-10"])
    for h in seeds_of("logit_gradients"):
        for point in ("init", "trained"):
            same = [h[f"{point}: mean cosine, same logit, {c} class"] for c in ("same", "other")]
            assert min(same) > 0.15 and abs(h[f"{point}: mean cosine, other logit"]) < 0.02
            assert 0.78 < h[f"{point}: top-10 of H in span of (logit, class) means"] < 0.92
