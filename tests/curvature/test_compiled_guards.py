"""Compiled products check every guard once per pass (and per new batch layout), the other
calls only the guards that tell graphs apart: a change between passes is still seen."""

import numpy as np
import pytest
import torch

from conftest import mlp_data, random_block
from lanczos_hessian import HessianOperator

pytestmark = pytest.mark.slow  # compiles (aot_eager: seconds)
LOSS = torch.nn.CrossEntropyLoss()
FAST = {"backend": "aot_eager"}


class Scaled(torch.nn.Module):
    """An MLP whose hidden activations are multiplied by a plain Python float: a constant
    the compiled graph is specialized on, guarded by Dynamo."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)
        self.scale = 2.0

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * self.scale)


def test_every_guard_runs_once_per_pass_and_per_new_layout():
    torch._dynamo.reset()
    model = Scaled().double()
    op = HessianOperator(model, LOSS, mlp_data(), batch_size=7, compile=FAST)  # 7, 7, 7, 2
    v = random_block(op.shape[0], 1)[:, 0]
    op.matvec(v)
    assert op.compiled.num_full_checks == 2  # the full batches' layout and the ragged one
    for passes in range(1, 4):
        op.matvec(v)
        assert op.compiled.num_full_checks == 2 + passes  # one a pass: its first call
    op.matmat(random_block(op.shape[0], 2))  # a block: another layout, checked in full
    assert op.compiled.num_full_checks == 5 + 2


def test_a_change_between_passes_is_seen_by_the_first_call_of_the_next():
    torch._dynamo.reset()
    model = Scaled().double()
    data = mlp_data()
    op = HessianOperator(model, LOSS, data, batch_size=7, compile=FAST)
    V = random_block(op.shape[0], 2)
    op.matmat(V)
    op.matmat(V)  # every layout checked: later calls of a pass skip the full check
    graphs = op.compiled.num_graphs
    model.scale = 3.0  # the graphs were specialized on 2.0
    eager = HessianOperator(model, LOSS, data, batch_size=7)
    expected = eager.matmat(V)
    out = op.matmat(V)
    assert op.compiled.num_graphs > graphs  # recompiled, for the full and the ragged batches
    assert np.abs(out - expected).max() <= 1e-12 * np.abs(expected).max()
    np.testing.assert_allclose(op.matmat(V), out, rtol=0, atol=1e-15 * np.abs(out).max())
