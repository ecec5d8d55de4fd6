"""scripts/bench_products.py in its quick mode: every column measured, the table and JSON
written (the timings themselves are the benchmark's business, not a test's)."""

import json

import pytest

import bench_products

COLUMNS = {"gradient", "bare double backward", "bare forward-over-reverse", "ours default",
           "ours block 4", "ours block 16"}


def check_rows(rows, models):
    assert [r["model"] for r in rows] == models
    for r in rows:
        assert COLUMNS <= set(r["ms"]) and all(t > 0 for t in r["ms"].values())
        assert r["strategy"] == "reverse-over-reverse"
        assert r["default / faster bare"] > 0 and 0 < r["block 4 per vector / default"]


def test_quick_mode_writes_every_column_and_the_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rows = bench_products.main(["--quick", "--no-compile", "--repeats", "1", "--json",
                                str(path)])
    check_rows(rows, ["mlp-tiny", "cnn-tiny", "transformer-tiny", "lm-tiny"])
    saved = json.loads(path.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["repeats"] == 1
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-6].startswith("| model |") and table[-5].startswith("|---|")


@pytest.mark.slow  # one compile of a tiny model: seconds to a minute
def test_quick_mode_with_the_compiled_column(tmp_path):
    rows = bench_products.main(["--quick", "--models", "mlp-tiny", "--repeats", "1"])
    check_rows(rows, ["mlp-tiny"])
    row = rows[0]
    assert row["compiled"] and row["compile s"] > 0 and "ours compiled" in row["ms"]
    assert row["break-even passes"] is None or row["break-even passes"] > 0


def test_block_forms_times_every_form_and_names_the_rule(tmp_path, capsys):
    """``--block-forms``: every way of taking a block, per vector, for blocks of 4 and 16,
    and the rule's pick (the tiny models are under its threshold: the batched backward)."""
    path = tmp_path / "blocks.json"
    rows = bench_products.main(["--quick", "--block-forms", "--models", "mlp-tiny",
                                "cnn-tiny", "--repeats", "1", "--json", str(path)])
    assert [r["model"] for r in rows] == ["mlp-tiny", "cnn-tiny"]
    for r in rows:
        assert r["rule"] == "batched backward"
        for b in bench_products.BLOCK_SIZES:
            times = r["blocks"][b]["ms per vector"]
            assert set(times) == set(bench_products.BLOCK_FORMS)
            assert all(t > 0 for t in times.values())
            assert r["blocks"][b]["rule / fastest"] >= 1
    assert json.loads(path.read_text())["block forms"] == json.loads(json.dumps(rows))
    out = capsys.readouterr().out
    assert "block 16: rule (batched backward)" in out and "| b=4: rule / fastest |" in out
