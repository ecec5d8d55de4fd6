"""Quick mode of experiment 3's bottom-end check (docs/RESULTS.md, section 3): the 20
smallest eigenpairs solved to 1e-6 norm(H) against 1e-4, and the SLQ deflated by them.

About 17 CPU seconds (300 digits, h = 10).
"""

import numpy as np
import pytest


pytestmark = pytest.mark.slow


def test_growing_network_bottom_check_quick(tmp_path, quiet):
    """Exp 3's bottom check (RESULTS section 3), quick mode at h = 10: solved to 1e-6 norm(H),
    the 20 smallest eigenpairs converge and the SLQ deflated by them sees no eigenvalue below
    the 20th; the tol-1e-4 run agrees on the most negative ones."""
    from exp_growing_network import bottom_check

    out = bottom_check(quick=True, out_dir=tmp_path, widths=[10], echo=quiet)
    (row,) = out["runs"]
    fine = np.asarray(row["fine"])
    assert row["fine_converged"] and np.all(np.diff(fine) >= 0) and fine[-1] < 0
    assert row["slq_below_20th"]["resolved"] and abs(row["slq_below_20th"]["count"]) < 0.5
    assert row["slq_lowest_node"] > fine[-1]
    assert abs(row["coarse"][0] - fine[0]) < 1e-4 * 3  # tol 1e-4 norm(H), norm(H) ~ 2-3
    assert (tmp_path / "exp_growing_network_bottom.json").exists()
    # the figure's right panel, drawn from the saved rules: below the accurate 20th the
    # staircase counts exactly the 19 Lanczos values under it (bracket closed), no SLQ mass
    import expcommon as ec

    rule = ec.quadrature_from_record(row["slq"])
    value, lower, upper = ec.tail_fractions(rule, [fine[-1], fine[0] - 1e-6])
    assert np.allclose(value, [19 / rule.dim, 0.0]) and np.allclose(lower, value)
    assert np.allclose(upper, value)


def test_growing_network_bottom_check_other_seed(tmp_path, quiet):
    """Another seed (``--bottom --seed 1``) writes its own JSON and HDF5 files beside seed 0's
    and holds the same: converged, nothing below the accurate 20th in the deflated SLQ."""
    from exp_growing_network import bottom_check

    out = bottom_check(quick=True, out_dir=tmp_path, seed=1, widths=[10], echo=quiet)
    (row,) = out["runs"]
    assert out["seed"] == 1 and row["fine_converged"]
    assert row["slq_below_20th"]["resolved"] and abs(row["slq_below_20th"]["count"]) < 0.5
    assert (tmp_path / "exp_growing_network_bottom_seed1.json").exists()
    assert (tmp_path / "exp_growing_network_bottom_h10_seed1.h5").exists()
    assert not (tmp_path / "exp_growing_network_bottom.json").exists()
