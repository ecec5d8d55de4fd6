"""Experiment 1's training-length check alone (``exp_outliers_vs_classes.py --length SEED``):
the curvature scale falls with training while the spectrum's shape and the below-top count
stay (docs/RESULTS.md, section 1). About 5 s."""

import pytest


pytestmark = pytest.mark.slow


def test_training_length_scale_falls_shape_stays(tmp_path):
    from exp_outliers_vs_classes import length_only

    out = length_only([0], out_dir=tmp_path, lengths=(100, 300), echo=lambda *a: None)
    (seed,) = out["training_length"]["per_seed"]
    assert seed["seed"] == 0 and seed["steps"] == [100, 300]
    assert seed["mean_eigenvalue_fall"] > 2.0
    assert seed["max_shape_change"] < 0.05
    assert seed["below_top"][0] == seed["below_top"][1] == 9
    lo, hi = seed["mean_eigenvalue_over_loss"]
    assert 0.05 < lo <= hi < 0.5
    assert (tmp_path / "exp_outliers_vs_classes_length.json").exists()
