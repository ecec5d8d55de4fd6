"""One run path: an operator, a solver, its file and its resume, as every entry point runs them.

:func:`eigs` (eigenpairs) and :func:`slq` (the spectral density, deflated by eigenpairs) are
what the command line, the demo and the experiment scripts call. Each decides the context of
the run ONCE, then calls each solver once with the plumbing that context implies
(:class:`~lanczos_hessian.linalg.hooks.Hooks`):

=================  ======================================  =================================
this process       bases                                   checkpoint / records
=================  ======================================  =================================
no file            its own: memory, or a scratch file      none
writer             the run's file (on disk, or in memory   commits every step; records the
                   mirrored to it)                         steps and the results (rank 0)
replica            its own copy                            on resume, the committed state
                                                           read before rank 0 reopens
shard              its rows, in its own file               commits its rows every step
=================  ======================================  =================================

Rank 0 of a run with a file is its writer; the other ranks are replicas of it, unless the
vectors are sharded (``shard_vectors``), in which case every rank keeps its rows of the state
in a file of its own (:func:`~lanczos_hessian.storage.hdf5.shard_state_path`). Where the
bases live follows the memory budget (:func:`~lanczos_hessian.linalg.basis.choose_location`).
When a run finishes, its file keeps results, step records and provenance only: its resume
state (most of the file for SLQ: one basis of ``num_steps`` vectors per probe) is dropped,
unless ``keep_state=True`` (``--keep-state``). A resume of a finished run whose state was
dropped (``resume=True`` after a kill that came too late, or twice) computes nothing: with
the same settings it returns the stored result (:func:`_finished_result`); with other
settings, or one that needs the state (eigenvectors that were not saved), it is refused
naming ``--keep-state``. Each job checks its
output path before any operator application, streams one record per
application (so a killed job keeps what it computed), and writes the final arrays with their
provenance.

The seeds: ``eigs`` starts the eigensolver from ``seed``; ``slq`` splits ``seed`` into the
deflation's seed and the probes' seed (:func:`~lanczos_hessian.linalg.slq.split_seed`),
exactly as :func:`~lanczos_hessian.linalg.slq.deflated_slq`, so the same seed gives the same
numbers from Python, the command line and the demo. The file records the run's ``seed`` at
its root (and in the settings of its groups), the start vector's seed as ``eigs`` attribute
``start_seed`` and the probes' as ``slq`` attribute ``probe_seed``.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import tempfile
from dataclasses import dataclass

from . import validate
from .linalg.basis import TensorBasis, choose_location
from .linalg.eigsh import EigshResult, check_arguments, default_ncv, lanczos_eigsh
from .linalg.hooks import Hooks
from .linalg.deflated import DeflatedPlan, with_deflation_cost
from .linalg.slq import check_slq_arguments
from .contract import (data_fingerprint_of, device_of, expect_data_fingerprint, identity_of,
                       partition_of)
from .parallel.distributed import current_world
from .parallel.sharding import Shard
from .storage.agreement import agree_on_states, read_before_main_reopens
from .errors import LanczosHessianError, SpectrumFileError
from .storage.checkpoint import (
    Checkpointer,
    ResumeError,
    RunCheckpoint,
    check_settings,
    read_replica,
    saved_settings,
    state_dropped,
)
from .storage.disk_basis import HDF5Basis, create_basis_dataset
from .storage.hdf5 import (
    DEFAULT_RESERVE,
    SpectrumWriter,
    check_disk_space,
    check_output_path,
    drop_resume_state,
    open_spectrum,
    shard_state_path,
)
from .storage.records import (
    declare_eigs,
    declare_slq,
    finished_eigenpairs,
    plain_settings,
    read_eigs_result,
    read_slq_result,
    rewind_steps,
    slq_recorder,
    step_recorder,
    write_eigs,
    write_slq,
)

logger = logging.getLogger(__name__)

__all__ = ["eigs", "slq", "eigs_job", "slq_job", "provenance"]


def provenance(op, seed=None, identity=None, **extra) -> dict:
    """Attributes that say what produced a file: what the operator offers as its provenance
    (:func:`~lanczos_hessian.contract.identity_of`), the run's settings and the machine."""
    world = current_world()
    identity = identity_of(op) if identity is None else identity
    attrs = {**identity["provenance"], "world_size": world.size, "seed": seed,
             "hostname": platform.node()}
    attrs.update(extra)
    return attrs


#: The parts of an operator's identity a run's settings hold (checked on resume), per run.
EIGS_IDENTITY = ("operator", "num_params", "reduction", "model_dtype", "model", "strategy",
                 "allow_tf32")
SLQ_IDENTITY = ("operator", "num_params", "model", "strategy", "allow_tf32")


def identity_settings(identity: dict, keys) -> dict:
    """The ``keys`` of an identity (provenance and fingerprints) that it offers."""
    offered = {**identity["provenance"], **identity["fingerprints"]}
    return {key: offered[key] for key in keys if key in offered}


# ---- the context of a run ---------------------------------------------------------------------
@dataclass
class _Context:
    """What this process is in the run (decided once): see the module docstring's table."""

    op: object
    out: object
    shard: Shard | None
    location: str
    main: bool
    resume: bool

    @property
    def device(self):
        return device_of(self.op)

    @property
    def rows(self) -> int:
        return self.shard.local_dim if self.shard else self.op.shape[0]

    @property
    def has_file(self) -> bool:
        """This process keeps its own state file: rank 0, or every rank when sharded."""
        return self.out is not None and (self.main or self.shard is not None)

    @property
    def replica(self) -> bool:
        return self.out is not None and not self.has_file

    @property
    def records(self) -> bool:
        """This process writes the step records and results (rank 0 of a run with a file)."""
        return self.out is not None and self.main


def _context(op, out, shard_vectors, basis_vectors, memory_budget, resume) -> _Context:
    """Decide the run's context; ``basis_vectors`` is how many vectors its bases hold."""
    world = current_world()
    if resume and out is None:
        raise ResumeError("resuming needs the run's file (--out)")
    n = op.shape[0]
    shard = (Shard(n, offsets=partition_of(op, world.size))
             if shard_vectors and world.size > 1 else None)
    rows = shard.local_dim if shard else n
    location = choose_location(rows, basis_vectors, memory_budget, device_of(op))
    return _Context(op, out, shard, location, world.is_main, resume)


def _scratch_stores(stack: contextlib.ExitStack, location: str, device):
    """``make(i, dim, capacity)`` for bases of this process's own: in memory, or in a
    temporary HDF5 file closed with ``stack``."""
    if location != "disk":
        return lambda i, dim, capacity: TensorBasis(dim, capacity, device=device)
    import h5py

    tmp = stack.enter_context(tempfile.TemporaryDirectory())
    handle = stack.enter_context(h5py.File(f"{tmp}/bases.h5", "w"))
    made = iter(range(1 << 62))

    def make(i, dim, capacity):
        rows = min(1 << 18, dim)
        name = f"basis_{next(made)}"
        return HDF5Basis(create_basis_dataset(handle, name, dim, capacity, rows), capacity,
                         device=device, block_rows=rows)

    return make


def _open_file(ctx: _Context, seed, overwrite, attrs, disk_vectors,
               identity=None) -> SpectrumWriter:
    """This process's file: the run's (rank 0) or its rows' (other ranks, sharded); created
    after checking the path and the disk space for ``disk_vectors`` basis vectors, or reopened
    to resume."""
    world = current_world()
    path = ctx.out if ctx.main else shard_state_path(ctx.out, world.rank, world.size)
    reserve = _reserve(ctx.rows, disk_vectors)
    if not ctx.resume:
        check_output_path(path, overwrite)
        check_disk_space(path, ctx.rows, disk_vectors, reserve)
        role = {} if ctx.main else {"shard_of": str(ctx.out), "shard_rank": world.rank}
        return SpectrumWriter(path, {**provenance(ctx.op, seed=seed, identity=identity, **role),
                                     **(attrs or {})},
                              overwrite=overwrite, reserve=reserve)
    if not ctx.main and not path.exists():
        raise ResumeError(f"{path} is missing: a run with sharded vectors resumes on the "
                          f"number of ranks it ran on, here {world.size}")
    return SpectrumWriter(path, append=True, reserve=reserve)


def _check_seed(seed) -> None:
    """A run's seed is a non-negative integer (or None: fresh entropy), checked before any
    file is created."""
    validate.seed("seed", seed, flag="--seed")


def _reserve(rows: int, disk_vectors: int) -> int:
    """Bytes a run's writer keeps free for a clean close when the disk fills: what HDF5 may
    hold unwritten at that moment, at most one chunk cache (1 MiB) per dataset a commit
    writes (the bases, the state's slots, the step records), at most 64 of them."""
    return DEFAULT_RESERVE + min(disk_vectors + 12, 64) * min(rows * 8, 1 << 20)


def _open_and_agree(ctx: _Context, seed, overwrite, attrs, disk_vectors, prepare, num_counts,
                    identity=None):
    """Open this process's file and declare or check it with ``prepare(writer) -> (stores,
    counts)``; return ``(writer, stores, counts agreed by every rank)``. Sharded ranks agree on
    the minimum of each count (one collective with the error protocol: a rank that cannot open
    its file fails every rank with its message); a single writer keeps its own counts."""
    if ctx.shard is None:
        writer = _open_file(ctx, seed, overwrite, attrs, disk_vectors, identity)
        try:
            return (writer, *prepare(writer))
        except BaseException:
            writer.close()  # and its lock: a refused resume leaves the file free
            raise
    writer, error, stores, counts = None, None, None, [0] * num_counts
    try:
        writer = _open_file(ctx, seed, overwrite, attrs, disk_vectors, identity)
        stores, counts = prepare(writer)
    except Exception as exc:  # every rank learns of it, then each raises
        error = exc
    return writer, stores, agree_on_states(counts, error, writer, ctx.device)


def _file_hooks(ctx, store: RunCheckpoint, count: int) -> Hooks:
    """Bases backed by this process's file, rewound to the agreed state, and its checkpoint;
    rank 0 saves the data fingerprint of the operator's first pass with every commit and,
    on resume, has the operator check its data against the saved one."""
    store.rewind(count)
    op = ctx.op
    checkpoint = (Checkpointer(store, stamp=lambda: data_fingerprint_of(op),
                               on_restore=lambda saved: expect_data_fingerprint(op, saved))
                  if ctx.main else Checkpointer(store))
    return Hooks(bases=store.basis_factory(ctx.location, ctx.device), checkpoint=checkpoint,
                 shard=ctx.shard)


# ---- eigenpairs ---------------------------------------------------------------------------------
def eigs(op, out=None, *, k=20, which="LA", k_bottom=None, tol=1e-6, ncv=None,
         max_matvecs=None, block_size=1, seed=0, save_vectors=False, true_residuals=True,
         overwrite=False, resume=False, memory_budget=None, shard_vectors=False, progress=True,
         attrs=None, keep_state=False):
    """Eigenpairs of ``op`` by :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`, committed
    to ``out`` after every pass.

    ``memory_budget`` (bytes or ``"6GiB"``) decides where the Lanczos basis lives: in device
    memory if it fits beside the working vectors, else on disk (streamed in row blocks). With
    a file, the basis is always kept in it too, with the rest of the state, so that
    ``resume=True`` continues a killed run from its last committed application. Under
    ``torch.distributed`` every rank runs the recurrence and rank 0 writes; with
    ``shard_vectors`` each rank keeps only its rows of the vectors and the basis, and of the
    state, in a file of its own (the module docstring). The finished file keeps the resume
    state only with ``keep_state=True``; ``resume=True`` on a finished file whose state was
    dropped returns the stored result (nothing is computed).
    """
    n = op.shape[0]
    check_arguments(k, n, which, tol, ncv, max_matvecs, k_bottom, block_size)
    _check_seed(seed)
    capacity = default_ncv(k, n, block_size, which) if ncv is None else min(ncv, n)
    ctx = _context(op, out, shard_vectors, capacity, memory_budget, resume)
    identity = identity_of(op)
    settings = {"k": k, "which": which, "k_bottom": k_bottom, "tol": tol, "ncv": ncv,
                "block_size": block_size, "max_matvecs": max_matvecs, "seed": seed,
                "world_size": current_world().size,
                **identity_settings(identity, EIGS_IDENTITY)}

    if resume:
        stored = _finished_result(out, "eigs", settings,
                                  lambda f: _stored_eigs(f, out, save_vectors))
        if stored is not None:
            return stored

    def solve(hooks, callback=None):
        return lanczos_eigsh(op, k=k, which=which, k_bottom=k_bottom, tol=tol, ncv=ncv,
                             max_matvecs=max_matvecs, block_size=block_size, rng=seed,
                             return_eigenvectors=save_vectors, true_residuals=true_residuals,
                             callback=callback, progress=progress and ctx.main, hooks=hooks)

    if not ctx.has_file:
        with contextlib.ExitStack() as stack:
            make = _scratch_stores(stack, ctx.location, ctx.device)
            replica = (read_before_main_reopens(lambda: read_replica(out, "eigs", make),
                                                ctx.device)
                       if ctx.replica and resume else None)
            return solve(Hooks(bases=replica.basis_factory if replica else make,
                               checkpoint=replica, shard=ctx.shard))
    if resume and ctx.shard is None:
        read_before_main_reopens(lambda: None, ctx.device)  # the replicas read first

    def prepare(writer):
        store = RunCheckpoint(writer, "eigs", ctx.rows, block_size, capacity)
        if resume:
            store.check_same_run(settings)
        else:
            if ctx.main:
                declare_eigs(writer, settings, k)
            store.declare(settings)
        return store, [store.count]

    writer, store, (count,) = _open_and_agree(ctx, seed, overwrite, attrs, capacity, prepare, 1,
                                              identity)
    with writer:
        if ctx.records and resume:
            rewind_steps(writer, "eigs", count)
        hooks = _file_hooks(ctx, store, count)
        writer.start_streaming()
        result = solve(hooks, step_recorder(writer, "eigs", k, which, k_bottom)
                       if ctx.records else None)
        writer.finish()
        if ctx.records:
            _record_num_samples(writer, op)
            write_eigs(writer, result, "eigs", {**plain_settings(settings),
                                                 "start_seed": seed,
                                                 "basis_location": ctx.location,
                                                 "sharded": ctx.shard is not None})
    _finish_state(ctx, keep_state)
    return result


# ---- spectral density --------------------------------------------------------------------
def slq(op, out=None, *, num_probes=10, num_steps=80, probe="rademacher", k_top=0, k_bottom=0,
        tol=1e-6, reorthogonalize=True, seed=0, overwrite=False, resume=False,
        memory_budget=None, shard_vectors=False, progress=True, attrs=None, keep_state=False):
    """SLQ of ``op`` deflated by its ``k_top`` largest and ``k_bottom`` smallest eigenpairs,
    streamed to ``out``; returns ``(eigenpairs or None, SLQ result)``.

    The deflation eigenpairs come from one eigensolver run
    (:func:`~lanczos_hessian.linalg.slq.deflation_plan`) stored with their eigenvectors in the
    ``eigs`` group; the quadrature goes to ``slq``. The two phases draw from the two seeds
    :func:`~lanczos_hessian.linalg.slq.split_seed` spawns from ``seed`` (the numbers of
    :func:`~lanczos_hessian.linalg.slq.deflated_slq` with ``rng=seed``). With a file, both
    phases commit their state after every operator application and ``resume=True``
    continues a killed run from either phase; ``memory_budget``, ``shard_vectors``, the
    ranks' roles and ``keep_state`` are as in :func:`eigs` (a resume of a finished file whose
    state was dropped returns the stored eigenpairs and quadrature).
    """
    _check_seed(seed)
    plan = DeflatedPlan.make(k_top, k_bottom, seed)
    k, which, k_b = plan.k, plan.which, plan.k_bottom
    n = op.shape[0]
    check_slq_arguments(num_probes, num_steps, probe)  # before any file is created
    if k:
        check_arguments(k, n, which, tol, k_bottom=k_b)
    eigs_seed = plan.eigs_seed
    capacity = min(num_steps, n - k)
    eigs_capacity = default_ncv(k, n, 1, which)
    ctx = _context(op, out, shard_vectors, capacity * num_probes, memory_budget, resume)
    identity = identity_of(op)
    settings = {"num_probes": num_probes, "num_steps": num_steps, "probe": probe,
                "k_top": k_top, "k_bottom": k_bottom, "tol": tol, "seed": seed,
                "reorthogonalize": reorthogonalize, **identity_settings(identity, SLQ_IDENTITY)}
    show = progress and ctx.main
    if resume:
        stored = _finished_result(out, "slq", settings, lambda f: (
            read_eigs_result(f["eigs"]) if k else None, read_slq_result(f["slq"])))
        if stored is not None:
            return stored

    def deflate(hooks, callback=None):
        return plan.eigenpairs(op, tol=tol, callback=callback, progress=show, hooks=hooks)

    def quadrature(eigenpairs, hooks, callback=None):
        return plan.quadrature(op, eigenpairs, num_probes=num_probes, num_steps=num_steps,
                               probe=probe, reorthogonalize=reorthogonalize,
                               callback=callback, progress=show, hooks=hooks)

    if not ctx.has_file:
        with contextlib.ExitStack() as stack:
            make = _scratch_stores(stack, ctx.location, ctx.device)
            eigs_state, eigs_attrs, slq_replica = (
                read_before_main_reopens(lambda: _read_slq_replicas(out, k, make), ctx.device,
                                         default=(None, {}, None))
                if ctx.replica and resume else (None, {}, None))
            eigenpairs = eigs_state
            if k and not isinstance(eigs_state, EigshResult):  # not read back finished
                eigenpairs = deflate(Hooks(
                    bases=eigs_state.basis_factory if eigs_state else make,
                    checkpoint=eigs_state, shard=ctx.shard))
            result = quadrature(eigenpairs, Hooks(
                bases=slq_replica.basis_factory if slq_replica else make,
                checkpoint=slq_replica, shard=ctx.shard))
            return eigenpairs, _with_cost(result, eigenpairs, eigs_attrs)
    if resume and ctx.shard is None:
        read_before_main_reopens(lambda: None, ctx.device)  # the replicas read first

    def prepare(writer):
        slq_store = RunCheckpoint(writer, "slq", ctx.rows, 2 * num_probes, capacity,
                                  num_bases=num_probes if reorthogonalize else 0)
        eigs_store = RunCheckpoint(writer, "eigs", ctx.rows, 1, eigs_capacity) if k else None
        if resume:
            slq_store.check_same_run(settings)
        else:
            if ctx.main:
                if k:
                    declare_eigs(writer, {"k": k, "which": which, "k_bottom": k_b}, k)
                declare_slq(writer, settings, num_probes)
            if k:
                eigs_store.declare({"k": k})
            slq_store.declare(settings)
        done = bool(k and writer.file["eigs"].attrs.get("complete", False))
        return (eigs_store, slq_store), [eigs_store.count if k else 0, int(done), slq_store.count]

    disk_vectors = capacity * num_probes + (eigs_capacity if k else 0)
    writer, (eigs_store, slq_store), (eigs_count, all_done, slq_count) = _open_and_agree(
        ctx, seed, overwrite, attrs, disk_vectors, prepare, 3, identity)
    with writer:
        eigenpairs, eigs_attrs = None, {}
        if k:
            written = bool(writer.file["eigs"].attrs.get("complete", False))
            if all_done:
                eigenpairs = finished_eigenpairs(writer.file["eigs"])
            else:
                if ctx.records and resume and not written:
                    rewind_steps(writer, "eigs", eigs_count)
                hooks = _file_hooks(ctx, eigs_store, eigs_count)
                writer.start_streaming()
                eigenpairs = deflate(hooks, step_recorder(writer, "eigs", k, which, k_b)
                                     if ctx.records and not written else None)
                writer.finish()
                if not written:
                    extra = {"sharded": True} if ctx.shard is not None else {}
                    write_eigs(writer, eigenpairs, "eigs", {"k": k, "k_bottom": k_b,
                                                            "start_seed": eigs_seed, **extra})
            eigs_attrs = dict(writer.file["eigs"].attrs)
        if ctx.records and resume:
            rewind_steps(writer, "slq", slq_count)
        hooks = _file_hooks(ctx, slq_store, slq_count)
        writer.start_streaming()
        result = quadrature(eigenpairs, hooks, slq_recorder(writer) if ctx.records else None)
        writer.finish()
        result = _with_cost(result, eigenpairs, eigs_attrs)
        if ctx.records:
            _record_num_samples(writer, op)
            extra = {"sharded": True} if ctx.shard is not None else {}
            write_slq(writer, result, "slq", {**plain_settings(settings), **extra})
    _finish_state(ctx, keep_state)
    return eigenpairs, result


def _finished_result(out, group: str, settings: dict, read):
    """On a resume: ``read(file)``, the stored result of ``group``'s run when it finished and
    its resume state was dropped (there is nothing to compute), after checking that the
    settings are the run's; None when the file holds a state to continue (or no file: the
    resume itself says so). Every rank reads it alike."""
    from pathlib import Path

    if out is None or not Path(out).exists():
        return None
    try:
        with open_spectrum(out) as f:
            node = f.get(group)
            if node is None or not state_dropped(node):
                return None
            check_settings(saved_settings(node), settings, out, group, dropped=True)
            result = read(f)
    except LanczosHessianError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise SpectrumFileError(f"{out} is damaged: the stored result of its {group} run "
                                f"cannot be read ({type(exc).__name__}: {exc})") from exc
    logger.info("%s: the %s run is complete (its resume state was dropped): returning its "
                "stored result, nothing computed", out, group)
    return result


def _stored_eigs(f, out, save_vectors: bool):
    """The finished ``eigs`` result of the open file ``f``; eigenvectors asked for but not
    saved would need the dropped basis, so they are refused naming ``--keep-state``."""
    if save_vectors and "eigenvectors" not in f["eigs"]:
        raise ResumeError(
            f"the eigs run of {out} is complete but saved no eigenvectors, and its resume state "
            "(the Lanczos basis they are formed from) was dropped when it finished: run again "
            "with --save-vectors (save_vectors=True), and pass --keep-state "
            "(keep_state=True) to runs whose files are to be continued")
    return read_eigs_result(f["eigs"])


def _record_num_samples(writer, op) -> None:
    """The sample count over all ranks, known after the first pass for an iterable of batches
    (the file's provenance was written before it), when the operator offers one."""
    num_samples = identity_of(op)["provenance"].get("num_samples")
    if num_samples is not None:
        writer.set_attrs("/", {"num_samples": num_samples})


def _finish_state(ctx: _Context, keep_state: bool) -> None:
    """Unless ``keep_state``, a finished run's file keeps results and provenance only: rank 0
    rewrites the run's file without its resume state, and the other ranks of a sharded run
    delete their files of state."""
    if keep_state or not ctx.has_file:
        return
    if ctx.main:
        drop_resume_state(ctx.out)
    else:
        world = current_world()
        shard_state_path(ctx.out, world.rank, world.size).unlink(missing_ok=True)


def _with_cost(result, eigenpairs, eigs_attrs):
    """``result`` with the deflation's applications counted in: from the eigenpair result, or
    from the file's ``eigs`` attributes when the deflation had finished before a resume."""
    if eigenpairs is None:
        return result
    if hasattr(eigenpairs, "num_passes"):
        return with_deflation_cost(result, eigenpairs.num_passes, eigenpairs.num_matvecs)
    return with_deflation_cost(result, int(eigs_attrs.get("num_passes", 0)),
                               int(eigs_attrs.get("num_matvecs", 0)))


def _read_slq_replicas(out, k, make_store) -> tuple:
    """What a replica of a resumed SLQ run reads: the deflation (its finished eigenpairs, or a
    replica checkpoint, or None), the file's ``eigs`` attributes, and the SLQ's replica
    checkpoint (or None)."""
    eigs_state, attrs = None, {}
    if k:
        with open_spectrum(out) as f:
            attrs = dict(f["eigs"].attrs)
            if attrs.get("complete", False):
                eigs_state = finished_eigenpairs(f["eigs"])
        if eigs_state is None:
            eigs_state = read_replica(out, "eigs", make_store)
    return eigs_state, attrs, read_replica(out, "slq", make_store)


#: The names the command line and earlier releases used.
eigs_job = eigs
slq_job = slq
