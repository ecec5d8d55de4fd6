"""Blocks under activation checkpointing: the recomputation a Hessian product needs.

Products through blocks checkpointed with ``torch.utils.checkpoint`` or
``checkpoint_wrapper`` are checked against the dense Hessian on sharded ranks in
``test_sharded_params.py``; here, in one process, a block under
``torch.distributed._composable.checkpoint`` (which recomputes once per forward, so the second
backward pass of a product fails inside PyTorch) is refused at construction, naming it."""

import pytest
import torch

from lanczos_hessian import HessianOperator
from lanczos_hessian.errors import InvalidModelError


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    return model, (torch.randn(9, 3, generator=g, dtype=torch.float64),
                   torch.randint(0, 2, (9,), generator=g))


def test_a_block_under_composable_checkpoint_is_refused_by_name():
    from torch.distributed._composable import checkpoint

    model, data = model_and_data()
    checkpoint(model[2])
    with pytest.raises(InvalidModelError, match=r"module '2' is checkpointed with torch\."
                                                r"distributed\._composable\.checkpoint"):
        HessianOperator(model, torch.nn.CrossEntropyLoss(), data)


def test_a_block_under_checkpoint_wrapper_gives_the_hessian_of_the_plain_model():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model, data = model_and_data()
    plain = HessianOperator(model, torch.nn.CrossEntropyLoss(), data, batch_size=4)
    wrapped = torch.nn.Sequential(checkpoint_wrapper(torch.nn.Sequential(model[0], model[1])),
                                  checkpoint_wrapper(model[2]))
    op = HessianOperator(wrapped, torch.nn.CrossEntropyLoss(), data, batch_size=4)
    eye = torch.eye(op.shape[0], dtype=torch.float64)
    dense = plain.apply(eye)
    assert float((op.apply(eye) - dense).abs().max()) <= 1e-14 * float(dense.abs().max())
