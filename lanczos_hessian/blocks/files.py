"""Blockwise spectra in a spectrum file: one group per block, each written when it finishes.

Layout (a :class:`~lanczos_hessian.storage.runstore.RunStore` file; the root attributes are
the operator's provenance, token counts of a language-model objective included)::

    blocks/<name>            attrs: dim, the run's settings; dataset indices (flat coordinates)
    blocks/<name>/eigs       the block's top-k, as a run's ``eigs`` group (complete)
    blocks/<name>/slq        the block's SLQ quadrature, as a run's ``slq`` group (complete)

A block's groups are written as soon as its solvers finish, so a run killed part-way keeps
every block already done; ``resume=True`` reads those back and computes only the others (in
lockstep again), after checking that the settings and the block's coordinates are the same.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import ResumeError
from ..parallel.distributed import current_world
from ..run.plan import provenance
from ..storage.reader import decode_attrs
from ..storage.records import read_eigs_result, read_slq_result, write_eigs, write_slq
from ..storage.runstore import RunStore


def stored_blocks(path) -> list:
    """``(name, dim, seed, {"eigs": .., "density": ..})`` of every block a file holds (its
    complete results only)."""
    import h5py

    found = []
    with h5py.File(os.fspath(path), "r") as f:
        for name, group in f.get("blocks", {}).items():
            attrs = decode_attrs(group.attrs)
            results = {}
            for kind, sub, read in (("eigs", "eigs", read_eigs_result),
                                    ("density", "slq", read_slq_result)):
                node = group.get(sub)
                if node is not None and node.attrs.get("complete", False):
                    results[kind] = read(node)
            found.append((name, int(attrs["dim"]), int(attrs.get("seed", 0)), results))
    return found


def group_of(name: str) -> str:
    return f"blocks/{name}"


class BlockFile:
    """Where a blockwise run writes: rank 0 writes, every rank reads back finished blocks."""

    def __init__(self, path, op, settings: dict, *, resume: bool, overwrite: bool):
        self.path, self.settings = os.fspath(path), dict(settings)
        self.main = current_world().is_main
        self.lock = threading.Lock()
        self.resume = resume and os.path.exists(self.path)
        if self.main and not self.resume:
            RunStore.create(self.path, provenance(op, settings.get("seed")),
                            overwrite=overwrite).close()

    def finished(self, block, wants: tuple) -> dict:
        """The stored results (``{"eigs": .., "density": ..}``) of a block complete in the
        file with the same settings and coordinates; empty when not resuming or not done."""
        if not self.resume:
            return {}
        import h5py

        with h5py.File(self.path, "r") as f:
            group = f.get(group_of(block.name))
            if group is None:
                return {}
            attrs = decode_attrs(group.attrs)
            for key, value in self.settings.items():
                if attrs.get(key) != value:
                    raise ResumeError(
                        f"block {block.name!r} in {self.path} was computed with {key}="
                        f"{attrs.get(key)!r}, not {value!r}: use another file or the same "
                        "settings")
            if not np.array_equal(group["indices"][()], block.indices.numpy()):
                raise ResumeError(f"block {block.name!r} in {self.path} has other coordinates "
                                  "(another model or block definition): use another file")
            found = {}
            for kind, sub, read in (("eigs", "eigs", read_eigs_result),
                                    ("density", "slq", read_slq_result)):
                node = group.get(sub)
                if kind in wants and node is not None and node.attrs.get("complete", False):
                    found[kind] = read(node)
            return found if set(found) == set(wants) else {}

    def write(self, block, kind: str, result) -> None:
        """Store one finished result of ``block`` (rank 0; serialised across threads)."""
        if not self.main:
            return
        name = group_of(block.name)
        with self.lock, RunStore.reopen(self.path) as store:
            if name not in store.file:
                store.write_arrays(name, {"indices": block.indices.numpy()}, meta={"indices": {
                    "description": "the block's coordinates in the flat parameter vector",
                    "units": "index", "order": "ascending"}})
                store.set_attrs(name, {**self.settings, "dim": block.dim})
            if kind == "eigs":
                write_eigs(store, result, f"{name}/eigs", self.settings)
            else:
                write_slq(store, result, f"{name}/slq", self.settings)

