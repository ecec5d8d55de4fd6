"""Float32 products in IEEE float32 on the CPU whatever the process-wide precision settings:
``torch.set_float32_matmul_precision("medium")`` lets oneDNN run float32 matmuls in bfloat16
on CPUs with bfloat16 matrix units, and the operators' passes must not inherit it."""

import pytest
import torch

from conftest import mlp_data
from lanczos_hessian import HessianOperator
from lanczos_hessian.curvature import precision
from lanczos_hessian.curvature.precision import tf32_flags, tf32_mode


@pytest.fixture
def restore_precision():
    state = precision._save()
    legacy = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(legacy)
    precision._restore(state)


def test_cpu_products_are_ieee_under_a_bfloat16_matmul_precision(restore_precision):
    """The same products, bit for bit, under "medium" (bfloat16 matmuls where the CPU has
    the units: 0.27 off in a 512 x 512 float32 matmul on this project's CPU) as under
    "highest"; the caller's setting back after the pass."""
    x, y = mlp_data(n=64)
    x = x.float()
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.Tanh(),
                                torch.nn.Linear(256, 256), torch.nn.Tanh(),
                                torch.nn.Linear(256, 3))
    op = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=32)
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.set_float32_matmul_precision("highest")
    ieee = op.apply(v)
    torch.set_float32_matmul_precision("medium")
    inside = []
    handle = model.register_forward_pre_hook(lambda module, args: inside.append(tf32_flags()))
    try:
        assert torch.equal(op.apply(v), ieee)
    finally:
        handle.remove()
    assert torch.get_float32_matmul_precision() == "medium"
    if any(k.startswith("mkldnn.") for k in inside[0]):
        assert all(f["mkldnn.matmul.fp32_precision"] == "ieee" for f in inside)


@pytest.mark.skipif(not precision._new_api_owners("cpu"), reason="torch < 2.9 has no "
                    "per-operation oneDNN settings (the legacy matmul setting rules it)")
@pytest.mark.parametrize("allow", [False, True])
def test_tf32_mode_sets_the_settings_the_device_reads(allow, restore_precision):
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    before = tf32_flags()
    target = "tf32" if allow else "ieee"
    for device, mine in (("cpu", "mkldnn."), ("cuda", ("cuda.", "cudnn."))):
        with tf32_mode(allow, device):
            inside = tf32_flags()
        for key, value in inside.items():
            if key.startswith(mine) and key.endswith("fp32_precision"):
                assert value == target, (device, inside)
            elif key.endswith("fp32_precision"):
                assert value == before[key], (device, inside)
        assert tf32_flags() == before
    with tf32_mode(allow, torch.device("meta")):  # no settings of its own: all of them
        assert {v for k, v in tf32_flags().items() if k.endswith("fp32_precision")} == {target}
    assert tf32_flags() == before


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_products_and_dense_matrices_ignore_a_callers_autocast(kind):
    """Under ``torch.autocast("cpu", bfloat16)`` (mixed-precision training code measuring the
    curvature) a float32 model's products would be bfloat16's (0.5% off, measured): the
    passes and the dense reference run with autocast off, the same numbers bit for bit, and
    the caller's autocast is on again after."""
    from lanczos_hessian import GGNOperator
    from lanczos_hessian.curvature.dense import dense_matrix

    x, y = mlp_data(n=64)
    x = x.float()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 3))
    cls = HessianOperator if kind == "hessian" else GGNOperator
    op = cls(model, torch.nn.CrossEntropyLoss(), (x, y), batch_size=32)
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain, dense = op.apply(v), dense_matrix(op)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(op.apply(v), plain)
        assert (dense_matrix(op) == dense).all()
        assert torch.is_autocast_enabled("cpu")
