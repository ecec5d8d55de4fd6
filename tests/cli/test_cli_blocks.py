"""``lanczos-hessian blocks``: named blocks and presets from the command line, one group per
block in --out, a figure; a block that matches nothing refused before any file."""

import h5py
import pytest

from lanczos_hessian.cli import main
from lanczos_hessian.cli.blocks import parse_block
from lanczos_hessian.blocks import Slice

#: End-to-end language-model runs (Hugging Face import, whole commands): the slow tier.
pytestmark = pytest.mark.slow


def test_parse_block():
    block = parse_block("q=attn.in_proj_weight[0,0:4]+attn.in_proj_bias[0,0:4]")
    assert block.name == "q"
    assert block.select == (Slice("attn.in_proj_weight", 0, 0, 4),
                            Slice("attn.in_proj_bias", 0, 0, 4))
    assert parse_block("e=re:^embed").select == ("re:^embed",)
    with pytest.raises(ValueError, match="NAME=SELECTION"):
        parse_block("nothing")


def test_blocks_command_writes_one_group_per_block(tmp_path, capsys):
    out, fig = tmp_path / "blocks.h5", tmp_path / "blocks.png"
    code = main(["blocks", "--problem", "clusters-mlp", "--block", "first=0",
                 "--block", "w2=2.weight[0,0:5]", "--k", "2", "--num-probes", "2",
                 "--num-steps", "5", "--out", str(out), "--figure", str(fig), "--no-progress"])
    assert code == 0
    with h5py.File(out, "r") as f:
        assert sorted(f["blocks"]) == ["first", "w2"]
        assert f["blocks/w2/eigs"].attrs["complete"]
    assert fig.stat().st_size > 0
    assert "passes over the data" in capsys.readouterr().out


def test_a_block_matching_nothing_is_refused_before_any_file(tmp_path, capsys):
    out = tmp_path / "blocks.h5"
    code = main(["blocks", "--problem", "clusters-mlp", "--block", "ghost=decoder",
                 "--out", str(out), "--no-progress"])
    assert code == 2 and not out.exists()
    assert "'ghost'" in capsys.readouterr().err
