"""The run driver: phases run in order, each restore -> step -> commit, for the four roles of
:mod:`~lanczos_hessian.run.plan`, written once.

A :class:`Phase` is one named run of the file (``eigs``, ``slq``, ``blocks/<name>/eigs``)
described by plain data and small functions: how large its committed state is, its
settings, how it declares and records itself, how it solves (given
:class:`~lanczos_hessian.linalg.hooks.Hooks` and a step callback) and how its result is
written and read back. :func:`run_phases` decides nothing of its own: the role decides
where bases live, what is committed, who writes, and how a resume agrees on its state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

from ..linalg.hooks import Hooks
from ..storage.agreement import read_before_main_reopens
from ..storage.checkpoint import Checkpointer, read_replica
from ..storage.hdf5 import open_spectrum
from ..storage.settings import report_rounding, rounding_settings, saved_settings
from ..contract import data_fingerprint_of, expect_data_fingerprint
from .files import open_and_agree, record_num_samples, remove_shard_file, scratch_stores
from .plan import Role
from .stopping import at_safe_point, passes, stop_on_signals

__all__ = ["Phase", "run_phases"]


@dataclass
class Phase:
    """One named run of a file (module docstring).

    Attributes
    ----------
    name : str
        Its group in the file.
    num_vectors, capacity, num_bases : int
        Its committed state: vectors per slot, vectors per basis, bases.
    state_settings : dict
        The settings recorded with its state (``run_<name>`` attributes).
    check : dict or None
        The settings a resume must match (None: not checked here).
    declare, recorder, write, read :
        ``declare(store)`` its group and step records (the writing rank);
        ``recorder(store)`` its step callback; ``write(store, result)`` its result
        (complete); ``read(group)`` the result of a complete group.
    solve : callable
        ``solve(hooks, callback, earlier results) -> result``.
    reuse_finished : bool
        A later phase's resume takes this phase's stored result when it is complete (it is
        then written in every rank's file; other phases' results by the writing rank).
    """

    name: str
    num_vectors: int
    capacity: int
    num_bases: int
    solve: Callable
    state_settings: dict = field(default_factory=dict)
    check: dict | None = None
    declare: Callable = lambda store: None
    recorder: Callable = lambda store: None
    write: Callable = lambda store, result: None
    read: Callable | None = None
    reuse_finished: bool = False


def _hooks(role: Role, store, phase: Phase, count: int) -> Hooks:
    """Bases backed by this process's file, rewound to the agreed state, and its checkpoint;
    rank 0 saves the data fingerprint of the operator's first pass with every commit and,
    on resume, has the operator check its data against the saved one."""
    checkpoint_store = store.checkpoint(phase.name, role.rows, phase.num_vectors,
                                        phase.capacity, phase.num_bases)
    checkpoint_store.rewind(count)
    op = role.op
    checkpoint = (Checkpointer(checkpoint_store, stamp=lambda: data_fingerprint_of(op),
                               on_restore=lambda saved: expect_data_fingerprint(op, saved),
                               after_commit=at_safe_point)
                  if role.main else Checkpointer(checkpoint_store))
    return Hooks(bases=checkpoint_store.basis_factory(role.location, role.device),
                 checkpoint=checkpoint, shard=role.shard)


def _without_file(role: Role, phases: list) -> list:
    """No file of its own: bases of its own; a resumed replica restores the committed state
    (or a phase's stored result) read from the run's file before rank 0 reopens it."""
    with contextlib.ExitStack() as stack:
        make = scratch_stores(stack, role.location, role.device)

        def read_all():
            return [_replica_of(role.out, phase, make) for phase in phases]

        replicas = (read_before_main_reopens(read_all, role.device,
                                             default=[None] * len(phases))
                    if role.replica and role.resume else [None] * len(phases))
        results = []
        for phase, replica in zip(phases, replicas):
            if isinstance(replica, _Stored):
                results.append(replica.result)
                continue
            hooks = Hooks(bases=_restored_once(replica, make), checkpoint=replica,
                          shard=role.shard)
            results.append(phase.solve(hooks, None, results))
        return results


def _restored_once(replica, make):
    """``bases(i, dim, capacity)``: a replica's restored copy of basis ``i`` the first time
    it is asked for, a new store of ``make`` after (a solver that starts new recurrences,
    such as the rounds of adaptive SLQ, gets empty bases)."""
    if replica is None:
        return make
    given = set()

    def bases(i, dim, capacity):
        if i in given:
            return make(i, dim, capacity)
        given.add(i)
        return replica.basis_factory(i, dim, capacity)

    return bases


@dataclass
class _Stored:
    result: object


def _replica_of(out, phase: Phase, make):
    """A replica's resume of ``phase``: its stored result, or its committed state, or None."""
    if phase.reuse_finished:
        with open_spectrum(out) as f:
            node = f.get(phase.name)
            if node is not None and node.attrs.get("complete", False):
                return _Stored(phase.read(node))
    return read_replica(out, phase.name, make)


def _prepare(role: Role, phases: list):
    """``prepare(store)`` of :func:`~lanczos_hessian.run.files.open_and_agree`: declare each
    phase (new run) or check it (resume); counts ``[state count, complete]`` per phase."""

    def prepare(store):
        counts = []
        for phase in phases:
            complete = phase.reuse_finished and store.is_complete(phase.name)
            if role.resume:
                if phase.check is not None:
                    store.checkpoint(phase.name, role.rows, phase.num_vectors, phase.capacity,
                                     phase.num_bases).check_same_run(phase.check)
                if role.main and not complete and phase.name in store.file:
                    report_rounding(saved_settings(store.file[phase.name]), store.path,
                                    phase.name)
            else:
                if role.main:
                    phase.declare(store)
                store.checkpoint(phase.name, role.rows, phase.num_vectors, phase.capacity,
                                 phase.num_bases).declare({**phase.state_settings,
                                                           **rounding_settings()})
            count = 0 if complete else store.checkpoint(
                phase.name, role.rows, phase.num_vectors, phase.capacity,
                phase.num_bases).count
            counts += [count, int(complete)]
        return None, counts

    return prepare


def run_phases(role: Role, phases: list, *, seed, overwrite=False, attrs=None,
               identity=None, keep_state=False, disk_vectors=0, append=False) -> list:
    """Run ``phases`` in order in this process's role; their results.

    With a file, each phase restores its committed state (or, complete, its stored result),
    steps and commits after every step, records its steps and writes its result; when the
    last one finishes their resume states are dropped unless ``keep_state`` (other runs of
    the file keep theirs). ``append`` adds the phases to an existing file instead of creating
    one."""
    if not role.has_file:
        return _without_file(role, phases)
    with stop_on_signals():
        return _with_file(role, phases, seed=seed, overwrite=overwrite, attrs=attrs,
                          identity=identity, keep_state=keep_state, disk_vectors=disk_vectors,
                          append=append)


def _with_file(role: Role, phases: list, *, seed, overwrite, attrs, identity, keep_state,
               disk_vectors, append) -> list:
    """:func:`run_phases` for a process with a file of its own; a signal stops it after its
    next commit (:mod:`~lanczos_hessian.run.stopping`)."""
    if role.resume:  # every rank has read the file (finished_result) before rank 0 reopens it
        read_before_main_reopens(lambda: None, role.device)
    store, _, counts = open_and_agree(role, _prepare(role, phases), 2 * len(phases),
                                      seed=seed, overwrite=overwrite, attrs=attrs,
                                      disk_vectors=disk_vectors, identity=identity,
                                      append=append)
    results = []
    with store:
        for index, phase in enumerate(phases):
            count, done = counts[2 * index], counts[2 * index + 1]
            if done:
                results.append(phase.read(store.file[phase.name]))
                continue
            # a phase whose result later phases reuse is written in every rank's file (its
            # completion is each rank's to know); the others by the writing rank
            written = phase.reuse_finished and store.is_complete(phase.name)
            if role.records and role.resume and not written:
                store.rewind_steps(phase.name, count)
            hooks = _hooks(role, store, phase, count)
            store.start_streaming()
            callback = phase.recorder(store) if role.records and not written else None
            with passes():
                result = phase.solve(hooks, callback, results)
            store.finish()
            if not written and (role.records or phase.reuse_finished):
                phase.write(store, result)
            if role.records:
                record_num_samples(store, role.op)
            results.append(result)
        if not keep_state and role.main:
            # the phases are done: their states go (other runs of the file keep theirs). Not
            # phase by phase: space freed inside the file would be reused by the next phase,
            # and a full disk then fails only HDF5's deferred metadata writes, unreported
            for phase in phases:
                store.drop_state(phase.name)
    if not keep_state:
        remove_shard_file(role)
    return results
