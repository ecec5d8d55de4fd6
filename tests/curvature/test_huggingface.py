"""A Hugging Face GPT-2 passed as it is (no loss function) against the dense float64
Hessian of the token-weighted full-data loss."""

import numpy as np
import pytest
import torch

from lanczos_hessian import HessianOperator, InvalidLossError, InvalidModelError, TokenLoss

from lm_problems import VOCAB, dense_lm_hessian, pad_batches, sequences

#: End-to-end language-model runs (Hugging Face import, whole commands): the slow tier.
pytestmark = pytest.mark.slow

transformers = pytest.importorskip(
    "transformers", reason="the Hugging Face extra is not installed (pip install "
    "'lanczos_hessian[test]' installs transformers)")

LENGTHS = [6, 3, 5, 2, 7]
SIZES = [2, 1, 2]
EPS = np.finfo(np.float64).eps


def tiny_gpt2(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=8, n_embd=4, n_layer=2,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


def logits(out):
    return out.logits


@pytest.fixture(scope="module")
def gpt2_problem():
    model, seqs = tiny_gpt2(), sequences(LENGTHS, seed=2)
    return model, seqs, dense_lm_hessian(model, seqs, logits_fn=logits)


def test_gpt2_with_its_own_loss_gives_the_full_data_hessian(gpt2_problem):
    model, seqs, dense = gpt2_problem
    H = HessianOperator(model, None, pad_batches(seqs, SIZES), strategy="reverse-over-reverse")
    got = H @ np.eye(H.shape[0])
    scale = np.abs(dense).max()
    assert np.abs(got - dense).max() <= 100 * EPS * scale * H.shape[0] ** 0.5
    top = np.linalg.eigvalsh((got + got.T) / 2)[-3:]
    np.testing.assert_allclose(top, np.linalg.eigvalsh(dense)[-3:], rtol=0,
                               atol=1e3 * EPS * scale)
    assert H.loss_fn.num_tokens == sum(n - 1 - (n > 3) for n in LENGTHS)
    assert H.loss_fn.model_loss_dtype == torch.float32  # what the model's .loss came in


def test_a_plain_model_without_a_loss_is_refused_naming_token_loss():
    with pytest.raises(InvalidLossError, match="TokenLoss"):
        HessianOperator(torch.nn.Linear(2, 2), None, pad_batches(sequences([3]), [1]))


def test_a_bfloat16_model_is_refused_naming_the_option():
    model = tiny_gpt2(torch.bfloat16)
    with pytest.raises(InvalidModelError, match="allow_low_precision"):
        HessianOperator(model, TokenLoss(), pad_batches(sequences([4, 3]), [2]),
                        unpack=lambda b: ({k: b[k] for k in ("input_ids", "attention_mask")},
                                          b["labels"]))


def test_gpt2_auto_strategy_products(gpt2_problem):
    """The default strategy on the default (SDPA) attention: products on a few vectors."""
    model, seqs, dense = gpt2_problem
    H = HessianOperator(model, None, pad_batches(seqs, SIZES))
    V = np.random.default_rng(0).standard_normal((H.shape[0], 4))
    expected = dense @ V
    assert np.abs(H @ V - expected).max() <= 1e3 * EPS * np.abs(expected).max()


def test_gpt2_preset_q_block_of_c_attn_is_the_dense_sub_block(gpt2_problem):
    from lanczos_hessian.blocks import block_spectra, preset_blocks, resolve_blocks

    model, seqs, dense = gpt2_problem
    H = HessianOperator(model, None, pad_batches(seqs, SIZES))
    blocks = preset_blocks(model, "gpt2")
    names = [b.name for b in blocks]
    assert {"transformer.wte", "transformer.wpe", "transformer.h.0.attn.q",
            "transformer.h.1.attn.v", "transformer.h.1.attn.o", "transformer.h.0.mlp"} <= set(names)
    q = [b for b in blocks if b.name == "transformer.h.0.attn.q"]
    (resolved,) = resolve_blocks(H.space, q)
    assert resolved.dim == 4 * 4 + 4  # the first 4 of c_attn's 12 columns, and of its bias
    result = block_spectra(H, q, k=3, num_probes=0, tol=1e-12)
    idx = resolved.indices.numpy()
    exact = np.linalg.eigvalsh(dense[np.ix_(idx, idx)])[-3:]
    np.testing.assert_allclose(np.sort(result[q[0].name].eigs.eigenvalues), exact, rtol=0,
                               atol=1e3 * EPS * np.abs(dense).max())
