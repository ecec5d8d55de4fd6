"""Quick modes of the heat-map ([S16] Figs. 1, 6) and logistic-regression ([S18] App. B)
experiments, with the claims that hold over seeds (docs/RESULTS.md, sections 7b and 7c).

Each quick mode takes 2-6 CPU seconds (more wall time on a loaded machine).
"""

import pytest

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow


def test_heat_maps_quick(tmp_path, quiet):
    """The exact Hessian of a small ReLU network, at a random point and after training: the
    negative side shrinks relative to lambda_max with training ([S16] Figs. 1-2, 6); the
    layer blocks partition all parameters."""
    from exp_heat_maps_2016 import main

    out = main(quick=True, out_dir=tmp_path, echo=quiet)
    init, trained = out["points"]["init"], out["points"]["trained"]
    blocks = out["blocks"]
    assert blocks[0]["start"] == 0 and blocks[-1]["stop"] == out["settings"]["num_params"]
    assert all(a["stop"] == b["start"] for a, b in zip(blocks, blocks[1:]))
    ratio_init = abs(init["lambda_min"]) / init["lambda_max"]
    ratio_trained = abs(trained["lambda_min"]) / trained["lambda_max"]
    assert ratio_trained < 0.1 * ratio_init, (ratio_init, ratio_trained)
    assert trained["loss"] < 0.5 * init["loss"]
    for point in (init, trained):
        assert 0.0 < point["diagonal_block_share"] <= 1.0
    # the diagonal layer blocks gain weight with training (quick seeds 0-4: 0.09-0.20 ->
    # 0.40-0.44; full: 0.067-0.079 -> 0.38-0.41, 5/5 seeds)
    assert trained["diagonal_block_share"] > max(0.35, 1.5 * init["diagonal_block_share"])
    assert (tmp_path / "exp_heat_maps_2016.png").exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_logistic_regression_quick(tmp_path, seed, quiet):
    """[S18] App. B: at w = 0 the Hessian of logistic regression is a quarter of the sample
    covariance. One blob: the whole spectrum follows the Marchenko-Pastur law (no outlier,
    Kolmogorov distance small). Two blobs: the same bulk plus exactly one outlier, where the
    spiked-covariance formula puts it (within 10%: d = 50 in the quick mode). The package's dense Hessian equals the
    closed form (1/N) X^T diag(s) X to rounding. Example 2 (softmax) and the set-ups tried
    against the paper's printed values: see the comments below."""
    from exp_logistic_regression import main

    out = main(quick=True, out_dir=tmp_path, seed=seed, echo=quiet)
    for points in out["cases"].values():
        for r in points.values():
            assert r["check_vs_closed_form"] < 1e-12
    one, two = out["cases"]["one_blob"]["init"], out["cases"]["two_blobs"]["init"]
    lo, hi = one["mp_edges"]
    assert one["num_outliers"] == 0
    assert one["ks_distance"] < 0.1
    assert 0.9 * lo < one["bulk_min"] and one["bulk_max"] < 1.05 * hi
    assert two["num_outliers"] == 1
    prediction = two["spike_prediction_at_mean_s"]
    assert abs(two["outliers"][0] - prediction) < 0.1 * prediction
    assert two["ks_distance"] < 0.1
    # the trained one-blob model stays near w = 0 (random labels): still no outlier
    assert out["cases"]["one_blob"]["trained"]["num_outliers"] == 0
    # the paper's alpha = M / N values at w = 0: alpha = 0.02 has one outlier at BBP (3%);
    # our outlier grows less with alpha than the paper's printed ones (ratio to alpha = 1)
    sweep = out["alpha_sweep"]["per_alpha"]
    small = sweep["0.02"]
    assert small["beyond_edge"] == [1, 1]
    for value in small["lambda_1"]:
        assert abs(value / small["bbp_prediction"] - 1) < 0.05
    assert all(r < sweep["2.0"]["paper_ratio_to_alpha_1"] for r in sweep["2.0"]["ratio_to_alpha_1"])
    assert all(r > small["paper_ratio_to_alpha_1"] for r in small["ratio_to_alpha_1"])
    # Example 2 (softmax, M = 2 d): the package's Hessian is the closed form; at W = 0 exactly
    # d zeros, and at alpha = 0.02 one outlier at BBP (5%), over twice lambda_2; after training
    # no eigenvalue stands out (lambda_1 / lambda_2 < 1.3 at every alpha, 5/5 seeds)
    softmax = out["example2"]
    for entry in softmax["per_alpha"].values():
        for point in ("init", "trained"):
            assert max(entry[f"{point}_check_vs_closed_form"]) < 1e-12
        assert entry["init_num_zero"] == [entry["dim"]] * 2
        assert max(entry["trained_top_ratio"]) < 1.3
    small = softmax["per_alpha"]["0.02"]
    assert small["init_beyond_edge"] == [1, 1] and min(small["init_top_ratio"]) > 2
    for value in small["init_lambda_1"]:
        assert abs(value / small["bbp_prediction"] - 1) < 0.05
    # the set-ups tried: none but the one fitted to the paper's alpha = 1 and 2 values gives
    # its shape (ratios 1.80 and 0.204) or its size; the as-written one is Example 2's data
    rows = out["setups"]["rows"]
    assert not any(r["shape_matches"] or r["size_matches"] for r in rows if not r.get("fitted"))
    assert [r["shape_matches"] for r in rows if r.get("fitted")] == [True]
    # ... and the fitted one has no large outlier (lambda_1 / lambda_2 < 3 at alpha 1, none at
    # 0.02), while means +-1 per coordinate at fixed N give one (> 20x) but miss the ratio
    # 0.204 at alpha 0.02 by ten times
    fitted = next(r for r in rows if r.get("fitted"))["per_alpha"]
    assert max(fitted["1.0"]["top_ratio"]) < 3 and max(fitted["0.02"]["top_ratio"]) < 1.5
    offset = next(r for r in rows if r["fixed"] == "N" and r["loss"] == "mean"
                  and r.get("offset") == 1.0 and "noise" not in r)["per_alpha"]
    assert min(offset["1.0"]["top_ratio"]) > 20
    assert max(offset["0.02"]["ratio_to_alpha_1"]) < 0.1
    for alpha, entry in softmax["per_alpha"].items():
        assert rows[0]["per_alpha"][alpha]["lambda_1"] == pytest.approx(entry["init_lambda_1"],
                                                                        rel=1e-10)


def test_fig6_2016_quick(tmp_path, quiet):
    """[S16] Fig. 6 as published: the 18-, 74- and 162-parameter two-blob networks after
    training, five seeds each. On every network: two eigenvalues stand above the rest
    (lambda_1 >= 3 abs(lambda_3)), at least half of the eigenvalues are within 1e-3
    lambda_1 of zero, and the diagonal layer blocks hold less than 60% of norm(H)_F^2."""
    import numpy as np
    from exp_fig6_2016 import main

    out = main(quick=True, out_dir=tmp_path, echo=quiet)
    assert [r["num_params"] for r in out["sizes"]] == [18, 74, 162]
    for row in out["sizes"]:
        assert len(row["networks"]) == 5
        for net in row["networks"]:
            assert net["lambda_1_over_lambda_3"] >= 3
            assert net["fraction_near_zero"] >= 0.5
            assert 0 < net["diagonal_block_share"] < 0.6
        assert np.all(np.asarray(row["grad_norm"]) < 0.05)
    assert (tmp_path / "exp_fig6_2016.png").stat().st_size > 0


def test_hidden_sizes_2016_quick(tmp_path, quiet):
    """[S16] Fig. 1 right and Fig. 2 (exact spectra of 784-k-k-10 networks), on both seeds:
    after training most eigenvalues sit within 1e-3 lambda_max of zero; at a random point the
    negative side relative to lambda_max is larger on random inputs than on MNIST; training
    on random inputs shrinks it."""
    from exp_hidden_sizes_2016 import main

    out = main(quick=True, out_dir=tmp_path, echo=quiet)
    assert [r["num_params"] for r in out["fig1"][:2]] == [807, 1606]
    for row in out["fig1"]:
        assert row["near_zero"] >= 0.9
    for s in out["settings"]["seeds"]:
        r = {(x["data"], x["point"]): x for x in out["fig2"] if x["seed"] == s}
        rel = {key: abs(v["lambda_min"]) / v["lambda_max"] for key, v in r.items()}
        assert rel[("random", "init")] > rel[("MNIST", "init")]
        assert rel[("random", "trained")] < 0.1 * rel[("random", "init")]


def test_hidden_sizes_2016_trained_only(tmp_path, quiet):
    """One more width alone (``--trained-k K``): the trained exact spectrum per seed with the
    same summary as the full run, in its own JSON."""
    from exp_hidden_sizes_2016 import trained_only

    out = trained_only(1, [0, 1], n=150, steps=300, out_dir=tmp_path, echo=quiet)
    assert [r["seed"] for r in out["fig1"]] == [0, 1]
    for row in out["fig1"]:
        assert row["num_params"] == 807 and row["k"] == 1
        assert row["lambda_max"] > 0 and row["near_zero"] >= 0.9
    assert (tmp_path / "exp_hidden_sizes_2016_k1.json").exists()
    assert (tmp_path / "exp_hidden_sizes_2016_k1.png").stat().st_size > 0


def test_hidden_sizes_2016_fig2_only(tmp_path, quiet):
    """[S16] Fig. 2 at one width alone (``--fig2-k K``): three exact spectra per seed in its
    own JSON and figure; at the random point random inputs are more symmetric about zero than
    MNIST, and training on them shrinks the negative side."""
    from exp_hidden_sizes_2016 import fig2_only

    out = fig2_only(2, [0], n=100, steps=150, out_dir=tmp_path, echo=quiet)
    rows = {(r["data"], r["point"]): r for r in out["fig2"]}
    assert sorted(rows) == [("MNIST", "init"), ("random", "init"), ("random", "trained")]
    assert all(r["k"] == 2 and r["num_params"] == 1606 for r in rows.values())
    rel = {key: abs(r["lambda_min"]) / r["lambda_max"] for key, r in rows.items()}
    assert rel[("random", "init")] > rel[("MNIST", "init")]
    assert rel[("random", "trained")] < rel[("random", "init")]
    for ext in ("json", "png"):
        assert (tmp_path / f"exp_hidden_sizes_2016_fig2_k2.{ext}").stat().st_size > 0
