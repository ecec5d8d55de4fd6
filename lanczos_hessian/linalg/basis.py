"""Storage of a Lanczos basis ``Q = [q_1 ... q_j]`` with the operations Lanczos needs.

Lanczos with full reorthogonalization touches the basis in a few ways only:

* ``append(q)``                        store the next vector;
* ``orthogonalize(w)`` -> ``(w - Q h, h)``  classical Gram-Schmidt twice, ``h = Q^T w``, made
  of ``project(w) = Q^T w``, ``subtract_project(w, h)`` (one sweep) and ``subtract(w, h)``;
* ``combine(S)`` -> ``Q S``             Ritz vectors (``combine_blocks`` streams them by rows);
* ``restart(S)``: ``Q <- Q S``          the thick restart, in place.

Three stores give the same numbers (float64 throughout):

* :class:`TensorBasis` on the operator's device (fastest) or in host memory;
* :class:`HDF5Basis`, an HDF5 dataset holding one vector per row, chunked along the
  parameter axis and streamed in blocks of it: memory stays ``O(block_rows * j)`` whatever
  ``j``;
* :class:`MirroredBasis`, an in-memory store whose every change is also written to an HDF5
  store, so that a killed run can resume from its file.

:func:`choose_basis` picks the store from a memory budget.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import torch

logger = logging.getLogger(__name__)

BYTES = 8  # float64
LAYOUT = "vectors as rows"  # attribute of every basis dataset: one basis vector per row


class TensorBasis:
    """Orthonormal columns ``Q = [q_0 ... q_{size-1}]`` held in a preallocated tensor.

    The storage is ``(capacity, dim)`` with every basis vector contiguous, so that ``Q^T w``
    and ``Q h`` over the filled part read one contiguous block: both are memory-bound
    matrix-vector products, and a ``(dim, capacity)`` layout would read each vector with a
    stride of ``capacity`` elements (measured 3-4x slower for a 1M-parameter basis of 80
    vectors on a CPU). :attr:`Q` is the ``(dim, capacity)`` view of the same memory.

    Parameters
    ----------
    dim : int
        Length of each vector.
    capacity : int
        Maximum number of columns.
    device : torch.device
        Where ``Q`` lives; vectors passed in may live elsewhere (they are moved).
    dtype : torch.dtype
        Storage precision of ``Q`` (float64 by default; the coefficients are float64).
    """

    def __init__(self, dim: int, capacity: int, device=None, dtype=torch.float64):
        self.dim, self.capacity = dim, capacity
        self.rows = torch.empty(capacity, dim, dtype=dtype, device=device)
        self.size = 0

    @property
    def Q(self) -> torch.Tensor:
        """The basis as a ``(dim, capacity)`` view (columns past ``size`` are undefined)."""
        return self.rows.T

    def _filled(self) -> torch.Tensor:
        """``Q^T`` over the filled columns: ``(size, dim)``, contiguous."""
        return self.rows[: self.size]

    def append(self, q: torch.Tensor) -> None:
        """Store ``q`` as column ``size``."""
        if self.size == self.capacity:
            raise RuntimeError(f"basis is full ({self.capacity} columns)")
        self.rows[self.size] = q.to(self.rows.device, self.rows.dtype)
        self.size += 1

    def column(self, j: int) -> torch.Tensor:
        return self.rows[j]

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """``Q^T w`` as a float64 vector of length ``size`` (on ``w``'s device)."""
        Qt = self._filled()
        return (Qt @ w.to(Qt.device, Qt.dtype)).to(w.device, torch.float64)

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``w - Q h`` (a new tensor on ``w``'s device and dtype)."""
        Qt = self._filled()
        return w - (h.to(Qt.device, Qt.dtype) @ Qt).to(w.device, w.dtype)

    def subtract_project(self, w: torch.Tensor, h: torch.Tensor) -> tuple:
        """``(w - Q h, Q^T (w - Q h))``: the middle of classical Gram-Schmidt twice."""
        w = self.subtract(w, h)
        return w, self.project(w)

    def orthogonalize(self, w: torch.Tensor) -> tuple:
        """Classical Gram-Schmidt twice: ``(w - Q h, h)`` with ``h = Q^T w`` accumulated."""
        h = self.project(w)
        w, h2 = self.subtract_project(w, h)
        return self.subtract(w, h2), h + h2

    def combine(self, S: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``Q S`` for ``S`` of shape ``(size, r)``: a ``(dim, r)`` float64 tensor."""
        Qt = self._filled()
        S = torch.as_tensor(S, dtype=Qt.dtype, device=Qt.device)
        return (Qt.T @ S).to(torch.float64)

    def combine_blocks(self, S, block_rows: int = 1 << 20):
        """Yield ``(start, stop, (Q S)[start:stop])`` row blocks (for writing to disk)."""
        Qt = self._filled()
        S = torch.as_tensor(S, dtype=Qt.dtype, device=Qt.device)
        for start in range(0, self.dim, block_rows):
            stop = min(start + block_rows, self.dim)
            yield start, stop, (Qt[:, start:stop].T @ S).cpu()

    def restart(self, S: np.ndarray) -> None:
        """``Q <- Q S`` (``S`` is ``(size, r)`` with orthonormal columns): the thick restart."""
        r = S.shape[1]
        self.rows[:r] = self.combine(S).T.to(self.rows.dtype)
        self.size = r

    def reset(self, columns: torch.Tensor) -> None:
        """Replace the basis by the orthonormal ``columns`` ``(dim, r)``."""
        r = columns.shape[1]
        self.rows[:r] = columns.T.to(self.rows.device, self.rows.dtype)
        self.size = r

    def load_from(self, store: "HDF5Basis") -> None:
        """Copy the live columns of an on-disk store into this one (resume)."""
        for start, stop in store._blocks():
            self.rows[: store.size, start:stop] = store.read_block(start, stop).to(
                self.rows.device, self.rows.dtype)
        self.size = store.size

    def state(self) -> dict:
        return {"size": self.size}

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()


class HDF5Basis:
    """A basis in an HDF5 dataset, streamed in blocks of the parameter axis; never
    overwrites live columns.

    The dataset is ``(physical, dim)`` float64 with ``physical = 2 * capacity`` slots (at
    most ``capacity`` live, the rest free), one basis vector per dataset row, chunked
    ``(1, block_rows)``. Each chunk is one contiguous piece of one vector, so appending a
    vector writes only its own chunks, and reading block ``[start, stop)`` of every live
    vector copies whole chunks into one preallocated ``(size, block_rows)`` buffer: no strided
    gather, no allocation per read (a ``(dim, physical)`` layout chunked ``(block_rows, 1)``
    scatters every chunk into a strided buffer: its I/O per step of ``scripts/bench_scale.py``
    was 8x longer, 22.3 s against 2.8 s at 30 steps of the 61.1M-parameter AlexNet). Logical
    column ``i`` is dataset row ``column_map[i]``. A thick restart writes ``Q S`` into free
    slots and only then switches the map, so the previously committed basis stays intact
    until the next commit (a killed restart loses nothing). Reorthogonalization fuses the
    four sweeps of classical Gram-Schmidt twice into three reads of the basis.

    Parameters
    ----------
    dataset : h5py.Dataset
        ``(2 * capacity, dim)`` float64, created by :func:`create_basis_dataset`.
    capacity : int
        Maximum number of live columns.
    device : torch.device
        Where the blocks are computed (the vectors' device).
    block_rows : int
        Parameters per streamed block (host memory ``block_rows * capacity * 8`` bytes).
    """

    def __init__(self, dataset, capacity: int, device=None, block_rows: int = 1 << 18,
                 column_map=None):
        if dataset.attrs.get("layout") != LAYOUT:
            raise ValueError(
                f"HDF5 basis {dataset.name!r} has shape {dataset.shape} without the layout "
                f"{LAYOUT!r}: it was written by an older version of lanczos_hessian; start "
                "the run afresh")
        self.ds = dataset
        self.dim = dataset.shape[1]
        self.capacity = capacity
        self.device = torch.device(device or "cpu")
        self.block_rows = min(block_rows, self.dim)
        self.column_map = list(column_map or [])
        self._buffer = np.empty(capacity * self.block_rows, dtype=np.float64)
        self.bytes_read = 0
        self.bytes_written = 0
        self.io_seconds = 0.0  # time spent reading and writing the dataset

    @property
    def size(self) -> int:
        return len(self.column_map)

    def _free_columns(self, count: int) -> list:
        used = set(self.column_map)
        free = [c for c in range(self.ds.shape[0]) if c not in used]
        if len(free) < count:
            raise RuntimeError(f"HDF5 basis has {len(free)} free columns, {count} needed")
        return free[:count]

    def _blocks(self):
        for start in range(0, self.dim, self.block_rows):
            yield start, min(start + self.block_rows, self.dim)

    def read_block(self, start: int, stop: int) -> torch.Tensor:
        """``Q^T[:, start:stop]``: entries ``start:stop`` of every live vector in logical
        order, a ``(size, stop - start)`` float64 tensor on :attr:`device`.

        On the CPU the tensor shares memory with a buffer that the next read overwrites.
        """
        n = stop - start
        out = self._buffer[: self.size * n].reshape(self.size, n)
        t0 = time.perf_counter()
        for logical, physical, length in _runs(self.column_map):
            self.ds.read_direct(out, np.s_[physical:physical + length, start:stop],
                                np.s_[logical:logical + length])
        self.io_seconds += time.perf_counter() - t0
        self.bytes_read += out.nbytes
        return torch.from_numpy(out).to(self.device)

    def append(self, q: torch.Tensor) -> None:
        if self.size == self.capacity:
            raise RuntimeError(f"basis is full ({self.capacity} columns)")
        column = self._free_columns(1)[0]
        values = np.ascontiguousarray(q.detach().to(torch.float64).cpu().numpy())
        t0 = time.perf_counter()
        self.ds.write_direct(values, np.s_[:], np.s_[column])
        self.io_seconds += time.perf_counter() - t0
        self.bytes_written += values.nbytes
        self.column_map.append(column)

    def project(self, w: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        for start, stop in self._blocks():
            h += self.read_block(start, stop) @ w[start:stop].to(self.device, torch.float64)
        return h.to(w.device)

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = w.clone()
        hd = h.to(self.device, torch.float64)
        for start, stop in self._blocks():
            out[start:stop] -= (hd @ self.read_block(start, stop)).to(w.device, w.dtype)
        return out

    def subtract_project(self, w: torch.Tensor, h: torch.Tensor) -> tuple:
        """``(w - Q h, Q^T (w - Q h))`` in one sweep: both are separable by blocks of rows."""
        out = w.clone()
        h2 = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        hd = h.to(self.device, torch.float64)
        for start, stop in self._blocks():
            Qt = self.read_block(start, stop)
            block = out[start:stop].to(self.device, torch.float64) - hd @ Qt
            h2 += Qt @ block
            out[start:stop] = block.to(w.device, w.dtype)
        return out, h2.to(w.device)

    def orthogonalize(self, w: torch.Tensor) -> tuple:
        """CGS twice in three sweeps of the basis: ``h1 = Q^T w``; then
        :meth:`subtract_project`; then ``w -= Q h2``."""
        h1 = self.project(w)
        out, h2 = self.subtract_project(w, h1)
        return self.subtract(out, h2), h1 + h2.to(h1.device)

    def gram(self) -> torch.Tensor:
        """``Q^T Q`` (``j x j``), streamed: how orthonormal the stored basis is."""
        G = torch.zeros(self.size, self.size, dtype=torch.float64, device=self.device)
        for start, stop in self._blocks():
            Qt = self.read_block(start, stop)
            G += Qt @ Qt.T
        return G

    def combine_blocks(self, S, block_rows: int | None = None):
        """Yield ``(start, stop, (Q S)[start:stop])`` float64 CPU row blocks."""
        S = torch.as_tensor(np.asarray(S), dtype=torch.float64, device=self.device)
        for start, stop in self._blocks():
            yield start, stop, (self.read_block(start, stop).T @ S).cpu()

    def combine(self, S) -> torch.Tensor:
        """``Q S`` assembled in memory (``dim x r``); use :meth:`combine_blocks` for big ``r``."""
        S = np.asarray(S)
        out = torch.empty(self.dim, S.shape[1], dtype=torch.float64)
        for start, stop, block in self.combine_blocks(S):
            out[start:stop] = block
        return out.to(self.device)

    def restart(self, S: np.ndarray) -> None:
        """``Q <- Q S`` streamed: the new columns go to free slots, then the map switches
        (the old columns stay readable until the caller commits)."""
        St = torch.as_tensor(np.asarray(S).T.copy(), dtype=torch.float64, device=self.device)
        self.replace(St.shape[0], ((start, stop, St @ self.read_block(start, stop))
                                   for start, stop in self._blocks()))

    def replace(self, count: int, blocks) -> None:
        """Make ``count`` new vectors the basis. ``blocks`` yields ``(start, stop, V)`` with
        ``V`` the ``(count, stop - start)`` entries ``start:stop`` of the new vectors, in
        :meth:`_blocks` order; they are written to free slots before the map switches."""
        targets = self._free_columns(count)
        for start, stop, block in blocks:
            values = np.ascontiguousarray(block.detach().to(torch.float64).cpu().numpy())
            t0 = time.perf_counter()
            for logical, physical, length in _runs(targets):
                self.ds.write_direct(values, np.s_[logical:logical + length],
                                     np.s_[physical:physical + length, start:stop])
            self.io_seconds += time.perf_counter() - t0
            self.bytes_written += values.nbytes
        self.column_map = targets

    def reset(self, columns: torch.Tensor) -> None:
        self.column_map = []
        for j in range(columns.shape[1]):
            self.append(columns[:, j])

    def state(self) -> dict:
        return {"size": self.size, "column_map": list(self.column_map)}


def _runs(columns) -> list:
    """``columns`` as maximal runs ``(logical start, physical start, length)`` of consecutive
    physical slots, so that each run is one HDF5 selection."""
    runs = []
    for logical, physical in enumerate(columns):
        if runs and runs[-1][1] + runs[-1][2] == physical:
            runs[-1][2] += 1
        else:
            runs.append([logical, physical, 1])
    return [tuple(run) for run in runs]


class MirroredBasis:
    """An in-memory basis whose changes are also written to an :class:`HDF5Basis`.

    Reads come from memory; the HDF5 copy is what a resumed run reloads.
    """

    def __init__(self, primary: TensorBasis, mirror: HDF5Basis):
        self.primary, self.mirror = primary, mirror
        self.dim, self.capacity = primary.dim, primary.capacity

    @property
    def size(self) -> int:
        return self.primary.size

    @property
    def column_map(self):
        return self.mirror.column_map

    def append(self, q):
        self.primary.append(q)
        self.mirror.append(q)

    def project(self, w):
        return self.primary.project(w)

    def subtract(self, w, h):
        return self.primary.subtract(w, h)

    def subtract_project(self, w, h):
        return self.primary.subtract_project(w, h)

    def orthogonalize(self, w):
        return self.primary.orthogonalize(w)

    def combine(self, S):
        return self.primary.combine(S)

    def combine_blocks(self, S, block_rows: int = 1 << 20):
        return self.primary.combine_blocks(S, block_rows)

    def restart(self, S):
        """Restart the primary, then copy its new columns to the mirror (bit-identical, so
        that a resume from the mirror continues with exactly the numbers in memory)."""
        self.primary.restart(S)
        r, rows = S.shape[1], self.primary.rows
        self.mirror.replace(r, ((start, stop, rows[:r, start:stop])
                                for start, stop in self.mirror._blocks()))

    def reset(self, columns):
        self.primary.reset(columns)
        self.mirror.reset(columns)

    def state(self) -> dict:
        return self.mirror.state()

    @classmethod
    def load(cls, mirror: HDF5Basis, device=None) -> "MirroredBasis":
        """Rebuild the in-memory copy from the HDF5 store (resume)."""
        primary = TensorBasis(mirror.dim, mirror.capacity, device=device)
        primary.load_from(mirror)
        return cls(primary, mirror)


def create_basis_dataset(group, name: str, dim: int, capacity: int, block_rows: int = 1 << 18):
    """An HDF5 dataset for :class:`HDF5Basis`: ``(2 * capacity, dim)`` float64, one vector
    per row, chunked ``(1, min(dim, block_rows))`` along the parameter axis."""
    ds = group.create_dataset(name, shape=(2 * capacity, dim), dtype="f8",
                              chunks=(1, min(dim, block_rows)))
    ds.attrs["layout"] = LAYOUT
    return ds


def parse_bytes(value) -> int:
    """``"6GiB"``, ``"500MB"``, ``"2e9"`` or an int -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B?)?\s*", str(value))
    if not match:
        raise ValueError(f"cannot read a memory size from {value!r} (e.g. '6GiB', '500MB')")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    scale = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10,
             "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30,
             "T": 2**40}[unit]
    return int(number * scale)


def working_bytes(dim: int) -> int:
    """Memory the Lanczos recurrence needs besides the basis: ``q``, ``w``, next ``q`` and a
    copy during orthogonalization, float64 (the operator's own buffers are not counted)."""
    return 4 * dim * BYTES


def choose_location(dim: int, capacity: int, budget=None, device=None,
                    host_budget=None) -> str:
    """``"device"``, ``"host"`` or ``"disk"`` for a basis of ``capacity`` float64 columns.

    ``budget`` is the memory (bytes, or a string like ``"6GiB"``) the solver may use on the
    operator's device for the basis and its working vectors; ``host_budget`` the same in
    host memory when the device is a GPU. The basis goes to the first place where it fits:
    the device, then (GPU only) host memory, then disk. No budget means the device.
    Raises ``MemoryError`` when the budget cannot even hold the working vectors.
    """
    need, work = dim * capacity * BYTES, working_bytes(dim)
    if budget is None:
        return "device"
    budget = parse_bytes(budget)
    if budget < work:
        raise MemoryError(
            f"memory budget {budget / 2**30:.2f} GiB is too small for the working vectors "
            f"of Lanczos ({work / 2**30:.2f} GiB: 4 vectors of {dim} float64 values)"
        )
    if budget >= work + need:
        return "device"
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu and host_budget is not None and parse_bytes(host_budget) >= need:
        return "host"
    return "disk"
