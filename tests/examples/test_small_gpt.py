"""The small-GPT example runs end to end in its quick mode and writes its files."""

import h5py
import pytest

from lanczos_hessian.examples.small_gpt import SmallGPT, gpt_blocks, main, padded_batches, paragraphs


def test_the_example_data_are_padded_ragged_paragraphs():
    chunks = paragraphs(b"def f():\n    return 1\n\n\nclass A:\n    pass\n\nx", 20, 10)
    assert chunks == [b"def f():\n    return 1"[:20], b"class A:\n    pass"]
    (batch,) = padded_batches(chunks, 4)
    assert batch["input_ids"].shape == (2, 20)
    assert (batch["labels"][1, len(chunks[1]):] == -100).all()
    names = [b.name for b in gpt_blocks(SmallGPT(layers=1))]
    assert names[:4] == ["layers.0.self_attn.q", "layers.0.self_attn.k",
                         "layers.0.self_attn.v", "layers.0.self_attn.o"]


@pytest.mark.slow
def test_quick_mode_runs_the_whole_pipeline(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "top and bottom eigenvalues" in printed and "passes over the data" in printed
    with h5py.File(tmp_path / "gpt_blocks.h5", "r") as f:
        assert "layers.1.self_attn.q" in f["blocks"] and f.attrs["num_tokens"] > 0
    assert (tmp_path / "gpt_blocks.png").stat().st_size > 10_000
