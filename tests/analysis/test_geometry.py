"""geometry.py against dense float64 references on the whole data set.

* the full-dataset gradient against torch autograd of the whole-data loss (ragged batches,
  mean and sum reductions, a parameter block);
* the gradient overlap against numpy ``eigh`` of the dense Hessian;
* line and direction losses against direct evaluation at the interpolated parameters;
* per-layer spectra against ``eigh`` of the dense Hessian's diagonal blocks.
"""

import numpy as np
import pytest
import torch

from lanczos_hessian import HessianOperator, lanczos_eigsh
from lanczos_hessian.analysis.geometry import (
    direction_profile,
    full_gradient,
    full_loss,
    gradient_overlap,
    layer_names,
    layer_spectra,
    line_profile,
    loss_and_gradient,
    orthonormal_basis,
)
from lanczos_hessian.curvature.params import ParameterSpace

from conftest import CASES, reference_matrices


def _case(name):
    make_model, make_data, make_loss = CASES[name]
    return make_model(), make_data(), make_loss()


def _autograd_gradient(model, loss_fn, x, y, names=None):
    """d L / d w of the whole-data loss, one autograd call on all samples at once."""
    params = [p for n, p in model.named_parameters() if names is None or
              any(n == w or n.startswith(w + ".") for w in names)]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), torch.cat([g.reshape(-1) for g in grads]).numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_gradient_matches_autograd_on_the_whole_data(name):
    model, (x, y), loss_fn = _case(name)
    value, gradient = loss_and_gradient(model, loss_fn, (x, y), batch_size=5)  # ragged: 5,5,..,3
    ref_value, ref = _autograd_gradient(model, loss_fn, x, y)
    np.testing.assert_allclose(gradient.numpy(), ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())
    assert value == pytest.approx(ref_value, rel=1e-12)
    # the operator form uses the operator's batching and block
    op = HessianOperator(model, loss_fn, (x, y), batch_size=7)
    np.testing.assert_allclose(full_gradient(op).numpy(), ref, rtol=1e-12,
                               atol=1e-14 * np.abs(ref).max())


def test_gradient_of_a_parameter_block_and_eval_mode_restored():
    model, (x, y), loss_fn = _case("mlp-ce-mean")
    model.train()
    _, ref = _autograd_gradient(model, loss_fn, x, y, names=["2"])
    gradient = full_gradient(model, loss_fn, (x, y), params=["2"], batch_size=4)
    assert gradient.shape == (6 * 3 + 3,)
    np.testing.assert_allclose(gradient.numpy(), ref, rtol=1e-12)
    assert all(m.training for m in model.modules())


def test_gradient_runs_in_eval_mode_like_the_operators():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 3)).double().train()
    _, (x, y), loss_fn = _case("mlp-ce-mean")
    model.eval()
    _, ref = _autograd_gradient(model, loss_fn, x, y)
    model.train()
    np.testing.assert_allclose(full_gradient(model, loss_fn, (x, y)).numpy(), ref, rtol=1e-12)


def test_overlap_against_dense_eigh():
    model, (x, y), loss_fn = _case("mlp-ce-mean")
    H, _ = reference_matrices(model, loss_fn, x, y)
    evals, evecs = np.linalg.eigh(H)
    _, g = _autograd_gradient(model, loss_fn, x, y)
    for k in (1, 3, 8):
        top = evecs[:, -k:]
        expected = np.sum((top.T @ g) ** 2) / (g @ g)
        assert gradient_overlap(g, top) == pytest.approx(expected, rel=1e-12)
        # a non-orthonormal basis of the same span gives the same fraction
        mixed = top @ np.random.default_rng(k).standard_normal((k, k))
        assert gradient_overlap(g, mixed) == pytest.approx(expected, rel=1e-9)
    # from Lanczos eigenpairs of the operator, per eigenvector too
    op = HessianOperator(model, loss_fn, (x, y), batch_size=6)
    result = lanczos_eigsh(op, k=3, which="LA", tol=1e-10, rng=0)
    total, parts = gradient_overlap(full_gradient(op), result, per_vector=True)
    expected_parts = (evecs[:, -3:].T @ g) ** 2 / (g @ g)
    assert total == pytest.approx(expected_parts.sum(), rel=1e-7)
    np.testing.assert_allclose(parts, expected_parts, rtol=1e-6, atol=1e-12)
    # the whole space holds all of the gradient; an orthogonal complement none of it
    assert gradient_overlap(g, evecs) == pytest.approx(1.0, rel=1e-12)
    # complementary eigenspaces split the gradient's squared norm exactly
    assert gradient_overlap(g, evecs[:, :-3]) + gradient_overlap(g, evecs[:, -3:]) == \
        pytest.approx(1.0, rel=1e-12)


def test_orthonormal_basis_drops_dependent_columns():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((10, 2))
    Q = orthonormal_basis(np.column_stack([a, a[:, 0] + a[:, 1]]))
    assert Q.shape == (10, 2)
    np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-12)
    with pytest.raises(ValueError):
        gradient_overlap(np.ones(9), a)


def _direct_loss(model, loss_fn, x, y, w):
    space = ParameterSpace.of(model)
    params = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, v in space.split(torch.as_tensor(w)).items():
            params[n].copy_(v)
        out = model(x)
        loss = loss_fn(out, y).item()
        acc = (out.argmax(1) == y).double().mean().item() if out.shape[1] > 1 and \
            not y.is_floating_point() else float("nan")
        for n, v in saved.items():
            params[n].copy_(v)
    return loss, acc


@pytest.mark.parametrize("name", ["mlp-ce-mean", "mlp-ce-sum", "mlp-mse-mean"])
def test_line_profile_against_direct_evaluation(name):
    model, (x, y), loss_fn = _case(name)
    space = ParameterSpace.of(model)
    w_a = space.flat_parameters(model)
    w_b = w_a + 0.3 * torch.randn(space.dim, generator=torch.Generator().manual_seed(4),
                                  dtype=torch.float64)
    t = np.array([-0.5, 0.0, 0.25, 1.0, 1.5])
    before = w_a.clone()
    test_x, test_y = x[:9], y[:9]
    profile = line_profile(model, loss_fn, {"train": (x, y), "test": (test_x, test_y)},
                           w_a, w_b, t, batch_size=4)
    torch.testing.assert_close(space.flat_parameters(model), before, rtol=0, atol=0)
    for i, ti in enumerate(t):
        w = (1 - ti) * w_a + ti * w_b
        for key, (xx, yy) in (("train", (x, y)), ("test", (test_x, test_y))):
            loss, acc = _direct_loss(model, loss_fn, xx, yy, w)
            assert profile.losses[key][i] == pytest.approx(loss, rel=1e-12)
            if np.isnan(acc):
                assert np.isnan(profile.accuracies[key][i])
            else:
                assert profile.accuracies[key][i] == pytest.approx(acc)
    assert profile.norm == pytest.approx(float(torch.linalg.vector_norm(w_b - w_a)))
    assert profile.losses["train"][1] == pytest.approx(full_loss(model, loss_fn, (x, y))[0])
    arrays = profile.as_arrays()
    assert set(arrays) == {"t", "norm", "loss_train", "accuracy_train", "loss_test",
                           "accuracy_test"}


def test_direction_profile_along_an_eigenvector_is_quadratic_near_zero():
    model, (x, y), loss_fn = _case("mlp-ce-mean")
    H, _ = reference_matrices(model, loss_fn, x, y)
    evals, evecs = np.linalg.eigh(H)
    _, g = _autograd_gradient(model, loss_fn, x, y)
    d = evecs[:, -1]
    t = np.array([-1e-3, 0.0, 1e-3])
    profile = direction_profile(model, loss_fn, (x, y), d, t)
    w0 = ParameterSpace.of(model).flat_parameters(model).numpy()
    for i, ti in enumerate(t):
        assert profile.losses["train"][i] == pytest.approx(
            _direct_loss(model, loss_fn, x, y, w0 + ti * d)[0], rel=1e-12)
    # second difference / t^2 is the curvature along d: the top eigenvalue
    L = profile.losses["train"]
    curvature = (L[0] - 2 * L[1] + L[2]) / 1e-6
    assert curvature == pytest.approx(evals[-1], rel=1e-4)
    # first difference is the directional derivative g.d
    assert (L[2] - L[0]) / 2e-3 == pytest.approx(g @ d, abs=1e-6 * np.abs(g).max() + 1e-9)


def test_layer_spectra_against_dense_blocks():
    model, (x, y), loss_fn = _case("cnn-ce-mean")
    H, _ = reference_matrices(model, loss_fn, x, y)
    names = layer_names(model)
    assert names == ["0", "4"]
    spectra = layer_spectra(model, loss_fn, (x, y), k=4, batch_size=5, tol=1e-10)
    offsets = np.cumsum([0] + [p.numel() for p in model.parameters()])
    blocks = {"0": slice(offsets[0], offsets[2]), "4": slice(offsets[2], offsets[4])}
    for name, block in blocks.items():
        exact = np.linalg.eigvalsh(H[block, block])
        np.testing.assert_allclose(spectra[name], exact[-4:], rtol=1e-7,
                                   atol=1e-9 * np.abs(exact).max())
    # a single parameter and a group of names (top), the bottom of a block. (The last
    # layer's weight block has an 8-fold zero eigenvalue, rank(softmax Hessian) x fan-in
    # < 24, and single-vector Lanczos sees one copy of a repeated eigenvalue: its bottom
    # end is not a fair test, its top is.)
    weight_only = slice(offsets[2], offsets[3])
    out = layer_spectra(model, loss_fn, (x, y), layers=["4.weight"], k=3, tol=1e-10)
    np.testing.assert_allclose(out["4.weight"],
                               np.linalg.eigvalsh(H[weight_only, weight_only])[-3:],
                               rtol=1e-7, atol=1e-9 * np.abs(H).max())
    out = layer_spectra(model, loss_fn, (x, y), layers=[["0.bias", "4.bias"]], k=2, which="SA",
                        tol=1e-10)
    idx = np.r_[offsets[1]:offsets[2], offsets[3]:offsets[4]]
    np.testing.assert_allclose(out["0.bias+4.bias"], np.linalg.eigvalsh(H[np.ix_(idx, idx)])[:2],
                               rtol=1e-7, atol=1e-9 * np.abs(H).max())
