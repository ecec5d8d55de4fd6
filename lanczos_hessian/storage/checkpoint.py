"""Commit a solver's state after every operator application; resume it after a kill.

The state of a run lives in ``<group>/state`` of its spectrum file:

* ``basis_<i>``: the solver's Lanczos bases (:class:`~lanczos_hessian.storage.disk_basis.HDF5Basis`
  datasets: one for the eigensolver, one per probe for SLQ), appended vector by vector, never
  overwritten while committed (see its docstring);
* ``vectors_0``/``vectors_1`` and ``blob_0``/``blob_1``: two slots, each holding the vectors
  the recurrence needs next and every small array and scalar (``T``, coefficients, counters,
  the random generator's state, the bases' layouts, the data fingerprint) as an ``.npz`` blob;
* ``commit``: ``[count, slot, finished]``, written last.

A commit writes the slot *not* named by ``commit``, flushes, then writes ``commit`` and
flushes again. Killed anywhere, the file names a complete slot: the last committed
application. The file is in SWMR mode while the run streams, so its structure stays
consistent on disk.

One :class:`Checkpointer` serves both solvers through their state protocol
(:mod:`lanczos_hessian.linalg.lanczos`: ``state_dict``, ``load_state_dict``, ``bases``):
committing to the run's file, or, on a rank that does not write, restoring a state read from
that file beforehand (:func:`read_replica`).

With Lanczos vectors sharded across ranks, each rank holds such a state for its rows (rank 0
in the run's file, the others in files of their own); the ranks resume from the last count
that all of them committed, which a rank one commit ahead still holds in its other slot.

Resuming checks that the run is the same: the settings (the differentiation strategy among
them), the model's parameters (a SHA-256 of their float64 values) and, at the first pass after
the resume, the data (its pass fingerprint: sample count, sums and order-independent sums of
per-sample hashes, :class:`~lanczos_hessian.curvature.data.PassFingerprint`); a mismatch is
refused with a message naming it. A state that cannot be read (a damaged file) is a
:class:`~lanczos_hessian.errors.SpectrumFileError`, found before the file streams.
"""

from __future__ import annotations

import functools
import io as _io
import zipfile
from typing import NamedTuple

import h5py
import numpy as np
import torch

from ..errors import ResumeError, SpectrumFileError
from ..linalg.basis import TensorBasis, copy_vectors
from .disk_basis import HDF5Basis, MirroredBasis, create_basis_dataset
from .schema import annotate
from .settings import STATE, check_settings, saved_settings, state_dropped



_UNREADABLE = (OSError, KeyError, RuntimeError, TypeError, ValueError, IndexError, EOFError,
               zipfile.BadZipFile)


def _damaged(method):
    """Turn a failure to read a committed state (a damaged file) into a clear error."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ResumeError, SpectrumFileError):
            raise
        except _UNREADABLE as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise SpectrumFileError(f"{self.writer.path} is damaged: its {self.group} state "
                                    f"cannot be read ({type(exc).__name__}: {first})") from exc

    return guarded


def _pack(small: dict) -> np.ndarray:
    buffer = _io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in small.items()})
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _unpack(blob: np.ndarray) -> dict:
    with np.load(_io.BytesIO(blob.tobytes()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class Committed(NamedTuple):
    """One committed state: its count, the solver's small arrays, its vectors ``(m, n)``, and
    whether the run had finished."""

    count: int
    small: dict
    vectors: np.ndarray
    finished: bool


class RunCheckpoint:
    """Double-buffered committed state of one solver run (see the module docstring).

    Parameters
    ----------
    writer : SpectrumWriter
        The run's file (declaring phase when creating, any phase when loading).
    group : str
        The run's group (``"eigs"``, ``"slq"``).
    dim : int
        Vector length ``n`` (this rank's rows when the vectors are sharded).
    num_vectors : int
        Vectors per slot (1 for Lanczos, ``2 P`` for ``P`` lockstep probes).
    capacity : int
        Vectors per basis (0: no basis).
    num_bases : int
        Bases of the solver (1 for Lanczos, ``P`` for reorthogonalized SLQ).
    block_rows : int
        Chunk length along the parameter axis.
    """

    def __init__(self, writer, group: str, dim: int, num_vectors: int, capacity: int,
                 num_bases: int = 1, block_rows: int = 1 << 18):
        self.writer, self.group = writer, group
        self.dim, self.num_vectors, self.capacity = dim, num_vectors, capacity
        self.num_bases = num_bases if capacity else 0
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
        for i in range(self.num_bases):
            create_basis_dataset(state, f"basis_{i}", self.dim, self.capacity, self.block_rows)
        for node in (state, *state.values()):
            annotate(node)
        self.writer.set_attrs(self.path, {f"run_{k}": v for k, v in settings.items()})

    def basis_factory(self, location: str, device):
        """``make(i, dim, capacity)``: basis ``i`` of the run backed by this file, on disk
        (``location == "disk"``) or in memory mirrored to disk. A resumed run points it at
        its committed vectors when the :class:`Checkpointer` restores."""

        def make(i, dim=None, capacity=None):
            disk = HDF5Basis(self.writer.file[f"{self.path}/basis_{i}"], self.capacity,
                             device=device, block_rows=self.block_rows)
            if location == "disk":
                return disk
            return MirroredBasis(TensorBasis(self.dim, self.capacity, device=device), disk)

        return make

    # ---- commit and load -----------------------------------------------------------------
    @_damaged
    def _commit_record(self) -> np.ndarray:
        return self.writer.file[f"{self.path}/commit"][:]

    @property
    def count(self) -> int:
        """Number of committed states (0: nothing to resume)."""
        return int(self._commit_record()[0])

    @property
    def finished(self) -> bool:
        """Whether the committed state is the run's last (its solver had finished)."""
        return bool(self._commit_record()[2])

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

    @_damaged
    def load(self, count: int | None = None) -> Committed:
        """The committed state, or the one before it when ``count`` is one less than the
        committed count (the ranks of a sharded run agree on the last state that all of them
        committed)."""
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
        return Committed(count, small, f[f"{self.path}/vectors_{slot}"][:], bool(finished))

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

    @_damaged
    def check_same_run(self, settings: dict) -> None:
        """Raise :class:`ResumeError` naming every setting that differs from the file's, or
        when the file holds no state to continue (a finished run whose state was dropped is
        served from its results by :mod:`lanczos_hessian.run` before this is called)."""
        node = self.writer.file.get(self.path)
        group = self.writer.file.get(self.group)
        if node is None:
            if group is None or not state_dropped(group):
                raise ResumeError(f"{self.writer.path} has no resumable {self.group} run")
            check_settings(saved_settings(group), settings, self.writer.path, self.group,
                           dropped=True)
            raise ResumeError(f"the {self.group} run of {self.writer.path} is complete and its "
                              "resume state was dropped when it finished (the default; "
                              "--keep-state / keep_state=True keeps it): it cannot be "
                              "continued")
        check_settings(saved_settings(group), settings, self.writer.path, self.group)
        self._check_readable()

    def _check_readable(self) -> None:
        """Read the committed state and walk the chunk index of every state dataset once,
        before the file streams: in SWMR mode HDF5 retries a damaged read for minutes, here
        it fails at once (:func:`_damaged`)."""
        state = self.writer.file[self.path]
        for name, node in state.items():
            if node is None:
                raise KeyError(f"{self.path}/{name} cannot be opened")
            if isinstance(node, h5py.Dataset) and node.chunks is not None:
                node.id.get_num_chunks()  # walks the dataset's chunk index
        if self.count:
            self.load()


# ---- the bases' layouts in a blob ----------------------------------------------------------
def _layouts(bases) -> np.ndarray:
    """The live slots of every basis, ``(len(bases), max size)`` int64 padded with -1."""
    maps = [list(b.state().get("column_map", range(b.size))) for b in bases]
    table = np.full((len(maps), max((len(m) for m in maps), default=0)), -1, dtype=np.int64)
    for i, columns in enumerate(maps):
        table[i, :len(columns)] = columns
    return table


def _columns(row) -> list:
    return [int(c) for c in row if c >= 0]


class Checkpointer:
    """The ``checkpoint`` hook of both solvers: ``restore(solver)`` before the first step and
    ``commit(solver, progress, finished)`` after every step.

    With a ``store`` (the run's file) it commits every step and, on resume, restores the
    committed state with the bases pointed at their committed vectors. With a pre-read
    ``committed`` state and no store (a rank that does not write, :func:`read_replica`) it
    restores that state into bases that already hold copies of the vectors, and commits
    nothing. The data check is plain data in and out, never the operator: ``stamp()``, when
    given, returns the data fingerprint (a float array) saved with every commit, and
    ``on_restore(fingerprint)`` receives the resumed run's (to check the data against it).
    ``after_commit(finished)``, when given, is called after every commit (a safe point: the
    run may stop there, :mod:`lanczos_hessian.run.stopping`).
    """

    def __init__(self, store: RunCheckpoint | None = None, stamp=None,
                 committed: Committed | None = None, bases=None, on_restore=None,
                 after_commit=None):
        self.store, self.stamp, self.committed = store, stamp, committed
        self.on_restore, self.after_commit = on_restore, after_commit
        self.replica_bases = bases or []

    def basis_factory(self, i, dim=None, capacity=None):
        """A replica's copy of basis ``i`` (see :func:`read_replica`)."""
        return self.replica_bases[i]

    def restore(self, solver) -> dict | None:
        """Load the committed state into ``solver``; its ``small`` arrays (with the driver's
        own progress and ``finished``), or None when nothing was committed."""
        state = self.committed
        if state is None and self.store is not None and self.store.count:
            state = self.store.load()
        if state is None:
            return None
        solver.load_state_dict({**state.small, "finished": state.finished}, state.vectors)
        if self.store is not None:
            for basis, row in zip(solver.bases(), state.small["basis_layouts"]):
                columns = _columns(row)
                basis.restore_state({"size": len(columns), "column_map": columns})
        if self.on_restore is not None:
            self.on_restore(state.small.get("data_fingerprint"))
        return {**state.small, "finished": state.finished}

    def commit(self, solver, progress: dict, finished: bool) -> None:
        """Save the solver's state with the driver's ``progress`` (nothing on a replica)."""
        if self.store is None:
            return
        small, vectors = solver.state_dict()
        small.update(progress)
        small["basis_layouts"] = _layouts(solver.bases())
        fingerprint = None if self.stamp is None else self.stamp()
        small["data_fingerprint"] = np.asarray(fingerprint if fingerprint is not None
                                               and np.size(fingerprint) else [],
                                               dtype=np.float64)
        self.store.save(small, vectors, finished)
        if self.after_commit is not None:
            self.after_commit(finished)


def committed_state(path, group: str) -> Committed | None:
    """``group``'s committed state read from the file at ``path``; None when nothing was
    committed."""
    from .hdf5 import open_spectrum

    with open_spectrum(path) as f:
        state = f.get(f"{group}/{STATE}")
        if state is None or int(state["commit"][0]) == 0:
            return None
        count, slot, finished = (int(x) for x in state["commit"][:])
        return Committed(count, _unpack(state[f"blob_{slot}"][:]), state[f"vectors_{slot}"][:],
                         bool(finished))


def read_replica(path, group: str, make_store) -> Checkpointer | None:
    """The resume of a rank that does not write: ``group``'s committed state and a copy of
    every basis's committed vectors, read from the run's file into stores of this rank's own
    (``make_store(i, dim, capacity)``: in memory, or a scratch file), block by block.

    Under ``torch.distributed`` every rank runs the same recurrence, so on resume every rank
    must restore the same committed state; the ranks that do not write read it before the
    writing rank reopens the file. None when nothing was committed (the writing rank then
    starts afresh too).
    """
    from .hdf5 import open_spectrum

    committed = committed_state(path, group)
    if committed is None:
        return None
    bases = []
    with open_spectrum(path) as f:
        for i, row in enumerate(committed.small["basis_layouts"]):
            ds = f[f"{group}/{STATE}/basis_{i}"]
            disk = HDF5Basis(ds, ds.shape[0] // 2, column_map=_columns(row))
            store = make_store(i, disk.dim, disk.capacity)
            copy_vectors(disk, store)
            bases.append(store)
    return Checkpointer(committed=committed, bases=bases)
