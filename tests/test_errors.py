"""Bad input gets a clear error naming the problem, before any expensive work."""

import numpy as np
import pytest
import torch

from conftest import make_mlp, mlp_data
from lanczos_hessian import (
    DenseSizeError,
    HessianOperator,
    InvalidDataError,
    InvalidLossError,
    InvalidModelError,
    NonFiniteError,
    OutputPathError,
    dense_matrix,
    lanczos_eigsh,
)
from lanczos_hessian.storage.hdf5 import SpectrumWriter, check_output_path

LOSS = torch.nn.CrossEntropyLoss()


def test_model_without_trainable_parameters():
    model = make_mlp().requires_grad_(False)
    with pytest.raises(InvalidModelError, match="no trainable parameters"):
        HessianOperator(model, LOSS, mlp_data())
    with pytest.raises(InvalidModelError, match=r"no trainable parameter matches \['fc9'\]"):
        HessianOperator(make_mlp(), LOSS, mlp_data(), params=["fc9"])


def test_loss_that_is_not_a_scalar():
    with pytest.raises(InvalidLossError, match="scalar"):
        HessianOperator(make_mlp(), torch.nn.CrossEntropyLoss(reduction="none"), mlp_data(),
                        reduction="mean")


def test_loss_with_unknown_reduction():
    with pytest.raises(InvalidLossError, match="reduction"):
        HessianOperator(make_mlp(), lambda out, y: out.sum(), mlp_data())


def test_empty_dataset():
    x, y = mlp_data()
    with pytest.raises(InvalidDataError, match="empty"):
        HessianOperator(make_mlp(), LOSS, (x[:0], y[:0]))
    with pytest.raises(InvalidDataError, match="empty"):
        HessianOperator(make_mlp(), LOSS, [])


def test_inputs_and_targets_of_different_length():
    x, y = mlp_data()
    with pytest.raises(InvalidDataError, match="23 samples but targets have 22"):
        HessianOperator(make_mlp(), LOSS, (x, y[:-1]))
    batches = [(x[:10], y[:10]), (x[10:], y[10:-1])]
    op = HessianOperator(make_mlp(), LOSS, batches)
    with pytest.raises(InvalidDataError, match="batch 1"):
        op.matvec(np.ones(op.shape[0]))


def test_one_shot_iterator_and_non_iterable():
    x, y = mlp_data()
    with pytest.raises(InvalidDataError, match="one-shot"):
        HessianOperator(make_mlp(), LOSS, iter([(x, y)]))
    with pytest.raises(InvalidDataError, match="single tensor"):
        HessianOperator(make_mlp(), LOSS, x)


def test_nan_in_loss_names_the_batch():
    x, y = mlp_data()
    x = x.clone()
    x[15] = float("nan")
    with pytest.raises(NonFiniteError, match="batch 0"):
        HessianOperator(make_mlp(), LOSS, (x[10:], y[10:]))
    op = HessianOperator(make_mlp(), LOSS, (x, y), batch_size=10)  # first batch is fine
    with pytest.raises(NonFiniteError, match="batch 1"):
        op.matvec(np.ones(op.shape[0]))


def test_inf_in_a_product_names_the_batch():
    op = HessianOperator(make_mlp(), LOSS, mlp_data(), batch_size=10)
    v = np.ones(op.shape[0])
    v[0] = np.inf
    with pytest.raises(NonFiniteError, match="product has NaN or Inf entries on batch 0"):
        op.matvec(v)


def test_eigsh_argument_errors_name_the_value():
    op = HessianOperator(make_mlp(), LOSS, mlp_data())
    with pytest.raises(ValueError, match=f"k=500 out of range: need 1 <= k <= n = {op.shape[0]}"):
        lanczos_eigsh(op, k=500)
    with pytest.raises(ValueError, match="unknown which='LR'"):
        lanczos_eigsh(op, k=2, which="LR")
    assert op.num_applications == 0


def test_output_path_exists_or_cannot_be_written(tmp_path):
    existing = tmp_path / "run.h5"
    existing.write_bytes(b"")
    with pytest.raises(OutputPathError, match="exists"):
        check_output_path(existing)
    check_output_path(existing, overwrite=True)
    with pytest.raises(OutputPathError, match="does not exist"):
        SpectrumWriter(tmp_path / "missing" / "run.h5")
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_path(tmp_path, overwrite=True)


def test_dense_matrix_refuses_large_models():
    op = HessianOperator(make_mlp(), LOSS, mlp_data())
    with pytest.raises(DenseSizeError, match="limit is max_dim=10"):
        dense_matrix(op, max_dim=10)


def test_wrong_types():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        HessianOperator(lambda x: x, LOSS, mlp_data())
    with pytest.raises(ValueError, match="unknown strategy"):
        HessianOperator(make_mlp(), LOSS, mlp_data(), strategy="magic")
    with pytest.raises(ValueError, match="batch_size"):
        HessianOperator(make_mlp(), LOSS, mlp_data(), batch_size=0)
