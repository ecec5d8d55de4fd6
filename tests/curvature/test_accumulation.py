"""The pass's float64 sum from product pieces: every layout and path (flattened, per parameter
by numpy, by torch) gives ``sum_B w_B P_B`` as a float64 sum of the weighted pieces would,
to float64 rounding, with the ragged batch's own weight; a float32 sum would not. The sums
need no zeroing (the first batch is written), and the normalization by ``N`` is the last
multiplication."""

import numpy as np
import pytest
import torch

from lanczos_hessian.curvature import accumulation
from lanczos_hessian.curvature.accumulation import Accumulator
from lanczos_hessian.curvature.block_product import BlockProduct
from lanczos_hessian.curvature.params import ParameterSpace

SHAPES = [(3, 4), (4,), (2, 3)]  # M = 22


def space():
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in SHAPES]).tolist()
    return ParameterSpace(tuple(f"p{i}" for i in range(len(SHAPES))),
                          tuple(torch.Size(s) for s in SHAPES), tuple(offsets))


def products(b, n, dtype, seed=0):
    """``n`` batch products of a block of ``b`` columns, flat ``(n, b, M)`` float64 copies."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, b, space().dim, generator=g, dtype=torch.float64).mul(1e3).to(dtype)


def as_pieces(flat, by_column):
    """One batch's ``(b, M)`` product as the pieces of a BlockProduct in either layout."""
    s = space()
    if by_column:
        return BlockProduct([list(s.split(row.clone()).values()) for row in flat], True)
    return BlockProduct([t.contiguous() for t in s.split(flat.T.clone()).values()], False)


@pytest.mark.parametrize("numpy_adds", [True, False])  # torch adds with more threads
@pytest.mark.parametrize("flat_path", [True, False])
@pytest.mark.parametrize("by_column", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_weighted_sums_match_float64_sums_of_the_pieces(monkeypatch, flat_path, by_column,
                                                        dtype, numpy_adds):
    monkeypatch.setattr(accumulation, "FLAT_BELOW", 10 ** 9 if flat_path else 0)
    monkeypatch.setattr(accumulation, "NUMPY_UP_TO_THREADS", 10 ** 6 if numpy_adds else 0)
    b, weights = 2, [32, 32, 32, 7, 32, 1]  # a ragged batch, then the full size again
    P = products(b, len(weights), dtype)
    sums = torch.full((b, space().dim), float("nan"), dtype=torch.float64)  # never read
    total = Accumulator(sums, space())
    for p, w in zip(P, weights):
        total.add(as_pieces(p, by_column), w)
    assert total.finish() is sums
    exact = sum(w * p.to(torch.float64) for p, w in zip(P, weights))
    scale = float(sum(w * p.to(torch.float64).abs() for p, w in zip(P, weights)).max())
    np.testing.assert_allclose(sums.numpy(), exact.numpy(), rtol=0, atol=8e-16 * scale)
    if dtype == torch.float32:  # the float64 sum is needed: a float32 one is far off
        single = sum(w * p for p, w in zip(P, weights)).to(torch.float64)
        assert float((single - exact).abs().max()) > 1e3 * 8e-16 * scale


def test_one_weight_throughout_is_applied_once_at_the_end():
    P = products(1, 3, torch.float32)
    sums = torch.zeros(1, space().dim, dtype=torch.float64)
    total = Accumulator(sums, space())
    for p in P:
        total.add(as_pieces(p, True), 256)
    assert total.scale == 256  # held unweighted so far
    plain = (P[0].double() + P[1].double()) + P[2].double()
    np.testing.assert_array_equal(sums.numpy(), plain.numpy())
    total.finish()
    np.testing.assert_array_equal(sums.numpy(), (256 * plain).numpy())


@pytest.mark.parametrize("flat_path", [True, False])
@pytest.mark.parametrize("weights", [[32, 32, 8], [8, 32, 32], [5, 0, 5], [1, 1, 1]])
def test_the_division_by_n_is_folded_into_the_last_scaling(monkeypatch, flat_path, weights):
    monkeypatch.setattr(accumulation, "FLAT_BELOW", 10 ** 9 if flat_path else 0)
    P = products(3, len(weights), torch.float32, seed=1)
    sums = torch.full((3, space().dim), float("nan"), dtype=torch.float64)
    total = Accumulator(sums, space())
    for p, w in zip(P, weights):
        total.add(as_pieces(p, True), w)
    n = sum(weights)
    total.finish(n)
    exact = sum(w * p.to(torch.float64) for p, w in zip(P, weights)) / n
    scale = float(sum(w * p.to(torch.float64).abs() for p, w in zip(P, weights)).max()) / n
    np.testing.assert_allclose(sums.numpy(), exact.numpy(), rtol=0, atol=8e-16 * scale)


def test_a_pass_without_batches_gives_zeros():
    sums = torch.full((2, space().dim), float("nan"), dtype=torch.float64)
    np.testing.assert_array_equal(Accumulator(sums, space()).finish(7).numpy(), 0.0)
