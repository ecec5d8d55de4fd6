"""TensorFloat-32 in curvature products: off unless the caller asks for it.

On NVIDIA GPUs from Ampere on, float32 matrix products (cuBLAS) and convolutions (cuDNN) can
run in TensorFloat-32, which keeps 10 bits of mantissa instead of 23. torch's defaults allow
it for cuDNN convolutions (``torch.backends.cudnn.allow_tf32 = True``) and not for cuBLAS
matmuls. For curvature that is a silent loss of about three decimal digits in every product
of a convolutional model (10 bits of mantissa against float32's 23), far above what Lanczos
resolves and invisible in a loss curve (``scripts/device_check.py`` measures it on a GPU).

The policy of the operators (:class:`~lanczos_hessian.curvature.operators.CurvatureOperator`):
every pass over the data runs inside :func:`tf32_mode` with ``allow_tf32=False`` (the
default), so that float32 products are IEEE float32 whatever the process-wide settings are;
``allow_tf32=True`` opts in (faster convolutions and matmuls, TF32's rounding). The
process-wide settings are restored after each pass, so the caller's training code keeps its
own. The setting is recorded in a run file's provenance (``allow_tf32``). On the CPU and for
float64 or bfloat16 models the flags change nothing.

torch 2.9 added per-backend ``fp32_precision`` settings beside the legacy ``allow_tf32``
flags, and refuses to read a legacy flag after the two were set inconsistently. Inside the
context both are set consistently (the legacy setters, then the per-operation settings
explicitly, so that a process-wide ``torch.backends.fp32_precision = "tf32"`` cannot leak in
through inheritance); on exit every setting is put back as it was, legacy ones first.
Two environment variables act below these flags and are not overridden here:
``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` forces TF32 in cuBLAS, ``NVIDIA_TF32_OVERRIDE=0``
disables it in every NVIDIA library (``scripts/device_check.py`` records both).
"""

from __future__ import annotations

import contextlib

import torch

#: The per-operation settings of torch >= 2.9, as (module path, attribute owner).
_NEW_API = (("cuda.matmul", lambda: torch.backends.cuda.matmul),
            ("cudnn.conv", lambda: getattr(torch.backends.cudnn, "conv", None)),
            ("cudnn.rnn", lambda: getattr(torch.backends.cudnn, "rnn", None)))


_OWNERS: dict = {}  # the per-operation settings' owners, found once (module singletons)


def _new_api_owners() -> dict:
    """``{name: object with fp32_precision}`` where this torch has the per-operation API
    (looked up on the first call: torch's backend modules do not change in a process)."""
    if "owners" not in _OWNERS:
        _OWNERS["owners"] = _find_owners()
    return _OWNERS["owners"]


def _find_owners() -> dict:
    owners = {}
    for name, get in _NEW_API:
        try:
            owner = get()
        except AttributeError:
            owner = None
        if owner is not None and hasattr(owner, "fp32_precision"):
            owners[name] = owner
    return owners


def _read(getter):
    """A flag's value, or None where torch refuses to read it (mixed legacy/new settings)."""
    try:
        return getter()
    except RuntimeError:
        return None


def tf32_flags() -> dict:
    """The TF32 settings in force: ``{"matmul": bool, "cudnn": bool}`` (None where torch cannot
    say, after an inconsistent mix of its legacy and new settings), plus the per-operation
    ``fp32_precision`` strings on torch >= 2.9."""
    flags = {"matmul": _read(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
             "cudnn": _read(lambda: bool(torch.backends.cudnn.allow_tf32))}
    for name, owner in _new_api_owners().items():
        flags[f"{name}.fp32_precision"] = owner.fp32_precision
    return flags


def _save() -> dict:
    """Every setting :func:`tf32_mode` changes; a legacy one torch refuses to read (after an
    inconsistent mix of legacy and new settings by the caller) is None and left alone."""
    new = {name: owner.fp32_precision for name, owner in _new_api_owners().items()}
    return {"float32_matmul_precision": _read(torch.get_float32_matmul_precision),
            "matmul": None if new else bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn": _read(lambda: bool(torch.backends.cudnn.allow_tf32)),
            "new": new}


def _set(state: dict, allow: bool) -> None:
    if state["float32_matmul_precision"] is not None or state["matmul"] is not None:
        torch.backends.cuda.matmul.allow_tf32 = allow
    if state["cudnn"] is not None:
        torch.backends.cudnn.allow_tf32 = allow
    for owner in _new_api_owners().values():
        owner.fp32_precision = "tf32" if allow else "ieee"


def _restore(state: dict) -> None:
    if state["float32_matmul_precision"] is not None:
        torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    if state["matmul"] is not None:
        torch.backends.cuda.matmul.allow_tf32 = state["matmul"]
    if state["cudnn"] is not None:
        torch.backends.cudnn.allow_tf32 = state["cudnn"]
    owners = _new_api_owners()
    for name, value in state["new"].items():
        owners[name].fp32_precision = value


@contextlib.contextmanager
def tf32_mode(allow: bool):
    """Run the block with TF32 allowed (``allow=True``) or not, for cuBLAS matmuls and cuDNN
    convolutions alike; every setting is restored on exit, also after an exception."""
    allow = bool(allow)
    state = _save()
    try:
        _set(state, allow)
        yield
    finally:
        _restore(state)
