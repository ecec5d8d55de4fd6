"""The seed-spread runner (scripts/exp_seeds.py) and the experiments' headline numbers.

Every experiment with a ``headline`` must turn its documented JSON into finite numbers (the
documented runs are seed 0 of every spread in docs/RESULTS.md), and the recorded seeds must
carry the same labels as seed 0, so that the tables compare like with like.
"""

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

import exp_seeds


def test_every_documented_run_gives_finite_headline_numbers():
    names = exp_seeds.with_headline()
    assert {"batch_size", "fort_ganguli", "gauss_newton", "growing_network", "heat_maps_2016",
            "logistic_regression", "random_vs_trained", "same_basin"} <= set(names)
    for name in names:
        path = ROOT / "docs" / f"exp_{name}.json"
        headline = exp_seeds.clean(exp_seeds.experiment(name).headline(
            json.loads(path.read_text())))
        assert headline, name
        bad = {k: v for k, v in headline.items() if not math.isfinite(v)}
        assert not bad, (name, bad)


def test_recorded_seeds_carry_the_labels_of_the_documented_run():
    record = exp_seeds.read_record()
    for name, seeds in record.items():
        labels = set(exp_seeds.all_seeds(name)[0])
        for seed, headline in seeds.items():
            assert set(headline) == labels, (name, seed, set(headline) ^ labels)


def test_unknown_experiment_names_the_choices():
    with pytest.raises(ValueError, match="batch_size"):
        exp_seeds.experiment("no_such_experiment")


def test_spread_table_gives_every_seed_and_the_median_and_range():
    table = exp_seeds.spread_table({0: {"a": 1.0, "b": 0.5}, 1: {"a": 3.0, "b": 0.25},
                                    2: {"a": 2.0}})
    lines = table.splitlines()
    assert lines[0] == "| number | seed 0 | seed 1 | seed 2 | median [min, max] |"
    assert lines[2] == "| a | 1 | 3 | 2 | 2 [1, 3] |"
    assert lines[3] == "| b | 0.5 | 0.25 | - | 0.375 [0.25, 0.5] |"


@pytest.mark.slow
def test_a_quick_seed_is_run_recorded_and_tabulated(tmp_path):
    pytest.importorskip("matplotlib")
    record = tmp_path / "seeds.json"
    for seed in (1, 2):
        headline = exp_seeds.run_seed("heat_maps_2016", seed, tmp_path / f"s{seed}",
                                      quick=True)
        exp_seeds.record("heat_maps_2016", seed, headline, path=record)
    seeds = exp_seeds.all_seeds("heat_maps_2016", path=record,
                                documented=tmp_path / "s1" / "exp_heat_maps_2016.json")
    assert sorted(seeds) == [0, 1, 2] and seeds[0] == seeds[1]
    assert seeds[1] != seeds[2]  # the seed changes the data and the initialization
    assert "| trained: near-zero eigenvalues |" in exp_seeds.spread_table(seeds)


def test_summarize_gives_mean_or_median_and_the_range_of_the_finite_values():
    assert exp_seeds.summarize([1.0, 2.0, 6.0]) == "3 [1, 6]"
    assert exp_seeds.summarize([1.0, 2.0, 6.0], "median") == "2 [1, 6]"
    assert exp_seeds.summarize([True, False, True, True]) == "0.75 [0, 1]"  # verdict: share
    assert exp_seeds.summarize([math.nan, None, 0.5]) == "0.5 [0.5, 0.5]"
    assert exp_seeds.summarize([math.nan]) == "-"


def test_spread_table_with_the_mean():
    table = exp_seeds.spread_table({0: {"a": 1.0}, 1: {"a": 3.0}, 2: {"a": 8.0}}, "mean")
    assert table.splitlines()[0].endswith("| mean [min, max] |")
    assert table.splitlines()[2] == "| a | 1 | 3 | 8 | 4 [1, 8] |"


def test_json_rows_one_row_per_star_and_seeds_gathered_by_hash():
    data = {"over": {"x": {"per_seed": [1, 2, 3]}, "y": {"per_seed": [4, 8]}, "n": 5},
            "cases": {"a": [{"b": 0.5}, {"b": 1.5}], "c": [{"b": 2.0}]},
            "per": {"0.02": {"v": [1.0, 3.0]}}}
    assert exp_seeds.json_rows(data, "over/*/per_seed") == {  # "n" lacks per_seed: skipped
        "over/x/per_seed": [1, 2, 3], "over/y/per_seed": [4, 8]}
    assert exp_seeds.json_rows(data, "cases/*/#/b") == {"cases/a/#/b": [0.5, 1.5],
                                                        "cases/c/#/b": [2.0]}
    assert exp_seeds.json_rows(data, "per/0.02/v") == {"per/0.02/v": [1.0, 3.0]}
    with pytest.raises(KeyError, match="nope"):
        exp_seeds.json_rows(data, "over/nope")
    lines = exp_seeds.json_table(data, ["over/*/per_seed"]).splitlines()
    assert lines[2] == "| over/x/per_seed | 1, 2, 3 | 2 [1, 3] |"
    assert lines[3] == "| over/y/per_seed | 4, 8 | 6 [4, 8] |"


def test_json_command_prints_the_table(capsys, tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"runs": [{"loss": 1.0}, {"loss": 2.0}]}))
    exp_seeds.main(["--json", str(path), "runs/#/loss"])
    assert "| runs/#/loss | 1, 2 | 1.5 [1, 2] |" in capsys.readouterr().out


def test_json_rows_index_a_list_and_refuse_a_path_without_numbers():
    data = {"runs": [{"top": [3.0, 1.0]}, {"top": [5.0, 2.0]}], "name": "x"}
    assert exp_seeds.json_rows(data, "runs/#/top/0") == {"runs/#/top/0": [3.0, 5.0]}
    with pytest.raises(TypeError, match="no numbers"):
        exp_seeds.json_rows(data, "runs/0")
    assert exp_seeds.json_rows(data, "*") == {}  # "runs" and "name" hold no numbers: skipped
