"""The prototype of products taken natively on parameter shards
(``scripts/bench_native_shards.py``): per-block gathers whose backward is a reduce-scatter,
and saved-tensor hooks that gather parameters again instead of keeping them in the graph,
give each rank its shard of the unsharded full-data ``H v`` (float64, a small GPT)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "scripts"))

import bench_native_shards  # noqa: E402


@pytest.mark.slow  # W gloo processes per launch
@pytest.mark.parametrize("world_size, sequences, wrap", [
    (2, 8, []), (3, 6, []),  # 3: uneven shards
    (2, 6, ["--fsdp"]),  # fully_shard's own shards as leaves, 2 batches per rank
])
def test_shard_native_products_equal_the_unsharded_product(world_size, sequences, wrap):
    rows = bench_native_shards.main(["--quick", "--check", "--world-sizes", str(world_size),
                                     "--sequences", str(sequences), "--modes", "native,kept",
                                     *wrap])
    assert [r["mode"] for r in rows] == ["native", "kept"]
    for row in rows:
        assert row["world_size"] == world_size
        assert row["rel_diff"] < 1e-12, row
        full_mib = row["num_params"] * 8 / 2**20  # float64
        assert row["rest_mib_per_rank"] < 1.5 * full_mib / world_size  # shards, not the model
