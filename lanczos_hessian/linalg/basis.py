"""Storage of a Lanczos basis ``Q = [q_1 ... q_j]`` with the operations Lanczos needs.

Lanczos with full reorthogonalization touches the basis in a few ways only, the
:class:`Basis` protocol:

* ``append(q)``                        store the next vector;
* ``orthogonalize(w)`` -> ``(w - Q h, h)``  classical Gram-Schmidt twice, ``h = Q^T w``, written
  once here from three sweeps: ``project(w) = Q^T w``, ``subtract_project(w, h)`` (one sweep
  giving ``w - Q h`` and ``Q^T (w - Q h)``) and ``subtract(w, h)``;
* ``combine(S)`` -> ``Q S``             Ritz vectors (``combine_blocks`` streams them by rows);
* ``restart(S)``: ``Q <- Q S``          the thick restart; ``replace`` installs given vectors;
* ``blocks()`` and ``read_block``       the live vectors by ranges of rows (copies, resume);
* ``state()`` / ``restore_state``       the layout a checkpoint records and restores.

The stores give the same numbers (float64 throughout):

* :class:`TensorBasis` on the operator's device (fastest) or in host memory;
* :class:`ShardedBasis`, this process's rows of a basis split across processes, its inner
  products summed over them (:mod:`lanczos_hessian.linalg.partition`);
* :class:`~lanczos_hessian.storage.disk_basis.HDF5Basis` (a basis on disk, streamed by rows)
  and :class:`~lanczos_hessian.storage.disk_basis.MirroredBasis` (in memory, every change
  also written to disk for resume) in the storage layer.

:func:`choose_location` decides where a basis goes from a memory budget.
"""

from __future__ import annotations

import re

import numpy as np
import torch

BYTES = 8  # float64


class Basis:
    """The protocol of a basis store; classical Gram-Schmidt twice is written here once.

    A store implements ``size``, ``capacity``, ``dim``, :meth:`append`, :meth:`project`,
    :meth:`subtract`, :meth:`combine`, :meth:`combine_blocks`, :meth:`restart`,
    :meth:`replace`, :meth:`blocks`, :meth:`read_block`; it may fuse
    :meth:`subtract_project` into one sweep and extend :meth:`state`.
    """

    size: int
    capacity: int
    dim: int

    def subtract_project(self, w: torch.Tensor, h: torch.Tensor) -> tuple:
        """``(w - Q h, Q^T (w - Q h))``: the middle of classical Gram-Schmidt twice."""
        w = self.subtract(w, h)
        return w, self.project(w)

    def orthogonalize(self, w: torch.Tensor) -> tuple:
        """Classical Gram-Schmidt twice: ``(w - Q h, h)`` with ``h = Q^T w`` accumulated.

        Three sweeps of the basis: ``h1 = Q^T w``; ``w' = w - Q h1`` with ``h2 = Q^T w'``;
        ``w'' = w' - Q h2``. Twice is enough to keep ``||Q^T Q - I||`` at the level of machine
        epsilon (Giraud, Langou, Rozloznik and van den Eshof, Numer. Math. 101, 2005).
        """
        h1 = self.project(w)
        w, h2 = self.subtract_project(w, h1)
        return self.subtract(w, h2), h1 + h2.to(h1.device)

    def state(self) -> dict:
        """What a checkpoint records of the layout (the vectors themselves are stored apart)."""
        return {"size": self.size}

    def restore_state(self, state: dict) -> None:
        """Point the store at the committed vectors ``state`` describes (see :meth:`state`)."""
        if int(state["size"]) != self.size:
            raise ValueError(f"{type(self).__name__} holds {self.size} vectors, the committed "
                             f"state {int(state['size'])}: its vectors cannot be restored here")

    def blocks(self):
        """Ranges ``(start, stop)`` of rows in which the store streams (one for memory)."""
        yield 0, self.dim

    def gram(self) -> torch.Tensor:
        """``Q^T Q`` (``j x j`` float64), accumulated over the store's blocks of rows."""
        G = None
        for start, stop in self.blocks():
            Qt = self.read_block(start, stop).to(torch.float64)
            G = Qt @ Qt.T if G is None else G + Qt @ Qt.T
        return G if G is not None else torch.zeros(0, 0, dtype=torch.float64)

    def orthogonality(self) -> float:
        """``max |Q^T Q - I|``: how far the stored basis is from orthonormal (the loss of
        orthogonality that full reorthogonalization keeps at the level of machine epsilon)."""
        if self.size == 0:
            return 0.0
        G = self.gram()
        return float((G - torch.eye(self.size, dtype=G.dtype, device=G.device)).abs().max())


class TensorBasis(Basis):
    """Orthonormal columns ``Q = [q_0 ... q_{size-1}]`` held in a preallocated tensor.

    The storage is ``(capacity, dim)`` with every basis vector contiguous, so that ``Q^T w``
    and ``Q h`` over the filled part read one contiguous block: both are memory-bound
    matrix-vector products, and a ``(dim, capacity)`` layout would read each vector with a
    stride of ``capacity`` elements (several times slower on a CPU; docs/BENCHMARKS.md).
    :attr:`Q` is the ``(dim, capacity)`` view of the same memory.

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

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """``Q^T w`` as a float64 vector of length ``size`` (on ``w``'s device)."""
        Qt = self._filled()
        return (Qt @ w.to(Qt.device, Qt.dtype)).to(w.device, torch.float64)

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``w - Q h`` (a new tensor on ``w``'s device and dtype; ``w`` a vector or a block)."""
        Qt = self._filled()
        return w - combine_rows(h.to(Qt.device, Qt.dtype), Qt).to(w.device, w.dtype)

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

    def replace(self, count: int, blocks) -> None:
        """Make ``count`` given vectors the basis; ``blocks`` yields ``(start, stop, V)`` with
        ``V`` the ``(count, stop - start)`` entries ``start:stop`` of the new vectors."""
        for start, stop, block in blocks:
            self.rows[:count, start:stop] = block.to(self.rows.device, self.rows.dtype)
        self.size = count

    def read_block(self, start: int, stop: int) -> torch.Tensor:
        """Entries ``start:stop`` of every live vector, ``(size, stop - start)``."""
        return self._filled()[:, start:stop]

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()


class ShardedBasis(Basis):
    """This process's rows of a basis split across processes; the coefficients ``Q^T w`` are
    local partial sums completed by one sum over processes (``j`` numbers) each."""

    def __init__(self, local: Basis, partition):
        self.local_store, self.partition = local, partition
        self.capacity, self.dim = local.capacity, local.dim

    @property
    def size(self) -> int:
        return self.local_store.size

    def append(self, q):
        self.local_store.append(q)

    def project(self, w):
        return self.partition.sum(self.local_store.project(w)).to(w.device)

    def subtract(self, w, h):
        return self.local_store.subtract(w, h)

    def subtract_project(self, w, h):
        w, h2_local = self.local_store.subtract_project(w, h)
        return w, self.partition.sum(h2_local).to(w.device)

    def combine(self, S):
        return self.local_store.combine(S)

    def combine_blocks(self, S, block_rows: int = 1 << 20):
        return self.local_store.combine_blocks(S, block_rows)

    def restart(self, S):
        self.local_store.restart(S)

    def replace(self, count, blocks):
        self.local_store.replace(count, blocks)

    def blocks(self):
        return self.local_store.blocks()

    def read_block(self, start, stop):
        return self.local_store.read_block(start, stop)

    def gram(self):
        return self.partition.sum(self.local_store.gram())

    def state(self) -> dict:
        return self.local_store.state()

    def restore_state(self, state: dict) -> None:
        self.local_store.restore_state(state)


def combine_rows(h: torch.Tensor, Qt: torch.Tensor) -> torch.Tensor:
    """``Q h`` from the rows ``Qt = Q^T`` (``(size, rows)``): a vector for a vector ``h``
    (``(size,)``), a ``(rows, b)`` block for a block of coefficients ``(size, b)``."""
    return h @ Qt if h.ndim == 1 else (h.T @ Qt).T


def shard_basis(store: Basis, partition) -> Basis:
    """``store`` itself for whole vectors, else wrapped so its inner products sum over ranks."""
    return ShardedBasis(store, partition) if partition.is_split else store


def copy_vectors(source: Basis, target: Basis) -> None:
    """Make ``target`` hold ``source``'s live vectors, streamed in ``source``'s row blocks."""
    target.replace(source.size, ((start, stop, source.read_block(start, stop))
                                 for start, stop in source.blocks()))


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
