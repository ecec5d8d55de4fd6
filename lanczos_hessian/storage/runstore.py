"""One spectrum file, several named runs: :class:`RunStore`.

A run is a group of the file named by a path (``eigs``, ``slq``, ``blocks/<name>/eigs``,
``step_<n>/eigs``): its settings as attributes, its step records (``<run>/steps``), its
results, and while it runs its resume state (``<run>/state``,
:class:`~lanczos_hessian.storage.checkpoint.RunCheckpoint`). Each run's state is its own:
when a run finishes, :meth:`RunStore.drop_state` removes that run's state and no other, so
a file can hold a finished run beside one still resumable (phases of one job, per-block
spectra, the checkpoints of a training run). HDF5 does not give back the space of deleted
objects, so when the store closes with no resume state left anywhere in the file, the file
is rewritten without the deleted space
(:func:`~lanczos_hessian.storage.hdf5.drop_resume_state`, one ``os.replace``).

The store takes plain data only (dicts of settings and attributes, arrays, rows): it never
sees an operator (:mod:`lanczos_hessian.contract` turns an operator into such data).
"""

from __future__ import annotations

import h5py

from .checkpoint import RunCheckpoint
from .settings import STATE
from .hdf5 import DEFAULT_RESERVE, SpectrumWriter, drop_resume_state
from .records import plain_settings, rewind_steps

__all__ = ["RunStore", "holds_state"]


def holds_state(node) -> bool:
    """Whether an open HDF5 group (or file) holds a run's resume state anywhere below it."""
    found = []

    def visit(name, item):
        if isinstance(item, h5py.Group) and name.rsplit("/", 1)[-1] == STATE:
            found.append(name)
            return True
        return None

    node.visititems(visit)
    return bool(found)


class RunStore:
    """A spectrum file open for writing, as a set of named runs (module docstring).

    Open one with :meth:`create` (a new file with the root provenance ``attrs``) or
    :meth:`reopen` (an existing file, to resume a run or add one); use it as a context
    manager. The writer's methods (``set_attrs``, ``declare_steps``, ``append_step``,
    ``write_arrays``, ``start_streaming``, ``finish``, ``file``, ``path``) are available
    as they are, so that the record functions of :mod:`~lanczos_hessian.storage.records`
    write through it.
    """

    def __init__(self, writer: SpectrumWriter):
        self.writer = writer
        self.dropped = False

    @classmethod
    def create(cls, path, attrs: dict, *, overwrite: bool = False,
               reserve: int = DEFAULT_RESERVE, space: int = 0) -> "RunStore":
        """A new file with the root provenance ``attrs`` (``space``: bytes the caller
        expects to write, checked free before the file is created)."""
        return cls(SpectrumWriter(path, attrs, overwrite=overwrite, reserve=reserve,
                                  space=space))

    @classmethod
    def reopen(cls, path, *, reserve: int = DEFAULT_RESERVE) -> "RunStore":
        return cls(SpectrumWriter(path, append=True, reserve=reserve))

    # ---- the writer's own methods -----------------------------------------------------------
    @property
    def file(self):
        return self.writer.file

    @property
    def path(self):
        return self.writer.path

    def __getattr__(self, name):
        if name in ("set_attrs", "declare_steps", "append_step", "write_arrays",
                    "start_streaming", "finish", "committed"):
            return getattr(self.writer, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- named runs -------------------------------------------------------------------------
    def has_run(self, name: str) -> bool:
        return name in self.file

    def is_complete(self, name: str) -> bool:
        """Whether run ``name`` wrote its results (``complete``)."""
        node = self.file.get(name)
        return node is not None and bool(node.attrs.get("complete", False))

    def attrs(self, name: str) -> dict:
        return dict(self.file[name].attrs)

    def declare(self, name: str, settings: dict, step_row: dict | None = None) -> None:
        """Run ``name``'s settings (``complete = False``) and its step records' layout."""
        self.writer.set_attrs(name, {**plain_settings(settings), "complete": False})
        if step_row is not None:
            self.writer.declare_steps(name, step_row)

    def checkpoint(self, name: str, rows: int, num_vectors: int, capacity: int,
                   num_bases: int = 1) -> RunCheckpoint:
        """Run ``name``'s resume state (declared by its :meth:`RunCheckpoint.declare`)."""
        return RunCheckpoint(self.writer, name, rows, num_vectors, capacity,
                             num_bases=num_bases)

    def rewind_steps(self, name: str, count: int) -> None:
        """Drop run ``name``'s records appended after its state ``count`` (a kill between)."""
        rewind_steps(self.writer, name, count)

    def drop_state(self, name: str) -> None:
        """Remove run ``name``'s resume state (its run finished); other runs keep theirs."""
        state = f"{name}/{STATE}"
        if state in self.file:
            del self.file[state]
            self.file.flush()
            self.dropped = True

    # ---- closing ----------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.writer.__exit__(exc_type, exc, tb)
        if exc is None:
            self._compact()

    def close(self) -> None:
        self.writer.close()
        self._compact()

    def _compact(self) -> None:
        """After states were dropped and none is left, rewrite the file without the space
        they held."""
        if not self.dropped:
            return
        self.dropped = False
        with h5py.File(self.writer.path, "r") as f:
            left = holds_state(f)
        if not left:
            drop_resume_state(self.writer.path)
