"""The operator contract: what the run layer and its files need of an operator, and no more.

The run (:mod:`lanczos_hessian.run`) and the storage (:mod:`lanczos_hessian.storage`) see an
operator only through this module. An operator offers:

* **products**: ``shape`` ``(n, n)`` and either ``apply(V)`` on ``(n, b)`` torch tensors with a
  ``device`` (torch-native, e.g. a
  :class:`~lanczos_hessian.curvature.operators.CurvatureOperator`) or scipy's
  ``matvec``/``matmat`` (any ``scipy.sparse.linalg.LinearOperator``);
* **identity** (optional): ``identity()`` returning a plain dict with two parts,
  ``"provenance"`` (what produced a file: operator kind, sizes, dtypes, strategy, sample
  count; written as the file's root attributes) and ``"fingerprints"`` (what must be the same
  for a run to be continued: e.g. a hash of the model's parameters). An operator without it
  offers what any ``LinearOperator`` has (:func:`identity_of`): its class, size and dtype;
* **partition** (optional): ``partition(world_size)`` returning the ``world_size + 1`` row
  offsets that split a vector across ranks when the Lanczos vectors are sharded; without
  it, an even split (:func:`partition_of`). An operator whose parameters are themselves
  sharded brings the split its products want;
* **data fingerprint** (optional): ``data_fingerprint`` (the first pass's fingerprint of the
  data, a float array, or None) and ``expect_data_fingerprint(values)`` (make the next pass
  compare its data with a resumed run's), so that a resume refuses other data.

>>> import numpy as np
>>> from scipy.sparse.linalg import aslinearoperator
>>> A = aslinearoperator(np.eye(4))
>>> identity_of(A)["provenance"]["num_params"]
4
>>> partition_of(A, 3)
[0, 1, 2, 4]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["SpectralOperator", "identity_of", "partition_of", "device_of",
           "data_fingerprint_of", "expect_data_fingerprint", "even_partition"]


@runtime_checkable
class SpectralOperator(Protocol):
    """A symmetric ``n x n`` operator as the run layer uses it (module docstring).

    ``shape`` and the products are required; :meth:`identity` and :meth:`partition` are the
    declared extras that :func:`identity_of` and :func:`partition_of` fall back from.
    """

    shape: tuple

    def matmat(self, X):  # scipy's products; or ``apply(V)`` on torch tensors
        ...

    def identity(self) -> dict:
        """``{"provenance": {...}, "fingerprints": {...}}`` of plain values."""
        ...

    def partition(self, world_size: int) -> list:
        """Row offsets ``[0, ..., n]`` (``world_size + 1`` of them) of each rank's rows."""
        ...


def identity_of(op) -> dict:
    """``op.identity()`` (checked to be plain), or what a plain operator offers: its class
    name as ``operator``, ``num_params`` and ``dtype``, with no fingerprints."""
    method = getattr(op, "identity", None)
    if callable(method):
        identity = method()
        if not (isinstance(identity, dict) and isinstance(identity.get("provenance"), dict)
                and isinstance(identity.get("fingerprints", {}), dict)):
            raise TypeError(f"{type(op).__name__}.identity() must return a dict with a "
                            f"'provenance' dict and a 'fingerprints' dict, got {identity!r}")
        return {"provenance": dict(identity["provenance"]),
                "fingerprints": dict(identity.get("fingerprints", {}))}
    dtype = getattr(op, "dtype", None)
    return {"provenance": {"operator": type(op).__name__, "num_params": int(op.shape[0]),
                           "dtype": str(np.dtype(dtype)) if dtype is not None else "float64"},
            "fingerprints": {}}


def even_partition(n: int, world_size: int) -> list:
    """``[n r / W for r in 0..W]``: rank ``r`` holds rows ``[n r / W, n (r + 1) / W)``."""
    return [n * r // world_size for r in range(world_size + 1)]


def partition_of(op, world_size: int) -> list:
    """The row offsets of ``op.partition(world_size)``, checked, or :func:`even_partition`."""
    n = int(op.shape[0])
    method = getattr(op, "partition", None)
    if not callable(method):
        return even_partition(n, world_size)
    offsets = [int(x) for x in method(world_size)]
    if (len(offsets) != world_size + 1 or offsets[0] != 0 or offsets[-1] != n
            or any(b < a for a, b in zip(offsets, offsets[1:]))):
        raise ValueError(f"{type(op).__name__}.partition({world_size}) must return "
                         f"{world_size + 1} non-decreasing row offsets from 0 to {n}, got "
                         f"{offsets}")
    return offsets


def device_of(op) -> torch.device:
    """Where the operator's products live: its torch ``device``, else the CPU."""
    device = getattr(op, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def data_fingerprint_of(op) -> np.ndarray:
    """The first pass's data fingerprint as a float64 array (empty when the operator has
    none, or before its first pass)."""
    values = getattr(op, "data_fingerprint", None)
    return np.asarray(values if values is not None and np.size(values) else [],
                      dtype=np.float64)


def expect_data_fingerprint(op, values) -> None:
    """Tell ``op`` the data fingerprint of the run being resumed (nothing for an operator
    without data checks)."""
    method = getattr(op, "expect_data_fingerprint", None)
    if callable(method):
        method(values)
