"""Experiment 1's markdown tables (scripts/exp_outliers_tables.py): mean [min, max] over
seeds from the written JSON, with the paper's Table 1 row beside ours (fast: no training)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

import exp_outliers_tables as tables
from exp_outliers_vs_classes import OFFSETS


def test_over_seeds_mean_range_or_the_single_value():
    assert tables.over_seeds([9, 9, 9]) == "9"
    assert tables.over_seeds([1, 9, 9, 9, 9]) == "7.4 [1, 9]"
    assert tables.over_seeds([1.0e-5, 3.0e-5], sig="{:.2g}") == "2e-05 [1e-05, 3e-05]"
    assert tables.over_seeds([5.01e-5, 4.99e-5], sig="{:.1g}") == "5e-05"


def test_threshold_cell_says_when_every_computed_eigenvalue_is_above():
    assert tables.threshold_cell(None) == "-"
    sat = {"count": 100, "saturated": True}
    assert tables.threshold_cell([sat, sat]).startswith(">= 100")
    cell = tables.threshold_cell([{"count": 98, "saturated": False}, sat])
    assert cell == "99 [98, 100] (1 saturated)"


def test_tables_of_the_documented_run_quote_the_paper_and_the_offsets():
    payload = json.loads((ROOT / "docs" / "exp_outliers_vs_classes.json").read_text())
    paper = tables.paper_table(payload).splitlines()
    assert len(paper) == 2 + 19
    # GD ReLU cov 1 k = 10: the paper's gap 11, ratio 12, heur 10 at cutoff 0.003
    row = next(line for line in paper if line.startswith("| GD | relu | 4270"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7] == "11" and cells[9] == "12" and cells[11] == "10 (0.003)"
    comparison = next(r for r in payload["paper_comparison"]["rows"]
                      if (r["paper"]["k"], r["paper"]["optimizer"], r["paper"]["activation"],
                          r["paper"]["scale"]) == (10, "GD", "relu", 1.0))
    gaps = [c + OFFSETS["gap"] for c in comparison["gap"]["per_seed"]]
    assert cells[8] == (f"{tables.over_seeds(gaps)} "
                        f"({comparison['gap']['hits_offset']}/{len(gaps)})")
    every = tables.rows_table(payload).splitlines()
    assert len(every) == 2 + len(payload["rows"])
