"""The exact token-weighted objective of a language model against dense float64 Hessians."""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh

from lanczos_hessian import HessianOperator, InvalidDataError, InvalidLossError, dict_batch
from lanczos_hessian.curvature.objective import TokenLoss

from lm_problems import TinyCausalLM, dense_lm_hessian, pad_batches, sequences

LENGTHS = [7, 3, 5, 2, 6, 4, 8]
SIZES = [3, 1, 3]  # ragged: 3 / 1 / 3 sequences, each batch padded to its own length
EPS = np.finfo(np.float64).eps


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    return TinyCausalLM().double().eval()


def operator(model, loss, batches, **kw):
    return HessianOperator(model, loss, batches, unpack=dict_batch("labels"), **kw)


def close(H, dense, factor=100):
    scale = np.abs(dense).max()
    err = np.abs(H - dense).max()
    assert err <= factor * EPS * scale * dense.shape[0] ** 0.5, (err, scale)


@pytest.mark.parametrize("normalization", ["tokens", "sequences", "sum"])
@pytest.mark.parametrize("strategy", ["reverse-over-reverse", "forward-over-reverse"])
def test_padded_ragged_batches_give_the_full_data_hessian(normalization, strategy):
    model, seqs = tiny_lm(), sequences(LENGTHS)
    dense = dense_lm_hessian(model, seqs, normalization)
    loss = TokenLoss(normalization)
    H = operator(model, loss, pad_batches(seqs, SIZES), strategy=strategy)
    close(H @ np.eye(H.shape[0]), dense)
    targets = sum(max(n - 1 - (n > 3), 0) for n in LENGTHS)
    assert loss.num_tokens == targets and loss.num_sequences == len(LENGTHS)
    assert loss.provenance()["num_tokens"] == targets


def test_top_eigenvalues_agree_with_the_dense_hessian():
    model, seqs = tiny_lm(1), sequences(LENGTHS, seed=1)
    dense = dense_lm_hessian(model, seqs)
    H = operator(model, TokenLoss(), pad_batches(seqs, SIZES))
    top = np.sort(eigsh(H, k=4, which="LA", tol=1e-14)[0])
    exact = np.linalg.eigvalsh(dense)[-4:]
    np.testing.assert_allclose(top, exact, rtol=0, atol=1e3 * EPS * np.abs(exact).max())


def test_sequence_weighting_is_not_the_token_mean():
    """The tolerance above catches a wrong objective: weighting batches by sequences."""
    model, seqs = tiny_lm(), sequences(LENGTHS)
    H = operator(model, TokenLoss("sequences"), pad_batches(seqs, SIZES))
    dense = dense_lm_hessian(model, seqs, "tokens")
    assert np.abs(H @ np.eye(H.shape[0]) - dense).max() > 1e-3 * np.abs(dense).max()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_cross_entropy_module_is_reweighted_exactly(reduction):
    model, seqs = tiny_lm(), sequences(LENGTHS)
    ce = torch.nn.CrossEntropyLoss(reduction=reduction)
    H = operator(model, TokenLoss(loss=ce), pad_batches(seqs, SIZES))
    close(H @ np.eye(H.shape[0]), dense_lm_hessian(model, seqs))


def test_a_batch_without_targets_adds_nothing():
    model, seqs = tiny_lm(), sequences(LENGTHS)
    batches = pad_batches(seqs, SIZES)
    empty = pad_batches(sequences([4, 2], seed=5), [2])[0]
    empty["labels"][:] = -100
    H = operator(model, TokenLoss(), batches + [empty])
    close(H @ np.eye(H.shape[0]), dense_lm_hessian(model, seqs))


def test_a_data_set_without_targets_is_refused():
    batches = pad_batches(sequences([4, 3]), [2])
    batches[0]["labels"][:] = -100
    with pytest.raises(InvalidDataError, match="no target token"):
        operator(tiny_lm(), TokenLoss(), batches)


def test_losses_that_cannot_be_made_exact_are_refused_naming_the_fix():
    with pytest.raises(InvalidLossError, match="reduction='none'"):
        TokenLoss(loss=torch.nn.CrossEntropyLoss(weight=torch.ones(5)))
    with pytest.raises(InvalidLossError, match="reduction='none'"):
        TokenLoss("sequences", loss=torch.nn.CrossEntropyLoss())
    with pytest.raises(InvalidLossError, match="token count is not known"):
        TokenLoss()(torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long))


def test_a_given_token_count_is_used():
    model, seqs = tiny_lm(), sequences(LENGTHS)
    loss = TokenLoss(num_tokens=1)
    H = operator(model, loss, pad_batches(seqs, SIZES))
    close(H @ np.eye(H.shape[0]), dense_lm_hessian(model, seqs, "sum"))


def test_the_objective_and_token_count_are_in_the_operators_provenance():
    model, seqs = tiny_lm(), sequences(LENGTHS)
    H = operator(model, TokenLoss("sequences"), pad_batches(seqs, SIZES))
    provenance = H.identity()["provenance"]
    assert provenance["objective"] == "sequences" and provenance["loss"] == "TokenLoss"
    assert provenance["num_tokens"] == H.loss_fn.num_tokens > 0
    assert provenance["num_sequences"] == len(LENGTHS) and provenance["shift_labels"] is True


def test_a_token_mean_loss_with_ignored_positions_is_refused_naming_token_loss():
    """The issue's case: a shifted cross-entropy with reduction='mean' over padded batches."""
    class ShiftedMean:
        reduction = "mean"

        def __call__(self, logits, labels):
            return torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    with pytest.raises(InvalidLossError, match="TokenLoss"):
        operator(tiny_lm(), ShiftedMean(), pad_batches(sequences(LENGTHS), SIZES))
