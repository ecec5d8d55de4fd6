"""Hostile inputs to the curvature operators (issue 24, cases 3, 3b, 3c, 7 and 12): each
refused or reported by name instead of a silently wrong number or a raw traceback."""

import warnings

import numpy as np
import pytest
import torch

from conftest import assert_close, make_mlp, mlp_data, random_block
from lanczos_hessian import (ForwardModeUnsupportedError, HessianOperator, InvalidDataError,
                             InvalidModelError, dense_matrix)

LOSS = torch.nn.CrossEntropyLoss()


class SelfChanging(torch.nn.Module):
    """Counts its calls in a buffer and scales its output by the count (case 3)."""

    def __init__(self):
        super().__init__()
        self.net = make_mlp()
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        self.calls += 1
        return self.net(x) * (1 + 1e-3 * self.calls)


def test_a_model_that_changes_itself_in_forward_is_refused():
    op = HessianOperator(SelfChanging(), LOSS, mlp_data(), batch_size=5)
    with pytest.raises(InvalidModelError, match="changed its own buffer 'calls' during a "
                                                "hessian pass"):
        op.matvec(np.ones(op.shape[0]))
    forward = HessianOperator(SelfChanging(), LOSS, mlp_data(), batch_size=5,
                              strategy="forward-over-reverse")
    with pytest.raises(ForwardModeUnsupportedError, match="mutate a captured Tensor"):
        forward.matvec(np.ones(op.shape[0]))  # torch.func refuses the mutation itself


def test_a_model_without_side_effects_passes_the_state_check():
    op = HessianOperator(make_mlp(), LOSS, mlp_data(), batch_size=5)
    v = random_block(op.shape[0], 1)[:, 0]
    assert_close(op.matvec(v), op.matvec(v), 0.0, "two passes, same numbers")


def test_a_complex_vector_is_applied_to_its_real_and_imaginary_parts_in_one_pass():
    model, data = make_mlp(), mlp_data()
    op = HessianOperator(model, LOSS, data, batch_size=7)
    H = dense_matrix(op)
    B = random_block(op.shape[0], 2)
    z = B[:, 0] + 1j * B[:, 1]
    passes = op.num_applications
    out = op @ z
    assert op.num_applications == passes + 1  # one block pass of two columns
    assert np.iscomplexobj(out) and out.shape == z.shape
    assert_close(out.real, H @ B[:, 0], 1e-12, "real part")
    assert_close(out.imag, H @ B[:, 1], 1e-12, "imaginary part")
    Z = B + 1j * B[:, ::-1]
    assert_close(op.matmat(Z), H @ Z, 1e-12, "complex block")
    torch_out = op.apply(torch.from_numpy(z))
    assert torch_out.dtype == torch.complex128
    assert_close(torch_out.numpy(), H @ z, 1e-12, "torch complex vector")


def bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                               torch.nn.Dropout(0.1), torch.nn.Linear(8, 3)).double()


def test_a_model_in_train_mode_with_batch_norm_is_told_once_at_construction():
    model = bn_model().train()
    with pytest.warns(UserWarning, match=r"train mode and has 2 layers whose output depends "
                                         r"on the mode \('1', '3'\).*eval mode") as seen:
        op = HessianOperator(model, LOSS, mlp_data(), batch_size=5)
    assert sum("train mode" in str(w.message) for w in seen) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.matvec(np.ones(op.shape[0]))  # not again on every pass
        HessianOperator(bn_model().eval(), LOSS, mlp_data())  # eval mode: nothing to say
        HessianOperator(make_mlp().train(), LOSS, mlp_data())  # no mode-dependent layer
    assert model.training  # the caller's mode is kept


def test_a_model_on_the_meta_device_is_refused_by_name():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                    torch.nn.Linear(6, 3))
    x, y = mlp_data()
    with pytest.raises(InvalidModelError, match="'0.weight'.*meta device.*no values"):
        HessianOperator(model, LOSS, (x.float(), y))


def test_an_unbatched_data_loader_is_recognised():
    x, y = mlp_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=None)
    with pytest.raises(InvalidDataError, match="batch_size=None: it yields single samples"):
        HessianOperator(make_mlp(), LOSS, loader)
