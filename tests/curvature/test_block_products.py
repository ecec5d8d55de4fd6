"""Blocks of reverse-over-reverse curvature products: one backward per column, or one
vectorized backward for the block (rule 4 of ``lanczos_hessian/curvature/products.py``),
both against the dense float64 matrices."""

import numpy as np
import pytest
import torch

from conftest import assert_close, random_block
from lanczos_hessian import GGNOperator, HessianOperator, ResidualOperator
from lanczos_hessian.curvature import differentiation, products
from lanczos_hessian.curvature.products import batched_blocks


@pytest.mark.parametrize("batched,columns", [(False, 9), (True, 3), (True, 9)])
def test_both_block_forms_match_the_dense_matrices(case, batched, columns, monkeypatch):
    """Each form of the block, on a ragged batch split, against the dense reference: a wrong
    column order, a cotangent of another column or a missing batch would show. Three
    columns: the Hessian vectorized, the GGN column by column (the residual subtracts the
    two layouts); nine: both vectorized (``BATCHED_FROM``)."""
    calls = []
    vectorized = differentiation._batched_backward
    monkeypatch.setattr(differentiation, "_batched_backward",
                        lambda *args: calls.append(1) or vectorized(*args))
    x, y = case["data"]
    V = random_block(case["H"].shape[0], columns)
    for cls, ref in ((HessianOperator, case["H"]), (GGNOperator, case["G"]),
                     (ResidualOperator, case["H"] - case["G"])):
        op = cls(case["model"], case["loss_fn"], (x, y), batch_size=7,
                 strategy="reverse-over-reverse")
        op.curvature.differentiate.batched_blocks = batched
        calls.clear()
        assert_close(op.matmat(V), ref @ V, 1e-11, f"{op.kind}, batched={batched}")
        form = batched and columns >= op.curvature.differentiate.BATCHED_FROM.get(
            op.kind, 2)  # the residual: its Hessian part from 2 columns
        assert bool(calls) == form, f"{op.kind}: vectorized backward {len(calls)} times"
        assert_close(op.matvec(V[:, 1]), ref @ V[:, 1], 1e-11, f"{op.kind} single")


def test_a_parameter_the_loss_does_not_reach_gets_zero_columns():
    """A parameter outside the loss's graph: zeros in every column of the batched block, as
    in the per-column one (the backward returns no gradient for it)."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"used": torch.nn.Linear(3, 2), "idle": torch.nn.Linear(3, 2)})
    model = model.double()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner["used"](x)

    net = Net()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (9,))
    V = random_block(16, 3)
    results = []
    for batched in (False, True):
        op = HessianOperator(net, torch.nn.CrossEntropyLoss(), (x, y), batch_size=4,
                             strategy="reverse-over-reverse")
        op.curvature.differentiate.batched_blocks = batched
        results.append(op.matmat(V))
    idle = slice(8, 16)  # inner.idle.weight (6) and bias (2), after the used layer's 8
    assert np.all(results[1][idle] == 0) and np.all(results[0][idle] == 0)
    assert_close(results[1], results[0], 1e-13, "batched vs per column")


def test_the_rule_counts_the_forward_against_its_threshold(monkeypatch):
    """Rule 4 is the forward's floating-point operations (2 * in * out * batch for a linear
    layer) against :data:`BATCHED_BLOCKS_UP_TO_FLOPS`; a small model's operator takes it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 4).double()
    x, y = torch.randn(5, 10, dtype=torch.float64), torch.randint(0, 4, (5,))
    loss = torch.nn.CrossEntropyLoss()
    flops = 2 * 10 * 4 * 5
    monkeypatch.setattr(products, "BATCHED_BLOCKS_UP_TO_FLOPS", flops)
    assert batched_blocks(model, loss, x, y)
    monkeypatch.setattr(products, "BATCHED_BLOCKS_UP_TO_FLOPS", flops - 1)
    assert not batched_blocks(model, loss, x, y)
    op = HessianOperator(model, loss, (x, y), strategy="reverse-over-reverse")
    assert not op.curvature.differentiate.batched_blocks  # over the (patched) threshold
    monkeypatch.undo()
    op = HessianOperator(model, loss, (x, y))  # auto: reverse-over-reverse, small
    assert op.strategy == "reverse-over-reverse" and op.curvature.differentiate.batched_blocks


def test_a_forward_the_counter_cannot_follow_keeps_the_per_column_backward(monkeypatch):
    """A failing count (here, a counter that raises on entry) falls back to the per-column
    form, never an error at construction."""
    import torch.utils.flop_counter as flop_counter

    class Refusing:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            raise RuntimeError("an op the counter cannot follow")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(flop_counter, "FlopCounterMode", Refusing)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    loss = torch.nn.CrossEntropyLoss()
    assert not batched_blocks(model, loss, x, y)
    assert not HessianOperator(model, loss, (x, y)).curvature.differentiate.batched_blocks
