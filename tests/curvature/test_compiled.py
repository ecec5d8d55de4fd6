"""Compiled products (``compile=True``): the eager products' numbers, one graph for the full
batches and at most one more for the ragged last batch, compile time apart, a named fallback."""

import numpy as np
import pytest
import torch

from conftest import make_mlp, mlp_data, random_block
from lanczos_hessian import GGNOperator, HessianOperator
from lanczos_hessian.curvature.compiled import CompileWarning
from test_attention import Encoder, attention_case, full_data_hessian

pytestmark = pytest.mark.slow  # each compile takes seconds to a minute on a CPU
LOSS = torch.nn.CrossEntropyLoss()


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_compiled_products_agree_with_eager_and_compile_at_most_twice(dtype, tol):
    torch._dynamo.reset()
    model = make_mlp().to(dtype)
    x, y = mlp_data()
    data = (x.to(dtype), y)
    V = random_block(sum(p.numel() for p in model.parameters()), 2)
    for cls in (HessianOperator, GGNOperator):
        eager = cls(model, LOSS, data, batch_size=7)  # 23 = 3 * 7 + 2: a ragged last batch
        compiled = cls(model, LOSS, data, batch_size=7, compile=True)
        assert compiled.strategy == {HessianOperator: "reverse-over-reverse",  # the rule for
                                     GGNOperator: "forward-over-reverse"}[cls]  # compiling
        reference = eager.matmat(V)
        for _ in range(3):
            assert relative(compiled.matmat(V), reference) <= tol
        assert compiled.compiled.usable and compiled.compile_time > 0
        graphs = compiled.compiled.num_graphs
        assert 1 <= graphs <= 2  # the full batches and the ragged one, never one per pass
        compiled.matmat(V)
        compiled.matvec(V[:, 0])  # another block width: one more graph, once
        compiled.matvec(V[:, 1])
        assert compiled.compiled.num_graphs <= graphs + 2


@pytest.mark.parametrize("strategy,options", [
    ("forward-over-reverse", True),  # inductor's code
    ("auto", {"backend": "aot_eager"}),  # the rule's reverse-over-reverse, traced by torch.func
])  # (inductor's code for the latter takes minutes to build here: the benchmark runs it)
def test_compiled_attention_matches_the_dense_hessian(strategy, options):
    torch._dynamo.reset()
    model, x, y = attention_case(Encoder)
    H = full_data_hessian(model, x, y)
    op = HessianOperator(model, LOSS, (x, y), batch_size=4, strategy=strategy, compile=options)
    V = np.random.default_rng(0).standard_normal((op.shape[0], 2))
    assert np.abs(op.matmat(V) - H @ V).max() <= 1e-10 * np.abs(H).max() * np.abs(V).sum(0).max()
    assert op.compiled.usable
    # one graph, no break: the eval-mode fast path of the layers (no derivative rules) is off
    # during compiled calls, else the break inside the transforms left the product eager
    assert op.compiled.num_graph_breaks == 0
    assert torch.backends.mha.get_fastpath_enabled()  # the caller's setting restored


def test_a_graph_break_is_counted_and_named():
    torch._dynamo.reset()
    model, data = make_mlp(), mlp_data()

    class Breaks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            torch._dynamo.graph_break()
            return self.inner(x)

    op = HessianOperator(Breaks(), LOSS, data, batch_size=7, compile={"backend": "aot_eager"})
    V = random_block(op.shape[0], 1)
    with pytest.warns(CompileWarning, match="graph break"):
        out = op.matmat(V)
    assert op.compiled.num_graph_breaks >= 1
    eager = HessianOperator(Breaks(), LOSS, data, batch_size=7, strategy="forward-over-reverse")
    np.testing.assert_allclose(out, eager.matmat(V), rtol=1e-12, atol=1e-14)


def test_a_product_that_cannot_be_compiled_falls_back_with_the_reason():
    """The reverse-over-reverse GGN differentiates autograd's backward, which cannot be
    compiled: the operator says so and goes on with the eager product, the same numbers."""
    torch._dynamo.reset()
    model, data = make_mlp(), mlp_data()
    V = random_block(sum(p.numel() for p in model.parameters()), 2)
    eager = GGNOperator(model, LOSS, data, batch_size=7, strategy="reverse-over-reverse")
    op = GGNOperator(model, LOSS, data, batch_size=7, strategy="reverse-over-reverse",
                     compile=True)
    with pytest.warns(CompileWarning, match="double backward.*going on with the eager"):
        out = op.matmat(V)
    assert not op.compiled.usable
    np.testing.assert_array_equal(out, eager.matmat(V))


def test_compiled_and_eager_hessians_take_the_same_strategy_and_agree_on_a_cnn():
    """The rule gives the compiled Hessian the eager one's strategy (reverse-over-reverse,
    traced through torch.func), also on convolutions, where it compiles to one graph; a
    block goes through the vmap of the second sweep."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 4 * 4, 3)).double()
    x, y = torch.randn(10, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    eager = HessianOperator(model, LOSS, (x, y), batch_size=4)
    op = HessianOperator(model, LOSS, (x, y), batch_size=4, compile={"backend": "aot_eager"})
    assert op.strategy == eager.strategy == "reverse-over-reverse"
    V = random_block(op.shape[0], 3)
    assert relative(op.matmat(V), eager.matmat(V)) <= 1e-12
    assert relative(op.matvec(V[:, 0]), eager.matvec(V[:, 0])) <= 1e-12
    assert op.compiled.usable and op.compiled.num_graph_breaks == 0


def test_many_operators_in_one_process_keep_their_own_graphs():
    """Dynamo's recompile limit (8) counts per code object: each operator has its own."""
    torch._dynamo.reset()
    model, (x, y) = make_mlp(), mlp_data()
    V = random_block(sum(p.numel() for p in model.parameters()), 1)
    ops = [HessianOperator(model, LOSS, (x, y), batch_size=b, compile={"backend": "aot_eager"})
           for b in (3, 4, 5, 6, 7, 8, 9, 10, 11)]
    for op in ops:
        op.matmat(V)
        op.matmat(V)
        assert op.compiled.usable and 1 <= op.compiled.num_graphs <= 2


def test_a_model_compiled_after_another_does_not_inherit_its_dynamic_shapes():
    """Dynamo remembers which sizes and strides changed per function name: an MLP's ragged
    batch compiled first must not make the attention model's strides symbolic (with one
    name for every operator's product, torch 2.13's forward-over-reverse trace of the
    attention model then failed and the product went eager)."""
    torch._dynamo.reset()
    options = {"backend": "aot_eager"}
    mlp, (x, y) = make_mlp(), mlp_data()
    first = HessianOperator(mlp, LOSS, (x, y), batch_size=7, compile=options)  # ragged: 23
    first.matmat(random_block(first.shape[0], 1))
    model, x, y = attention_case(Encoder)
    op = HessianOperator(model, LOSS, (x, y), batch_size=4, compile=options)
    V = random_block(op.shape[0], 1)
    eager = HessianOperator(model, LOSS, (x, y), batch_size=4, strategy="forward-over-reverse")
    np.testing.assert_allclose(op.matmat(V), eager.matmat(V), rtol=1e-12, atol=1e-14)
    assert op.compiled.usable and op.compiled.num_graph_breaks == 0
