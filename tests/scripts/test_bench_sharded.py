"""scripts/bench_sharded.py in its quick mode (a 0.1M-parameter GPT) on 1 and 2 gloo ranks in
float64: every mode runs, the products on the shards (with and without checkpointed layers)
and with every parameter gathered agree with one rank to rounding, the parameters stay
sharded, the JSON is written (the memory and seconds are the benchmark's business)."""

import json

import pytest

import bench_sharded


@pytest.mark.slow  # six launches of 1-2 processes: about a minute
def test_quick_mode_every_mode_agrees_with_one_rank(tmp_path):
    path = tmp_path / "bench.json"
    rows = bench_sharded.main(["--quick", "--world-sizes", "1,2", "--modes",
                               "native,checkpointed,gather", "--repeats", "1", "--dtype",
                               "float64", "--json", str(path)])
    assert [(r["world_size"], r["mode"]) for r in rows] == [
        (w, m) for w in (1, 2) for m in ("native", "checkpointed", "gather")]
    for r in rows:
        assert r["rel_diff_sample"] < 1e-12 and r["rel_diff_vHv"] < 1e-12, r
        assert r["still_sharded"] and r["peak_mib_per_rank"] > 0
        assert r["build_peak_mib_per_rank"] > 0 and r["seconds_per_hvp"] > 0
    assert rows[3]["rest_mib_per_rank"] < rows[0]["rest_mib_per_rank"]  # halved by W = 2
    saved = json.loads(path.read_text())
    assert saved["dtype"] == "float64" and len(saved["results"]) == 6
