"""A Lanczos basis in an HDF5 dataset: streamed by rows, and mirrored for resume.

* :class:`HDF5Basis` holds one vector per dataset row, chunked along the parameter axis and
  streamed in blocks of it: memory stays ``O(block_rows * j)`` whatever ``j``;
* :class:`MirroredBasis` is an in-memory store whose every change is also written to an
  :class:`HDF5Basis`, so that a killed run can resume from its file.

Both implement :class:`~lanczos_hessian.linalg.basis.Basis`, so the solvers give the same
numbers wherever the basis lives.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..linalg.basis import Basis, TensorBasis, combine_rows, copy_vectors

LAYOUT = "vectors as rows"  # attribute of every basis dataset: one basis vector per row


class HDF5Basis(Basis):
    """A basis in an HDF5 dataset, streamed in blocks of the parameter axis; never
    overwrites live columns.

    The dataset is ``(physical, dim)`` float64 with ``physical = 2 * capacity`` slots (at
    most ``capacity`` live, the rest free), one basis vector per dataset row, chunked
    ``(1, block_rows)``. Each chunk is one contiguous piece of one vector, so appending a
    vector writes only its own chunks, and reading block ``[start, stop)`` of every live
    vector copies whole chunks into one preallocated ``(size, block_rows)`` buffer: no strided
    gather, no allocation per read (a ``(dim, physical)`` layout chunked ``(block_rows, 1)``
    would scatter every chunk into a strided buffer; docs/BENCHMARKS.md has the cost). Logical
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

    def blocks(self):
        """Ranges ``(start, stop)`` of ``block_rows`` parameters in which the store streams."""
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
        h = torch.zeros((self.size,) + tuple(w.shape[1:]), dtype=torch.float64,
                        device=self.device)
        for start, stop in self.blocks():
            h += self.read_block(start, stop) @ w[start:stop].to(self.device, torch.float64)
        return h.to(w.device)

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = w.clone()
        hd = h.to(self.device, torch.float64)
        for start, stop in self.blocks():
            out[start:stop] -= combine_rows(hd, self.read_block(start, stop)).to(w.device,
                                                                                 w.dtype)
        return out

    def subtract_project(self, w: torch.Tensor, h: torch.Tensor) -> tuple:
        """``(w - Q h, Q^T (w - Q h))`` in one sweep: both are separable by blocks of rows."""
        out = w.clone()
        h2 = torch.zeros((self.size,) + tuple(w.shape[1:]), dtype=torch.float64,
                         device=self.device)
        hd = h.to(self.device, torch.float64)
        for start, stop in self.blocks():
            Qt = self.read_block(start, stop)
            block = out[start:stop].to(self.device, torch.float64) - combine_rows(hd, Qt)
            h2 += Qt @ block
            out[start:stop] = block.to(w.device, w.dtype)
        return out, h2.to(w.device)

    def combine_blocks(self, S, block_rows: int | None = None):
        """Yield ``(start, stop, (Q S)[start:stop])`` float64 CPU row blocks."""
        S = torch.as_tensor(np.asarray(S), dtype=torch.float64, device=self.device)
        for start, stop in self.blocks():
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
                                   for start, stop in self.blocks()))

    def replace(self, count: int, blocks) -> None:
        """Make ``count`` new vectors the basis. ``blocks`` yields ``(start, stop, V)`` with
        ``V`` the ``(count, stop - start)`` entries ``start:stop`` of the new vectors, in
        :meth:`blocks` order; they are written to free slots before the map switches."""
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

    def state(self) -> dict:
        return {"size": self.size, "column_map": list(self.column_map)}

    def restore_state(self, state: dict) -> None:
        """Point the store at the committed columns (those written later are dropped)."""
        self.column_map = [int(c) for c in state["column_map"]]


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


class MirroredBasis(Basis):
    """An in-memory basis whose changes are also written to an :class:`HDF5Basis`.

    Reads come from memory; the HDF5 copy is what a resumed run reloads.
    """

    def __init__(self, primary: TensorBasis, mirror: HDF5Basis):
        self.primary, self.mirror = primary, mirror
        self.dim, self.capacity = primary.dim, primary.capacity

    @property
    def size(self) -> int:
        return self.primary.size

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
                                for start, stop in self.mirror.blocks()))

    def replace(self, count, blocks):
        self.primary.replace(count, blocks)
        rows = self.primary.rows
        self.mirror.replace(count, ((start, stop, rows[:count, start:stop])
                                    for start, stop in self.mirror.blocks()))

    def blocks(self):
        return self.mirror.blocks()

    def read_block(self, start, stop):
        return self.primary.read_block(start, stop)

    def state(self) -> dict:
        return self.mirror.state()

    def restore_state(self, state: dict) -> None:
        """Point the mirror at the committed columns and reload the memory copy from it."""
        self.mirror.restore_state(state)
        copy_vectors(self.mirror, self.primary)


def create_basis_dataset(group, name: str, dim: int, capacity: int, block_rows: int = 1 << 18):
    """An HDF5 dataset for :class:`HDF5Basis`: ``(2 * capacity, dim)`` float64, one vector
    per row, chunked ``(1, min(dim, block_rows))`` along the parameter axis."""
    ds = group.create_dataset(name, shape=(2 * capacity, dim), dtype="f8",
                              chunks=(1, min(dim, block_rows)))
    ds.attrs["layout"] = LAYOUT
    return ds


