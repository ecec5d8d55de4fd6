"""Quick modes of the paper experiments (scripts/exp_*.py), with the claims that hold here.

Each assertion is what the full runs documented in docs/RESULTS.md show, checked on the quick
configuration; where a paper's claim does not hold here, the test asserts what does hold.
"""

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow  # 4-12 s each


def _quiet(*args):
    pass


def test_outliers_vs_classes_quick(tmp_path):
    """Sagun et al. 2018, Table 1: ReLU, GD, well-trained, input covariance scale 10.

    The paper's claim is "about k outliers"; here the gap rule finds exactly k - 1 for
    k = 2, 5, 10 (the softmax cross-entropy has k - 1 independent output directions), within
    the paper's +-1. (At scale 1, where the clusters are far apart and the loss falls to
    ~1e-3, the gap rule mostly finds 1 or 2 for k >= 10: see RESULTS.md.)
    """
    from exp_outliers_vs_classes import main

    out = main(quick=True, out_dir=tmp_path, echo=_quiet)
    rows = out["rows"]
    assert [r["k"] for r in rows] == [2, 5, 10]
    for r in rows:
        assert r["converged"]
        assert r["gap"] == r["k"] - 1, r
        assert abs(r["gap"] - r["k"]) <= 1
        assert r["ratio"] == r["k"] - 1  # the ratio rule agrees
        assert r["train_accuracy"] == 1.0
    assert out["summary"]["within_1"] == 3
    for ext in ("h5", "png", "json"):
        path = tmp_path / f"exp_outliers_vs_classes.{ext}"
        assert path.exists()
    assert (tmp_path / "exp_outliers_vs_classes.png").stat().st_size < 300_000


def test_simple_case_2016_quick(tmp_path):
    """Sagun, Bottou and LeCun 2016, Figs. 7-9, on two 2-D blobs.

    Holds here: the parameter counts 18..434 of 2-h-h-2 MLPs; after training the number of
    large eigenvalues (> 0.1 lambda_max) stays at a handful for all five sizes (full mode:
    3 for every size with cross-entropy, 4-5 with MSE; quick mode: 3-4 and 4-6), while the
    number of near-zero eigenvalues (|lambda| <= 1e-3 lambda_max) grows with the size, by
    more than 10x from 18 to 434 parameters (the bulk at zero scales with the network, the
    large ones do not). The vmapped per-network Hessians equal the package's dense Hessian.
    Separable blobs end with a much smaller top eigenvalue than overlapping ones.
    """
    from exp_simple_case_2016 import main

    out = main(quick=True, out_dir=tmp_path, echo=_quiet)
    ce = [r for r in out["fig7"] if r["loss"] == "ce"]
    mse = [r for r in out["fig7"] if r["loss"] == "mse"]
    assert [r["num_params"] for r in ce] == [18, 74, 162, 282, 434]
    large = [r["num_large"] for r in ce]
    assert max(large) - min(large) <= 1 and max(large) <= 4, large
    assert max(r["num_large"] for r in mse) <= 6
    for rows in (ce, mse):
        zeros = [r["num_near_zero"] for r in rows]
        assert all(a < b for a, b in zip(zeros, zeros[1:])), zeros
        assert zeros[-1] > 10 * max(zeros[0], 1), zeros
    for kind in ("ce", "mse"):
        assert out["fig8"][kind]["check_vs_dense_relative"] < 1e-10
        assert out["fig8"][kind]["num_networks"] == 16
    fig9 = out["fig9"]
    assert fig9[0]["distance"] < fig9[-1]["distance"]
    assert fig9[-1]["top5_median"][0] < 0.2 * fig9[0]["top5_median"][0]
    assert (tmp_path / "exp_simple_case_2016.png").stat().st_size < 300_000
