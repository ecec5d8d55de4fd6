"""The layout check of sharded parameters across ranks, on the per-rank descriptions alone
(no process group): what every rank must share is compared, and the message names the
parameter and the ranks."""

import pytest
import torch

from lanczos_hessian.errors import InvalidModelError
from lanczos_hessian.parallel.dtensor import ShardedModel, check_layouts, describe_parameters

SHARDED = ("fc.weight", True, (6, 4), "torch.float64", ("Shard(dim=0)",), (2,))
PLAIN = ("fc.bias", False, (6,), "torch.float64", (), ())


def replaced(row, index, value):
    return row[:index] + (value,) + row[index + 1:]


def test_alike_ranks_pass_and_plain_parameters_beside_sharded_ones_are_replicas():
    check_layouts([[SHARDED, PLAIN], [SHARDED, PLAIN]], world_size=2)


@pytest.mark.parametrize("index, value, words", [
    (1, False, r"sharded \(a DTensor\) or not \(True against False\)"),
    (2, (7, 4), r"global shape \(\(6, 4\) against \(7, 4\)\)"),
    (3, "torch.float32", r"dtype \(torch.float64 against torch.float32\)"),
    (4, ("Replicate()",), "placements"),
    (5, (1, 2), "device mesh"),
])
def test_a_parameter_that_differs_between_ranks_is_named(index, value, words):
    with pytest.raises(InvalidModelError, match=r"parameter 'fc.weight' differs between "
                                                r"ranks 0 and 1 in its " + words):
        check_layouts([[SHARDED, PLAIN], [replaced(SHARDED, index, value), PLAIN]], 2)


def test_other_parameter_names_are_refused():
    with pytest.raises(InvalidModelError, match="ranks 0 and 1 hold models with other"):
        check_layouts([[SHARDED, PLAIN], [SHARDED]], 2)


def test_a_mesh_that_does_not_span_the_world_is_refused():
    with pytest.raises(InvalidModelError, match=r"'fc.weight' is sharded over a device mesh "
                                                r"of 2 ranks .* the process group has 4"):
        check_layouts([[SHARDED, PLAIN]] * 4, 4)
    hsdp = replaced(replaced(SHARDED, 5, (2, 2)), 4, ("Replicate()", "Shard(dim=0)"))
    check_layouts([[hsdp]] * 4, 4)  # a 2-D mesh over every rank is accepted


def test_a_partial_placement_is_refused():
    partial = replaced(SHARDED, 4, ("Partial(sum)",))
    with pytest.raises(InvalidModelError, match="'fc.weight' has a Partial placement"):
        check_layouts([[partial], [partial]], 2)


def test_a_plain_model_is_described_and_left_alone():
    model = torch.nn.Linear(4, 6).double()
    assert describe_parameters(model) == [
        ("weight", False, (6, 4), "torch.float64", (), ()),
        ("bias", False, (6,), "torch.float64", (), ())]
    sharded = ShardedModel.of(model)
    assert not sharded.is_sharded
    with sharded.gathered():
        assert isinstance(model.weight, torch.nn.Parameter)
    sharded.refuse_compile()  # nothing to refuse
    assert sharded.cached("key", lambda: 3) == 3
