"""Blockwise spectra in a spectrum file: one group per block, every solver's state committed
after every pass, so that a killed run continues bit for bit.

Layout (a :class:`~lanczos_hessian.storage.runstore.RunStore` file; the root attributes are
the operator's provenance, token counts of a language-model objective included)::

    blocks/<name>            attrs: dim, the run's settings; dataset indices (flat coordinates)
    blocks/<name>/eigs       the block's top-k, a run of the file (as a run's ``eigs`` group)
    blocks/<name>/slq        the block's SLQ quadrature, a run of the file (as ``slq``)

While the run goes on, each of these runs holds its resume state (``<run>/state``,
:class:`~lanczos_hessian.storage.checkpoint.RunCheckpoint`: the Lanczos recurrence of the
eigensolver or of every probe, its basis, its random generator), committed by the solver's
:class:`~lanczos_hessian.storage.checkpoint.Checkpointer` after each of its steps. All
solvers step in lockstep (:mod:`.lockstep`): pass ``j + 1`` is applied only once every
solver still running has committed its state ``j``, so after a kill the committed counts of
the solvers still running differ by at most one. A resume continues from the last pass that
all of them committed (:func:`common_cut`): a solver one commit ahead goes back to its other
slot (:meth:`RunCheckpoint.rewind`, the ranks' agreement of a sharded run), and every later
pass is the one the uninterrupted run made, with the same solvers and the same columns.
When every solver has finished, the results are written (``complete``) and the states
dropped. A block complete in the file is read back, not computed again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..contract import data_fingerprint_of, expect_data_fingerprint, identity_of
from ..errors import ResumeError
from ..linalg.hooks import Hooks
from ..linalg.ritz import default_ncv
from ..parallel.distributed import current_world
from ..run.plan import EIGS_IDENTITY, identity_settings, provenance
from ..storage.checkpoint import Checkpointer
from ..storage.hdf5 import open_spectrum
from ..storage.reader import decode_attrs
from ..storage.records import read_eigs_result, read_slq_result, write_eigs, write_slq
from ..storage.runstore import RunStore
from ..storage.settings import STATE

#: A block's result kinds and the group of each.
GROUPS = {"eigs": "eigs", "density": "slq"}


def stored_blocks(path) -> list:
    """``(name, dim, seed, {"eigs": .., "density": ..})`` of every block a file holds (its
    complete results only)."""
    found = []
    with open_spectrum(path) as f:
        for name, group in f.get("blocks", {}).items():
            attrs = decode_attrs(group.attrs)
            found.append((name, int(attrs["dim"]), int(attrs.get("seed", 0)),
                          _complete_results(group, GROUPS)))
    return found


def _complete_results(group, kinds) -> dict:
    """``{kind: result}`` of the complete runs of a block's group."""
    found = {}
    for kind in kinds:
        node = group.get(GROUPS[kind])
        if node is not None and node.attrs.get("complete", False):
            found[kind] = (read_eigs_result if kind == "eigs" else read_slq_result)(node)
    return found


def group_of(name: str) -> str:
    return f"blocks/{name}"


@dataclass(frozen=True)
class SolverRun:
    """One block solver's run in the file: its group and the size of its committed state
    (vectors per slot, vectors per basis, bases), those of the eigensolver's and of SLQ's
    runs in :mod:`lanczos_hessian.run.entry`."""

    block: object
    kind: str
    num_vectors: int
    capacity: int
    num_bases: int

    @property
    def name(self) -> str:
        return f"{group_of(self.block.name)}/{GROUPS[self.kind]}"

    @classmethod
    def of(cls, block, kind: str, k: int, num_probes: int, num_steps: int) -> "SolverRun":
        if kind == "eigs":
            return cls(block, kind, 1, default_ncv(min(k, block.dim), block.dim, 1, "LA"), 1)
        return cls(block, kind, 2 * num_probes, min(num_steps, block.dim), num_probes)


def common_cut(committed: list) -> int | None:
    """The last pass every resumed solver committed, from their ``(count, finished)``: the
    least count of those not finished (a solver that finished took no part in the passes
    after its last). None when all had finished."""
    running = [int(count) for count, finished in committed if not finished]
    return min(running) if running else None


class BlockFile:
    """Where a blockwise run writes: rank 0 writes, every rank reads back finished blocks.

    :meth:`finished` gives the blocks already complete; :meth:`start` opens the file for the
    others (declared anew, or resumed at the common cut) and gives each solver its
    :class:`~lanczos_hessian.linalg.hooks.Hooks`; :meth:`finish` writes the results and drops
    the states; :meth:`close` (on any failure) leaves every committed state in place."""

    def __init__(self, path, op, settings: dict, *, resume: bool, overwrite: bool):
        self.path, self.settings, self.op = os.fspath(path), dict(settings), op
        self.main = current_world().is_main
        self.resume = resume and os.path.exists(self.path)
        self.store, self.resumed_from = None, 0
        self.state_settings = {**settings, **identity_settings(identity_of(op), EIGS_IDENTITY)}
        if self.main and not self.resume:
            RunStore.create(self.path, provenance(op, settings.get("seed")),
                            overwrite=overwrite).close()

    def finished(self, block, wants: tuple) -> dict:
        """The stored results (``{"eigs": .., "density": ..}``) of a block complete in the
        file with the same settings and coordinates; empty when not resuming or not done."""
        if not self.resume:
            return {}
        with open_spectrum(self.path) as f:
            group = f.get(group_of(block.name))
            if group is None:
                return {}
            self._check_block(group, block)
            found = _complete_results(group, wants)
            return found if set(found) == set(wants) else {}

    def _check_block(self, group, block) -> None:
        """Refuse a block of the file computed with other settings or coordinates."""
        attrs = decode_attrs(group.attrs)
        for key, value in self.settings.items():
            if attrs.get(key) != value:
                raise ResumeError(
                    f"block {block.name!r} in {self.path} was computed with {key}="
                    f"{attrs.get(key)!r}, not {value!r}: use another file or the same settings")
        if not np.array_equal(group["indices"][()], block.indices.numpy()):
            raise ResumeError(f"block {block.name!r} in {self.path} has other coordinates "
                              "(another model or block definition): use another file")

    # ---- the runs of one call -------------------------------------------------------------
    def start(self, runs: list) -> list:
        """Declare or resume ``runs`` (:class:`SolverRun`) and stream; their hooks, in order.
        ``resumed_from`` is then the pass the resumed solvers continue from."""
        if not self.main:  # the writing rank commits; the others compute alike in memory
            if self.resume and any(self._has_state(run) for run in runs):
                raise ResumeError(f"{self.path}: a blockwise run resumes from its committed "
                                  "passes in a single process; under torch.distributed it "
                                  "keeps only its complete blocks (finish it, or resume it "
                                  "in one process)")
            return [Hooks() for _ in runs]
        self.store = RunStore.reopen(self.path)
        try:
            checkpoints, resumed = [], []
            for run in runs:
                checkpoint = self.store.checkpoint(run.name, run.block.dim, run.num_vectors,
                                                   run.capacity, run.num_bases)
                if run.name in self.store.file and STATE in self.store.file[run.name]:
                    self._check_block(self.store.file[group_of(run.block.name)], run.block)
                    checkpoint.check_same_run(self.state_settings)
                    resumed.append(checkpoint)
                else:
                    self._declare(run, checkpoint)
                checkpoints.append(checkpoint)
            cut = common_cut([(c.count, c.finished) for c in resumed])
            for checkpoint in resumed:
                if cut is not None and checkpoint.count > cut:
                    checkpoint.rewind(cut)
            self.resumed_from = cut or 0
            self.store.start_streaming()
        except BaseException:
            self.close()
            raise
        return [self._hooks(checkpoint) for checkpoint in checkpoints]

    def _has_state(self, run) -> bool:
        with open_spectrum(self.path) as f:
            return f"{run.name}/{STATE}" in f

    def _declare(self, run, checkpoint) -> None:
        """A new run: its block's group (coordinates, settings), its own group (settings,
        incomplete) and its resume state."""
        block, name = run.block, group_of(run.block.name)
        if name not in self.store.file:
            self.store.write_arrays(name, {"indices": block.indices.numpy()}, meta={"indices": {
                "description": "the block's coordinates in the flat parameter vector",
                "units": "index", "order": "ascending"}})
            self.store.set_attrs(name, {**self.settings, "dim": block.dim})
        self.store.declare(run.name, self.settings)
        checkpoint.declare(self.state_settings)

    def _hooks(self, checkpoint) -> Hooks:
        """Bases in memory mirrored to the file, and the commit after every step, with the
        data fingerprint of the first pass (checked against the saved one on resume)."""
        op = self.op
        return Hooks(bases=checkpoint.basis_factory("memory", op.device),
                     checkpoint=Checkpointer(
                         checkpoint, stamp=lambda: data_fingerprint_of(op),
                         on_restore=lambda saved: expect_data_fingerprint(op, saved)))

    def finish(self, runs: list, results: list) -> None:
        """Every solver finished: write the results (complete), then drop the states."""
        if self.store is None:
            return
        try:
            self.store.finish()
            for run, result in zip(runs, results):
                write = write_eigs if run.kind == "eigs" else write_slq
                write(self.store, result, run.name, self.settings)
            for run in runs:
                self.store.drop_state(run.name)
        finally:
            self.close()

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            store.close()
