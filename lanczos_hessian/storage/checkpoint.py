"""Commit a solver's state after every operator application; resume it after a kill.

The state of a run lives in ``<group>/state`` of its spectrum file:

* ``basis``: the Lanczos basis (an :class:`~lanczos_hessian.basis.HDF5Basis` dataset),
  appended column by column, never overwritten while committed (see its docstring);
* ``vectors_0``/``vectors_1`` and ``blob_0``/``blob_1``: two slots, each holding the vectors
  the recurrence needs next and every small array and scalar (``T``, coefficients, counters,
  the random generator's state, the basis layout, the data fingerprint) as an ``.npz`` blob;
* ``commit``: ``[count, slot, finished]``, written last.

A commit writes the slot *not* named by ``commit``, flushes, then writes ``commit`` and
flushes again. Killed anywhere, the file names a complete slot: the last committed
application. The file is in SWMR mode while the run streams, so its structure stays
consistent on disk.

With Lanczos vectors sharded across ranks, each rank holds such a state for its rows (rank 0
in the run's file, the others in files of their own); the ranks resume from the last count
that all of them committed, which a rank one commit ahead still holds in its other slot.

Resuming checks that the run is the same: the settings, the model's parameters (a SHA-256 of
their float64 values) and, at the first pass after the resume, the data (its pass
fingerprint: sample count and sums); a mismatch is refused with a message naming it.
"""

from __future__ import annotations

import hashlib
import io as _io

import numpy as np
import torch

from ..linalg.basis import HDF5Basis, MirroredBasis, create_basis_dataset
from ..curvature.data import PassFingerprint
from ..errors import LanczosHessianError

STATE = "state"


class ResumeError(LanczosHessianError, ValueError):
    """A run cannot be resumed from this file (different run, or nothing committed)."""


def model_fingerprint(op) -> str:
    """SHA-256 (first 16 hex digits) of the selected parameters as float64 bytes."""
    flat = op.flat_parameters().cpu().numpy()
    return hashlib.sha256(flat.tobytes()).hexdigest()[:16]


def _pack(small: dict) -> np.ndarray:
    buffer = _io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in small.items()})
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _unpack(blob: np.ndarray) -> dict:
    with np.load(_io.BytesIO(blob.tobytes()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class RunCheckpoint:
    """Double-buffered committed state of one solver run (see the module docstring).

    Parameters
    ----------
    writer : SpectrumWriter
        The run's file (declaring phase when creating, any phase when loading).
    group : str
        The run's group (``"eigs"``, ``"slq"``).
    dim : int
        Vector length ``n``.
    num_vectors : int
        Vectors per slot (1 for Lanczos, ``2 P`` for ``P`` lockstep probes).
    capacity : int
        Basis columns (0: no basis).
    block_rows : int
        Chunk length along the parameter axis.
    """

    def __init__(self, writer, group: str, dim: int, num_vectors: int, capacity: int,
                 block_rows: int = 1 << 18):
        self.writer, self.group = writer, group
        self.dim, self.num_vectors, self.capacity = dim, num_vectors, capacity
        self.block_rows = min(block_rows, dim)
        self.path = f"{group}/{STATE}"

    # ---- creation ------------------------------------------------------------------
    def declare(self, settings: dict) -> None:
        """Create the state datasets and record the run's identity (before streaming)."""
        f = self.writer.file
        state = f.require_group(self.path)
        for slot in (0, 1):
            state.create_dataset(f"vectors_{slot}", shape=(self.num_vectors, self.dim),
                                 dtype="f8", chunks=(1, self.block_rows))
            state.create_dataset(f"blob_{slot}", shape=(0,), maxshape=(None,), dtype="u1",
                                 chunks=(1 << 16,))
        state.create_dataset("commit", data=np.zeros(3, dtype=np.int64))
        if self.capacity:
            create_basis_dataset(state, "basis", self.dim, self.capacity, self.block_rows)
        self.writer.set_attrs(self.path, {f"run_{k}": v for k, v in settings.items()})

    def basis(self, location: str, device, column_map=None):
        """The basis store backed by this file: on disk, or in memory mirrored to disk."""
        ds = self.writer.file[f"{self.path}/basis"]
        disk = HDF5Basis(ds, self.capacity, device=device, block_rows=self.block_rows,
                         column_map=column_map)
        if location == "disk":
            return disk
        if column_map:
            return MirroredBasis.load(disk, device=device)
        from ..linalg.basis import TensorBasis

        return MirroredBasis(TensorBasis(self.dim, self.capacity, device=device), disk)

    # ---- commit and load -----------------------------------------------------------------
    def _commit_record(self) -> np.ndarray:
        return self.writer.file[f"{self.path}/commit"][:]

    @property
    def count(self) -> int:
        """Number of committed states (0: nothing to resume)."""
        return int(self._commit_record()[0])

    def save(self, small: dict, vectors: list, finished: bool = False) -> int:
        """Write the free slot, flush, then the commit record; returns the new count."""
        f = self.writer.file
        count, slot, _ = self._commit_record()
        target = 1 - int(slot) if count else 0
        blob = _pack({**small, "commit_count": count + 1})
        ds = f[f"{self.path}/blob_{target}"]
        ds.resize((blob.size,))
        ds[:] = blob
        vec = f[f"{self.path}/vectors_{target}"]
        for i, v in enumerate(vectors):
            vec[i] = v.detach().to(torch.float64).cpu().numpy()
        f.flush()
        f[f"{self.path}/commit"][:] = np.array([count + 1, target, int(finished)])
        f.flush()
        return int(count) + 1

    def load(self, count: int | None = None) -> tuple:
        """``(count, small, vectors (num_vectors, n) array, finished)`` of the committed slot,
        or of the slot before it when ``count`` is one less than the committed count (the
        ranks of a sharded run agree on the last state that all of them committed)."""
        committed, slot, finished = (int(x) for x in self._commit_record())
        if committed == 0:
            raise ResumeError(f"{self.writer.path}: the {self.group} run committed no state yet")
        count = committed if count is None else count
        if count == committed - 1:
            slot, finished = 1 - slot, 0
        f = self.writer.file
        small = _unpack(f[f"{self.path}/blob_{slot}"][:])
        if count != committed and int(small.get("commit_count", -1)) != count:
            raise ResumeError(f"{self.writer.path}: state {count} of the {self.group} run is "
                              f"gone (the file has committed {committed})")
        vectors = f[f"{self.path}/vectors_{slot}"][:]
        return count, small, vectors, bool(finished)

    def rewind(self, count: int) -> None:
        """Make state ``count`` (the committed one, the one before it, or 0) the committed
        state, so that the next :meth:`save` overwrites the slot of the later one and the
        counts of a sharded run's ranks stay in step."""
        committed, slot, _ = (int(x) for x in self._commit_record())
        if count == committed:
            return
        if count == 0:
            record = [0, 0, 0]
        elif count == committed - 1:
            self.load(count)  # checks that the slot holds it
            record = [count, 1 - slot, 0]
        else:
            raise ResumeError(f"{self.writer.path}: cannot go back from state {committed} "
                              f"to {count}")
        self.writer.file[f"{self.path}/commit"][:] = np.array(record)
        self.writer.file.flush()

    def check_same_run(self, settings: dict) -> None:
        """Raise :class:`ResumeError` naming every setting that differs from the file's."""
        node = self.writer.file.get(self.path)
        if node is None:
            raise ResumeError(f"{self.writer.path} has no resumable {self.group} run")
        saved = {k[len("run_"):]: _plain(v) for k, v in node.attrs.items() if k.startswith("run_")}
        differences = [
            f"{key}: file has {saved.get(key)!r}, this run has {_plain(value)!r}"
            for key, value in settings.items() if _plain(value) != saved.get(key)
        ]
        if differences:
            raise ResumeError(f"{self.writer.path} is from a different run; refusing to resume ("
                              + "; ".join(differences) + ")")


def _plain(value):
    """Attribute values as comparable Python values (None, lists and numpy scalars)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None:
        return "None"
    return value


def expect_data_fingerprint(op, fingerprint) -> None:
    """Make ``op``'s next pass compare its data with the resumed run's first pass."""
    if fingerprint is None or not np.size(fingerprint) or not op.check_data:
        return
    values = [float(v) for v in np.asarray(fingerprint).reshape(-1)]
    op._reference_fingerprint = PassFingerprint(int(values[0]), *values[1:])


class LanczosCheckpointer:
    """The ``checkpoint`` hook of :func:`~lanczos_hessian.eigen.lanczos_eigsh` for one file."""

    def __init__(self, store: RunCheckpoint, op=None):
        self.store, self.op = store, op

    def restore(self, process) -> dict | None:
        """Load the committed state into ``process``; the driver's own state, or None."""
        if self.store.count == 0:
            return None
        _, small, vectors, finished = self.store.load()
        process.load_state_dict(small, {"next_q": torch.from_numpy(vectors[0])})
        if self.op is not None:
            expect_data_fingerprint(self.op, small.get("data_fingerprint"))
        return {"num_restarts": int(small["num_restarts"]), "finished": finished,
                "num_passes": int(small["num_passes"]), "num_vectors": int(small["num_vectors"]),
                "elapsed": float(small["elapsed"])}

    def commit(self, process, driver: dict, finished: bool) -> None:
        small, vectors = process.state_dict()
        small.update({k: v for k, v in driver.items()})
        small["column_map"] = np.asarray(process.basis.state().get("column_map", []), dtype=np.int64)
        fingerprint = None if self.op is None else self.op.data_fingerprint
        small["data_fingerprint"] = np.asarray(fingerprint if fingerprint else [], dtype=np.float64)
        self.store.save(small, [vectors["next_q"]], finished)

    def committed_column_map(self) -> list:
        if self.store.count == 0:
            return []
        _, small, _, _ = self.store.load()
        return [int(c) for c in small["column_map"]]


class ReplicaCheckpointer:
    """The resume of a rank that does not write: the committed state, read from the file.

    Under ``torch.distributed`` every rank runs the same Lanczos recurrence, so on resume
    every rank must restore the same committed state; the ranks that do not write read it
    (before the writing rank reopens the file) into a basis store of their own.
    """

    def __init__(self, small, vectors, finished, basis):
        self.small, self.vectors, self.finished, self.basis = small, vectors, finished, basis

    @classmethod
    def read(cls, path, group: str, basis) -> "ReplicaCheckpointer | None":
        """The committed state of ``group``, its basis columns copied into the empty store
        ``basis`` (this rank's own: in memory, or a scratch file), block by block; None when
        nothing was committed (the writing rank then starts afresh too)."""
        from .hdf5 import open_spectrum

        committed = _committed_slot(path, group)
        if committed is None:
            return None
        small, vectors, finished = committed
        columns = [int(c) for c in small["column_map"]]
        with open_spectrum(path) as f:
            disk = HDF5Basis(f[f"{group}/{STATE}/basis"], basis.capacity, column_map=columns)
            copy_columns(disk, basis)
        return cls(small, vectors, finished, basis)

    def restore(self, process) -> dict:
        process.load_state_dict(self.small, {"next_q": torch.from_numpy(self.vectors[0])})
        return {"num_restarts": int(self.small["num_restarts"]), "finished": self.finished,
                "num_passes": int(self.small["num_passes"]),
                "num_vectors": int(self.small["num_vectors"]),
                "elapsed": float(self.small["elapsed"])}

    def commit(self, process, driver, finished) -> None:
        """Nothing: the writing rank commits."""


class SLQCheckpointer:
    """The ``checkpoint`` hook of :func:`~lanczos_hessian.slq.slq` for one file.

    Slots hold the ``2 P`` vectors of the ``P`` lockstep recurrences (current and previous
    Lanczos vectors); each probe's basis is an append-only :class:`HDF5Basis` (or one mirrored
    in memory), truncated on resume to the committed number of columns.
    """

    def __init__(self, store: RunCheckpoint, op=None, bases=None):
        self.store, self.op, self.bases = store, op, bases or []

    def restore(self, lanczos) -> int | None:
        if self.store.count == 0:
            return None
        _, small, vectors, _ = self.store.load()
        lanczos.load_state_dict(small, *_lockstep_vectors(vectors))
        for basis, size in zip(lanczos.bases or [], small["basis_sizes"]):
            _restore_columns(basis, int(size))
        if self.op is not None:
            expect_data_fingerprint(self.op, small.get("data_fingerprint"))
        return int(small["step"])

    def commit(self, lanczos, step: int, finished: bool) -> None:
        small, (q, q_prev) = lanczos.state_dict()
        small["step"] = step
        small["basis_sizes"] = np.array([b.size for b in (lanczos.bases or [])], dtype=np.int64)
        fingerprint = None if self.op is None else self.op.data_fingerprint
        small["data_fingerprint"] = np.asarray(fingerprint if fingerprint else [], dtype=np.float64)
        self.store.save(small, list(q.T) + list(q_prev.T), finished)


class ReplicaSLQCheckpointer:
    """The SLQ resume of a rank that does not write (replicated runs under
    ``torch.distributed``): the committed state and every probe's committed basis columns,
    copied from the run's file into this rank's own stores before the writing rank reopens
    the file. :meth:`basis_factory` hands those stores to :func:`~lanczos_hessian.slq.slq`.
    """

    def __init__(self, small, vectors, bases):
        self.small, self.vectors, self.bases = small, vectors, bases

    @classmethod
    def read(cls, path, group: str, make_store) -> "ReplicaSLQCheckpointer | None":
        """``None`` when nothing was committed; ``make_store(p, dim, capacity)`` makes the
        store each probe's committed columns are copied into (block by block)."""
        from .hdf5 import open_spectrum

        committed = _committed_slot(path, group)
        if committed is None:
            return None
        small, vectors, _ = committed
        bases = []
        with open_spectrum(path) as f:
            for p, size in enumerate(int(s) for s in small["basis_sizes"]):
                ds = f[f"{group}/{STATE}/basis_{p}"]
                disk = HDF5Basis(ds, ds.shape[0] // 2, column_map=list(range(size)))
                store = make_store(p, disk.dim, disk.capacity)
                copy_columns(disk, store)
                bases.append(store)
        return cls(small, vectors, bases)

    def basis_factory(self, p, dim, capacity):
        return self.bases[p]

    def restore(self, lanczos) -> int:
        lanczos.load_state_dict(self.small, *_lockstep_vectors(self.vectors))
        return int(self.small["step"])

    def commit(self, lanczos, step: int, finished: bool) -> None:
        """Nothing: the writing rank commits."""


def _lockstep_vectors(vectors: np.ndarray) -> tuple:
    """The ``(n, P)`` current and previous Lanczos vectors of ``P`` lockstep probes from a
    slot's ``(2 P, n)`` rows."""
    P = vectors.shape[0] // 2
    return torch.from_numpy(vectors[:P].T.copy()), torch.from_numpy(vectors[P:].T.copy())


def _committed_slot(path, group: str):
    """``(small, vectors, finished)`` of ``group``'s committed slot, read from the file at
    ``path``; None when nothing was committed."""
    from .hdf5 import open_spectrum

    with open_spectrum(path) as f:
        state = f.get(f"{group}/{STATE}")
        if state is None or int(state["commit"][0]) == 0:
            return None
        _, slot, finished = (int(x) for x in state["commit"][:])
        return _unpack(state[f"blob_{slot}"][:]), state[f"vectors_{slot}"][:], bool(finished)


def copy_columns(source: HDF5Basis, target) -> None:
    """Make ``target`` (an empty in-memory or on-disk store) hold ``source``'s live columns,
    streamed block by block."""
    if isinstance(target, HDF5Basis):
        target.replace(source.size, ((start, stop, source.read_block(start, stop))
                                     for start, stop in source._blocks()))
    else:
        target.load_from(source)


def _restore_columns(basis, size: int) -> None:
    """Point an append-only store at its first ``size`` committed columns (and reload the
    in-memory copy of a mirrored one); columns written after the last commit are dropped."""
    basis = getattr(basis, "local_store", basis)  # this rank's rows of a sharded store
    if isinstance(basis, MirroredBasis):
        basis.mirror.column_map = list(range(size))
        basis.primary.load_from(basis.mirror)
    elif isinstance(basis, HDF5Basis):
        basis.column_map = list(range(size))
    else:
        raise ResumeError("resuming SLQ needs bases stored in the run's file")


def probe_basis_factory(writer, group: str, location: str, device,
                        block_rows: int = 1 << 18):
    """``basis_factory`` for :func:`~lanczos_hessian.slq.slq` whose bases live in the file.

    Probe ``p``'s basis is ``<group>/state/basis_<p>`` (created on first use while declaring;
    on resume, reloaded with its committed columns by :class:`SLQCheckpointer`).
    """
    state = writer.file.require_group(f"{group}/{STATE}")

    def make(p, dim, capacity):
        name = f"basis_{p}"
        if name not in state:
            create_basis_dataset(state, name, dim, capacity, min(block_rows, dim))
        disk = HDF5Basis(state[name], capacity, device=device, block_rows=min(block_rows, dim))
        if location == "disk":
            return disk  # SLQCheckpointer.restore() points it at the committed columns
        from ..linalg.basis import TensorBasis

        return MirroredBasis(TensorBasis(dim, capacity, device=device), disk)

    return make
