"""Reduced-precision float32 in curvature products: off unless the caller asks for it.

Two process-wide settings let float32 products run in fewer bits than float32's 23 of
mantissa, silently:

* on NVIDIA GPUs from Ampere on, cuBLAS matmuls and cuDNN convolutions may run in
  TensorFloat-32 (10 bits of mantissa). torch's defaults allow it for cuDNN convolutions
  (``torch.backends.cudnn.allow_tf32 = True``) and not for cuBLAS matmuls;
* on CPUs with bfloat16 matrix units (Intel AMX), oneDNN runs float32 matmuls in bfloat16
  (7 bits) once ``torch.set_float32_matmul_precision("medium")`` is called, as training
  scripts often do for speed, or ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``
  (torch >= 2.9). Measured on this project's CPU (torch 2.13): a 512 x 512 float32 matmul
  off by 0.27 in entries of size about 20 under "medium", against 5e-5 in IEEE float32.

A third is ``torch.autocast`` around the call (mixed-precision training code measuring the
curvature inside its autocast region): a float32 model's products in bfloat16 or float16,
0.5% off in a small MLP's Hessian-vector product on the CPU.

For curvature each is a silent loss of three decimal digits or more in every product,
far above what Lanczos resolves and invisible in a loss curve (``scripts/device_check.py``
measures TF32 on a GPU; ``tests/curvature/test_precision.py`` the bfloat16 case on the CPU).

The policy of the operators (:class:`~lanczos_hessian.curvature.operators.CurvatureOperator`):
every pass over the data runs inside :func:`tf32_mode` with ``allow_tf32=False`` (the
default), so that float32 products are IEEE float32 whatever the process-wide settings and
the caller's autocast are;
``allow_tf32=True`` opts in to TF32 (faster convolutions and matmuls, TF32's rounding; never
bfloat16). The settings set are those the operator's device reads: cuBLAS and cuDNN for
CUDA, oneDNN for the CPU (each has no effect on the other's kernels), all of them for any
other device. The process-wide settings are restored after each pass, so the caller's
training code keeps its own. The setting is recorded in a run file's provenance
(``allow_tf32``). For float64 or bfloat16 models the settings change nothing.

torch 2.9 added per-backend ``fp32_precision`` settings beside the legacy ``allow_tf32``
flags and ``torch.set_float32_matmul_precision``, and refuses to read a legacy flag after the
two were set inconsistently. For CUDA both are set consistently (the legacy setters, then
the per-operation settings explicitly, so that a process-wide
``torch.backends.fp32_precision = "tf32"`` cannot leak in through inheritance); for the CPU
the per-operation oneDNN settings (before torch 2.9, where
``torch.set_float32_matmul_precision`` decides oneDNN's precision too, that legacy setting);
on exit every setting is put back as it was, legacy ones first.
Two environment variables act below these flags and are not overridden here:
``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` forces TF32 in cuBLAS, ``NVIDIA_TF32_OVERRIDE=0``
disables it in every NVIDIA library (``scripts/device_check.py`` records both).
"""

from __future__ import annotations

import contextlib
import functools

import torch

#: The per-operation settings of torch >= 2.9, as (module path, attribute owner, the device
#: type whose kernels read it).
_NEW_API = (("cuda.matmul", lambda: torch.backends.cuda.matmul, "cuda"),
            ("cudnn.conv", lambda: getattr(torch.backends.cudnn, "conv", None), "cuda"),
            ("cudnn.rnn", lambda: getattr(torch.backends.cudnn, "rnn", None), "cuda"),
            ("mkldnn.matmul", lambda: getattr(torch.backends.mkldnn, "matmul", None), "cpu"),
            ("mkldnn.conv", lambda: getattr(torch.backends.mkldnn, "conv", None), "cpu"),
            ("mkldnn.rnn", lambda: getattr(torch.backends.mkldnn, "rnn", None), "cpu"))

#: The device types with settings of their own; any other device gets every setting.
_DEVICE_TYPES = ("cuda", "cpu")

_OWNERS: dict = {}  # the per-operation settings' owners by device type, found once


class _Setting:
    """One per-operation ``fp32_precision`` setting, read and written through the C functions
    that torch's ``_FP32Precision`` owner calls from its ``__getattr__`` and ``__setattr__``
    (a failed attribute lookup and two Python frames fewer per access, four accesses a pass),
    or through the owner's attribute where this torch has no such functions."""

    __slots__ = ("get", "put")

    def __init__(self, owner):
        getter = getattr(torch._C, "_get_fp32_precision_getter", None)
        setter = getattr(torch._C, "_set_fp32_precision_setter", None)
        place = (getattr(owner, "backend", None), getattr(owner, "op", None))
        if getter is not None and setter is not None and None not in place:
            self.get = functools.partial(getter, *place)
            self.put = functools.partial(setter, *place)
        else:
            self.get = lambda: owner.fp32_precision
            self.put = lambda value: setattr(owner, "fp32_precision", value)


def _new_api_owners(device_type: str | None = None) -> dict:
    """``{name: _Setting}`` where this torch has the per-operation API, for
    the kernels of ``device_type`` (None: every device); looked up on the first call, since
    torch's backend modules do not change in a process."""
    if device_type not in _OWNERS:
        _OWNERS[device_type] = _find_owners(device_type)
    return _OWNERS[device_type]


def _find_owners(device_type: str | None) -> dict:
    owners = {}
    for name, get, reader in _NEW_API:
        if device_type is not None and reader != device_type:
            continue
        try:
            owner = get()
        except AttributeError:
            owner = None
        if owner is not None and hasattr(owner, "fp32_precision"):
            owners[name] = _Setting(owner)
    return owners


def _device_type(device) -> str | None:
    """``"cuda"`` or ``"cpu"`` for a device with settings of its own, else None (all)."""
    if device is None:
        return None
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return kind if kind in _DEVICE_TYPES else None


def _read(getter):
    """A flag's value, or None where torch refuses to read it (mixed legacy/new settings)."""
    try:
        return getter()
    except RuntimeError:
        return None


def tf32_flags() -> dict:
    """The reduced-precision settings in force: ``{"matmul": bool, "cudnn": bool}`` (cuBLAS's
    and cuDNN's TF32; None where torch cannot say, after an inconsistent mix of its legacy
    and new settings), plus the per-operation ``fp32_precision`` strings on torch >= 2.9
    (``cuda.*``, ``cudnn.*`` and the CPU's ``mkldnn.*``)."""
    flags = {"matmul": _read(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
             "cudnn": _read(lambda: bool(torch.backends.cudnn.allow_tf32))}
    for name, owner in _new_api_owners().items():
        flags[f"{name}.fp32_precision"] = owner.get()
    return flags


def device_flags(device, flags: dict | None = None) -> dict:
    """The entries of :func:`tf32_flags` (or of ``flags``, a reading of it) that the kernels
    of ``device`` read: those :func:`tf32_mode` sets for it (all of them for a device
    without settings of its own)."""
    kind = _device_type(device)
    flags = tf32_flags() if flags is None else flags
    if kind is None:
        return dict(flags)
    read = {f"{name}.fp32_precision" for name in _new_api_owners(kind)}
    read |= {"matmul", "cudnn"} if kind == "cuda" else set()
    read |= {"matmul"} if _reads_legacy_matmul(kind) else set()
    return {k: v for k, v in flags.items() if k in read}


def _reads_legacy_matmul(device_type: str | None) -> bool:
    """Whether the legacy matmul setting (``torch.set_float32_matmul_precision``, cuBLAS's
    ``allow_tf32``) rules ``device_type``'s kernels: cuBLAS's always, oneDNN's on the CPU
    where this torch has no per-operation oneDNN settings (before 2.9)."""
    return device_type != "cpu" or not _new_api_owners("cpu")


def policy_holds(flags: dict, allow: bool) -> bool:
    """Whether every setting in ``flags`` (a reading of :func:`tf32_flags`, or its
    :func:`device_flags`) is what :func:`tf32_mode` sets for ``allow``."""
    word = "tf32" if allow else "ieee"
    return all(value == (word if key.endswith("fp32_precision") else bool(allow))
               for key, value in flags.items())


def _save(device_type: str | None = None) -> dict:
    """Every setting :func:`tf32_mode` changes for the kernels of ``device_type`` (None:
    every device); a legacy one torch refuses to read (after an inconsistent mix of legacy
    and new settings by the caller), or one the device does not read, is None and left
    alone. The legacy matmul setting is read by cuBLAS, and by oneDNN on the CPU where
    torch has no per-operation settings (before 2.9)."""
    new = {name: owner.get() for name, owner in _new_api_owners(device_type).items()}
    cuda = device_type != "cpu"
    legacy_matmul = _reads_legacy_matmul(device_type)
    return {"float32_matmul_precision": (_read(torch.get_float32_matmul_precision)
                                         if legacy_matmul else None),
            "matmul": (None if new or not legacy_matmul
                       else bool(torch.backends.cuda.matmul.allow_tf32)),
            "cudnn": _read(lambda: bool(torch.backends.cudnn.allow_tf32)) if cuda else None,
            "new": new}


def _set(state: dict, allow: bool) -> None:
    if state["float32_matmul_precision"] is not None or state["matmul"] is not None:
        torch.backends.cuda.matmul.allow_tf32 = allow
    if state["cudnn"] is not None:
        torch.backends.cudnn.allow_tf32 = allow
    owners, word = _new_api_owners(), "tf32" if allow else "ieee"
    for name in state["new"]:
        owners[name].put(word)


def _restore(state: dict) -> None:
    if state["float32_matmul_precision"] is not None:
        torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    if state["matmul"] is not None:
        torch.backends.cuda.matmul.allow_tf32 = state["matmul"]
    if state["cudnn"] is not None:
        torch.backends.cudnn.allow_tf32 = state["cudnn"]
    owners = _new_api_owners()
    for name, value in state["new"].items():
        owners[name].put(value)


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (``"cpu"`` or ``"cuda"``) here."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one query per device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def _no_autocast(device_type: str | None):
    """A context with ``torch.autocast`` off for the device types where the caller has it on
    (``device_type``, or the CPU and CUDA for None); nothing to enter where it is off."""
    on = [kind for kind in ((device_type,) if device_type else _DEVICE_TYPES)
          if autocast_enabled(kind)]
    if not on:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for kind in on:
        stack.enter_context(torch.autocast(kind, enabled=False))
    return stack


@contextlib.contextmanager
def tf32_mode(allow: bool, device=None):
    """Run the block with float32 products in TF32 allowed (``allow=True``) or in IEEE float32
    (never bfloat16), for the matmuls and convolutions of ``device``'s kernels (cuBLAS and
    cuDNN on CUDA, oneDNN on the CPU; None or another device: all of them), and with a
    caller's ``torch.autocast`` off (under it, a float32 model's products would be computed
    in bfloat16 or float16); every setting is restored on exit, also after an exception."""
    allow = bool(allow)
    kind = _device_type(device)
    state = _save(kind)
    try:
        _set(state, allow)
        with _no_autocast(kind):
            yield
    finally:
        _restore(state)
