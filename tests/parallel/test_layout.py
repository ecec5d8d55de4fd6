"""The shard-major order of sharded models' operators (lanczos_hessian.parallel.layout):
DTensor's own Shard(0) chunking (uneven and empty chunks), each rank's contiguous rows, the
maps to parameter order and back, and the operators' declarations (no process group)."""

import numpy as np
import pytest
import torch
from torch.distributed.tensor import Shard

from lanczos_hessian import HessianOperator
from lanczos_hessian.parallel.layout import ShardLayout, operator_indices, parameter_order

SHAPES = [(10, 3), (10,), (3, 2, 2), (1, 5), (4,)]  # 3 rows over 4 ranks: an empty chunk


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_each_ranks_rows_are_dtensors_shard0_chunks_of_every_parameter(world_size):
    layout = ShardLayout(SHAPES, world_size)
    dim = sum(int(np.prod(s)) for s in SHAPES)
    flat = np.arange(dim)
    params, start = [], 0
    for s in SHAPES:
        params.append(flat[start:start + int(np.prod(s))].reshape(s))
        start += int(np.prod(s))
    shard_major = layout.from_parameters(flat)
    assert layout.offsets[0] == 0 and layout.offsets[-1] == dim
    for rank in range(world_size):
        expected = []
        for p in params:  # what DTensor gives rank `rank` of this parameter
            size, offset = Shard(0)._local_shard_size_and_offset(p.shape[0], world_size, rank)
            expected.append(p[offset:offset + size].reshape(-1))
        rows = shard_major[layout.offsets[rank]:layout.offsets[rank + 1]]
        np.testing.assert_array_equal(rows, np.concatenate(expected))
        assert [tuple(e) for e in layout.local_shapes(rank)] == [
            (Shard(0)._local_shard_size_and_offset(s[0], world_size, rank)[0],) + s[1:]
            for s in SHAPES]


@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_the_maps_are_inverse_permutations_on_numpy_and_torch_blocks(world_size):
    layout = ShardLayout(SHAPES, world_size)
    X = np.random.default_rng(0).standard_normal((layout.dim, 3))
    back = layout.to_parameters(layout.from_parameters(X))
    np.testing.assert_array_equal(back, X)
    T = torch.from_numpy(X)
    assert torch.equal(layout.from_parameters(T), torch.from_numpy(layout.from_parameters(X)))
    assert sorted(layout.from_parameters(np.arange(layout.dim)).tolist()) == list(
        range(layout.dim))
    where = layout.locate(np.arange(layout.dim))  # entry i of parameter order sits here
    np.testing.assert_array_equal(layout.from_parameters(X)[where], X)
    assert layout.order == ("parameter" if world_size == 1 else "shard-major")


def test_an_operator_of_a_model_held_whole_is_in_parameter_order():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 2)).double()
    data = (torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,)))
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), data)
    assert op.layout.is_identity and op.native is None
    assert op.identity()["provenance"]["vector_order"] == "parameter"
    assert op.partition(2) == [0, 13, 26]  # the even split
    assert op.rows_product(op.partition(2)) is None  # products gather
    x = np.arange(26.0)
    assert parameter_order(op, x) is x
    idx = torch.arange(5)
    assert operator_indices(op, idx) is idx
