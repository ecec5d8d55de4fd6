"""Blockwise spectra: blocks named by prefix, regex and slice; H_bb of a Q slice of a packed
projection against the dense Hessian; one pass per step for all blocks."""

import numpy as np
import pytest
import torch

from lanczos_hessian import HessianOperator, InvalidModelError, TokenLoss, dict_batch
from lanczos_hessian.blocks import Block, Regex, Slice, block_spectra, preset_blocks, resolve_blocks
from lanczos_hessian.linalg.slq import slq

from lm_problems import TinyCausalLM, dense_lm_hessian, pad_batches, sequences

LENGTHS = [7, 3, 5, 2, 6, 4]
SIZES = [2, 1, 3]
EPS = np.finfo(np.float64).eps
WIDTH = 4


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = TinyCausalLM(width=WIDTH).double().eval()
    seqs = sequences(LENGTHS)
    H = HessianOperator(model, TokenLoss(), pad_batches(seqs, SIZES),
                        unpack=dict_batch("labels"))
    return model, H, dense_lm_hessian(model, seqs)


def test_the_q_slice_block_is_the_dense_sub_block(problem):
    model, H, dense = problem
    blocks = preset_blocks(model, "mha")
    assert [b.name for b in blocks] == ["attn.q", "attn.k", "attn.v", "attn.o"]
    (q,) = [r for r in resolve_blocks(H.space, blocks) if r.name == "attn.q"]
    assert q.dim == WIDTH * WIDTH + WIDTH  # Q rows of in_proj_weight and of in_proj_bias
    result = block_spectra(H, blocks[:1], k=q.dim, num_probes=0, tol=1e-12)
    idx = q.indices.numpy()
    exact = np.linalg.eigvalsh(dense[np.ix_(idx, idx)])
    eig = result["attn.q"].eigs.eigenvalues
    np.testing.assert_allclose(np.sort(eig), exact, rtol=0, atol=1e3 * EPS * np.abs(exact).max())


def test_block_products_match_the_dense_sub_blocks(problem):
    model, H, dense = problem
    blocks = preset_blocks(model, "mha", per_head=True) + [Block("rest", "embed", "head")]
    resolved = resolve_blocks(H.space, blocks)
    from lanczos_hessian.blocks.lockstep import run_in_lockstep

    rng = np.random.default_rng(0)
    vectors = [torch.from_numpy(rng.standard_normal((b.dim, 2))) for b in resolved]
    tasks = [(i, lambda view, V=V: view.apply(V)) for i, V in enumerate(vectors)]
    results, passes = run_in_lockstep(H, resolved, tasks)
    assert passes == 1
    for b, V, got in zip(resolved, vectors, results):
        idx = b.indices.numpy()
        expected = dense[np.ix_(idx, idx)] @ V.numpy()
        np.testing.assert_allclose(got.numpy(), expected, rtol=0,
                                   atol=100 * EPS * np.abs(dense).max() * len(idx))


def test_all_blocks_take_the_passes_of_one_unblocked_run(problem):
    model, H, _ = problem
    blocks = [Block("q", Slice("attn.in_proj_weight", 0, 0, WIDTH)),
              Block("kv", Slice("attn.in_proj_weight", 0, WIDTH, 3 * WIDTH)),
              Block("embed", Regex(r"^embed\.")), Block("head", "head")]
    before = H.num_applications
    result = block_spectra(H, blocks, k=0, num_probes=3, num_steps=12, seed=1)
    blocked = H.num_applications - before
    assert blocked == result.num_passes == 12
    before = H.num_applications
    single = slq(H, num_probes=3, num_steps=12, rng=1)
    assert H.num_applications - before == single.num_passes == blocked
    grid, dens = result.densities()
    assert set(dens) == {"q", "kv", "embed", "head"}
    for phi in dens.values():  # each a probability density
        assert abs(np.trapezoid(phi, grid) - 1) < 0.05


def test_bad_blocks_are_refused_before_any_pass_naming_the_block(problem):
    model, H, _ = problem
    before = H.num_applications
    with pytest.raises(InvalidModelError, match="'nothing'.*matches no"):
        block_spectra(H, [Block("nothing", "decoder")])
    with pytest.raises(InvalidModelError, match="'a' and 'b' overlap"):
        block_spectra(H, [Block("a", "attn"), Block("b", Slice("attn.in_proj_weight", 0, 0, 2))])
    with pytest.raises(InvalidModelError, match="'s'.*out of range"):
        block_spectra(H, [Block("s", Slice("attn.in_proj_weight", 0, 10, 20))])
    with pytest.raises(InvalidModelError, match="'r'.*matches no"):
        block_spectra(H, {"r": Regex("^nope")})
    assert H.num_applications == before


def test_presets_of_standard_layouts():
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    names = [b.name for b in preset_blocks(layer, "encoder")]
    assert names == ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "mlp"]
    with pytest.raises(InvalidModelError, match="'gpt2' finds none"):
        preset_blocks(layer, "gpt2")


def test_blocks_are_written_one_group_each_and_resumed(problem, tmp_path):
    import h5py

    from lanczos_hessian.blocks import read_block_spectra

    model, H, _ = problem
    path = tmp_path / "blocks.h5"
    blocks = preset_blocks(model, "mha")
    first = block_spectra(H, blocks, k=2, num_probes=2, num_steps=6, seed=3, out=path)
    with h5py.File(path, "r") as f:
        assert sorted(f["blocks"]) == ["attn.k", "attn.o", "attn.q", "attn.v"]
        assert f["blocks/attn.q"].attrs["dim"] == WIDTH * WIDTH + WIDTH
        assert f["blocks/attn.q/eigs"].attrs["complete"] and f["blocks/attn.q/slq"].attrs["complete"]
        assert f.attrs["num_tokens"] == H.loss_fn.num_tokens  # the objective's provenance
    again = block_spectra(H, blocks, k=2, num_probes=2, num_steps=6, seed=3, out=path,
                          resume=True)
    assert again.num_passes == 0
    with h5py.File(path, "a") as f:  # as if killed before block v finished
        del f["blocks/attn.v"]
    resumed = block_spectra(H, blocks, k=2, num_probes=2, num_steps=6, seed=3, out=path,
                            resume=True)
    assert resumed.num_passes > 0
    for name in ("attn.q", "attn.v"):
        np.testing.assert_allclose(resumed[name].eigs.eigenvalues, first[name].eigs.eigenvalues,
                                   rtol=1e-10)
    stored = read_block_spectra(path)
    assert sorted(stored.names) == sorted(first.names)
    stored.plot(tmp_path / "densities.png")
    assert (tmp_path / "densities.png").stat().st_size > 0


def test_a_failing_pass_fails_every_block_without_hanging(problem, monkeypatch):
    from lanczos_hessian import NonFiniteError

    model, H, _ = problem

    def broken(V):
        raise NonFiniteError("the loss is nan on batch 0")

    monkeypatch.setattr(H, "apply", broken)
    with pytest.raises(NonFiniteError, match="nan"):
        block_spectra(H, preset_blocks(model, "mha"), k=2, num_probes=2, num_steps=4, seed=0)
