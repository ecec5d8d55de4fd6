"""The papers' own numbers as the experiment scripts hold them, and the comparisons built on
them (fast: no training, no spectra).

Sagun et al. 2018, Table 1 (Appendix A): 19 rows; each row's parameter count is that of the
100-30-30-k MLP, ``100*30+30 + 30*30+30 + 30*k+k``, a check on the transcription.
"""

import numpy as np


def test_table_1_has_19_rows_whose_sizes_are_the_paper_network():
    from exp_outliers_vs_classes import PAPER_FIELDS, PAPER_TABLE
    from lanczos_hessian.examples.models import mlp, num_parameters

    assert len(PAPER_TABLE) == 19
    for entry in PAPER_TABLE:
        row = dict(zip(PAPER_FIELDS, entry))
        assert row["num_params"] == 3960 + 31 * row["k"]
        assert row["num_params"] == num_parameters(mlp([100, 30, 30, row["k"]], "relu"))
        assert (row["heur"] is None) == (row["cutoff"] is None) == (row["activation"] == "tanh")
    keys = {(e[0], e[1], e[3], e[5]) for e in PAPER_TABLE}
    assert len(keys) == 19  # no row twice


def test_paper_comparison_counts_offset_hits_and_threshold():
    """Two networks on the paper's GD ReLU cov 1 k = 10 row (gap 11, ratio 12, cutoff 0.003):
    one whose counts are the paper's minus (1, 2), one equal to the paper's."""
    from exp_outliers_vs_classes import paper_comparison

    top = np.concatenate([np.full(10, 0.01), np.full(10, 0.001)])
    base = {"k": 10, "optimizer": "GD", "activation": "relu", "scale": 1.0,
            "num_params": 4270, "mean_eigenvalue": 3e-5, "top": top}
    nets = [{**base, "seed": 0, "gap": 10, "ratio": 10},
            {**base, "seed": 1, "gap": 11, "ratio": 12},
            {**base, "k": 7, "seed": 0, "gap": 1, "ratio": 1}]  # no such row: ignored
    out = paper_comparison(nets)
    assert out["networks"] == 2 and len(out["rows"]) == 1
    assert out["hits_offset"] == {"gap": 1, "ratio": 1}
    assert out["hits_equal"] == {"gap": 1, "ratio": 1}
    row = out["rows"][0]
    assert [t["count"] for t in row["threshold"]] == [10, 10]
    assert row["threshold_within_1"] == {"of_k": 2, "of_heur": 2, "networks": 2}


def test_threshold_count_says_when_every_computed_eigenvalue_is_above():
    from exp_outliers_vs_classes import threshold_count

    assert threshold_count([3.0, 2.0, 1.0], 1.5) == {"count": 2, "saturated": False}
    assert threshold_count([3.0, 2.0], 0.5) == {"count": 2, "saturated": True}


def test_appendix_b_outliers_are_the_printed_ones():
    """[S18] Fig. 10 caption: outliers 454.4, 819.5, 92.7 for alpha = 1, 2, 0.02."""
    from exp_logistic_regression import ALPHAS, PAPER

    assert PAPER["outliers_by_alpha"] == {1.0: 454.4, 2.0: 819.5, 0.02: 92.7}
    assert set(ALPHAS) == set(PAPER["outliers_by_alpha"])
