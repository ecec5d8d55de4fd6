"""Jobs that combine an operator, a solver and an HDF5 file: what the CLI runs.

Each job checks its output path before any operator application, streams one record per
application into the file (so a killed job keeps what it computed), and writes the final
arrays with their provenance. Only the main rank (global rank 0) writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform

import numpy as np

from .linalg.basis import HDF5Basis, TensorBasis, choose_location, create_basis_dataset
from .storage.checkpoint import (
    LanczosCheckpointer,
    ReplicaCheckpointer,
    ReplicaSLQCheckpointer,
    ResumeError,
    RunCheckpoint,
    SLQCheckpointer,
    model_fingerprint,
    probe_basis_factory,
)
from .parallel.distributed import current_world
from .linalg.eigsh import lanczos_eigsh, wanted_indices
from .errors import OutputPathError
from .storage.hdf5 import SpectrumWriter, check_output_path, write_eigs
from .parallel.sharding import Shard
from .linalg.slq import slq

logger = logging.getLogger(__name__)


def provenance(op, seed=None, **extra) -> dict:
    """Attributes that say what produced a file: operator, model, data, settings, machine."""
    world = current_world()
    attrs = {
        "operator": op.kind,
        "num_params": op.shape[0],
        "param_names": list(op.space.names),
        "loss": getattr(op.loss_fn, "__class__", type(op.loss_fn)).__name__,
        "reduction": op.reduction,
        "dtype": str(op.dtype),
        "model_dtype": str(op.model_dtype),
        "device": str(op.device),
        "strategy": op.curvature.strategy,
        "world_size": world.size,
        "seed": seed,
        "hostname": platform.node(),
    }
    if op.num_samples is not None:
        attrs["num_samples"] = op.num_samples  # over all ranks
    attrs.update(extra)
    return attrs


class _NullWriter:
    """Stands in for the writer on ranks that do not write."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def open_writer(out, attrs, overwrite):
    """A :class:`SpectrumWriter` on the main rank, a do-nothing stand-in elsewhere."""
    if out is None or not current_world().is_main:
        return _NullWriter()
    return SpectrumWriter(out, attrs, overwrite=overwrite)


def step_recorder(writer, group: str, k: int, which: str, k_bottom=None):
    """A ``lanczos_eigsh`` callback that commits one record per operator application.

    Record: the step's diagonal entry ``alpha`` and coupling ``beta``, the wanted Ritz
    values and their residual bounds (NaN-padded to ``k`` while fewer exist).
    """

    def record(process, theta, bounds):
        want = wanted_indices(theta, k, which, k_bottom)
        ritz = np.full(k, np.nan)
        res = np.full(k, np.nan)
        ritz[: len(want)], res[: len(want)] = theta[want], bounds[want]
        j = process.size - 1
        writer.append_step(group, {
            "matvec": process.num_matvecs,
            "alpha": process.T[j, j],
            "beta": process.beta,
            "ritz_values": ritz,
            "residual_bounds": res,
        })

    return record


def eigs_job(op, out=None, *, k=20, which="LA", k_bottom=None, tol=1e-6, ncv=None,
             max_matvecs=None, seed=0, save_vectors=False, true_residuals=True,
             overwrite=False, resume=False, memory_budget=None, shard_vectors=False,
             progress=True, attrs=None):
    """Eigenpairs of ``op`` by :func:`lanczos_eigsh`, committed to ``out`` after every pass.

    ``memory_budget`` (bytes or ``"6GiB"``) decides where the Lanczos basis lives: in device
    memory if it fits beside the working vectors, else on disk in ``out`` (streamed in row
    blocks; :func:`~lanczos_hessian.basis.choose_location`). With a file, the basis is
    always kept in it too, with the rest of the state, so that ``resume=True`` continues a
    killed run from its last committed application (:mod:`lanczos_hessian.checkpoint`).

    Under ``torch.distributed`` every rank runs the recurrence and rank 0 writes. With
    ``shard_vectors`` each rank keeps only its rows of the Lanczos vectors and basis
    (:mod:`lanczos_hessian.sharding`); rank 0 keeps its rows of the state in ``out`` and
    every other rank ``r`` in a file of its own beside it, :func:`shard_state_path`, so
    that the run resumes on the same number of ranks from the last state all of them
    committed.
    """
    world = current_world()
    n = op.shape[0]
    capacity = min(ncv or max(2 * k + 1, 20), n)
    shard = Shard(n) if shard_vectors and world.size > 1 else None
    rows = shard.local_dim if shard else n
    location = choose_location(rows, capacity, memory_budget, op.device)
    settings = {"k": k, "which": which, "k_bottom": k_bottom, "tol": tol, "ncv": ncv,
                "max_matvecs": max_matvecs, "seed": seed, "operator": op.kind,
                "num_params": n, "reduction": op.reduction, "model_dtype": str(op.model_dtype),
                "world_size": world.size, "model": model_fingerprint(op)}
    solve = dict(k=k, which=which, k_bottom=k_bottom, tol=tol, ncv=ncv, max_matvecs=max_matvecs,
                 rng=seed, return_eigenvectors=save_vectors, true_residuals=true_residuals,
                 shard=shard)
    if out is not None and shard is not None:
        return _sharded_eigs_job(op, out, shard, solve, settings, capacity, location, k, which,
                                 k_bottom, overwrite, resume, progress, attrs)
    if out is not None and world.is_main and not resume:
        check_output_path(out, overwrite)
        check_disk_space(out, rows, capacity)
    if out is None or not world.is_main:
        with _scratch_basis(rows, capacity, location, op.device) as basis:
            replica = _read_replica_state(out, basis) if resume else None
            return lanczos_eigsh(op, **solve, basis=basis, checkpoint=replica,
                                 progress=progress and world.is_main)
    if resume:
        _read_replica_state(out, None)  # the other ranks read before this one reopens it
    writer = SpectrumWriter(out, None if resume else provenance(op, seed=seed, **(attrs or {})),
                            overwrite=overwrite, append=resume)
    with writer:
        store = RunCheckpoint(writer, "eigs", n, 1, capacity)
        if resume:
            store.check_same_run(settings)
            _rewind_steps(writer, "eigs", store.count)
        else:
            _declare_eigs_file(writer, store, settings, k)
        checkpointer = LanczosCheckpointer(store, op)
        basis = store.basis(location, op.device, checkpointer.committed_column_map())
        writer.start_streaming()
        result = lanczos_eigsh(op, **solve, basis=basis, checkpoint=checkpointer,
                               callback=step_recorder(writer, "eigs", k, which, k_bottom),
                               progress=progress)
        writer.finish()
        write_eigs(writer, result, "eigs", {**_plain_settings(settings),
                                             "basis_location": location, "sharded": False})
    return result


def _declare_eigs_file(writer, store, settings, k):
    writer.set_attrs("eigs", {**_plain_settings(settings), "complete": False})
    writer.declare_steps("eigs", _eigs_row(k))
    store.declare(settings)


def shard_state_path(out, rank: int, world_size: int):
    """Where rank ``rank`` (> 0) of a run with sharded Lanczos vectors keeps its rows of the
    run's state: ``run.h5`` -> ``run.rank1-of-4.h5``, beside the run's own file (rank 0
    keeps its rows in the run's file)."""
    from pathlib import Path

    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")


def _sharded_eigs_job(op, out, shard, solve, settings, capacity, location, k, which,
                      k_bottom, overwrite, resume, progress, attrs):
    """:func:`eigs_job` with sharded vectors: each rank commits its rows of the state to its
    own file after every application; rank 0's file also holds the records and results.

    On resume the ranks agree on the last state that every one of them committed (a kill
    can fall between two ranks' commits, so a rank may be one state ahead: its previous
    slot still holds the agreed state, and its basis columns of that state are intact,
    since a step never overwrites the committed columns)."""
    main = current_world().is_main
    error, writer, store = None, None, None
    try:
        writer = _open_rank_file(op, out, settings["seed"], resume, overwrite, attrs,
                                 shard.local_dim, capacity)
        store = RunCheckpoint(writer, "eigs", shard.local_dim, 1, capacity)
        if resume:
            store.check_same_run(settings)
        elif main:
            _declare_eigs_file(writer, store, settings, k)
        else:
            store.declare(settings)
        count = store.count
    except Exception as exc:  # every rank learns of it, then each raises
        error, count = exc, 0
    agreed, = _agree_on_states([count], error, writer, op.device)
    with writer:
        store.rewind(agreed)
        if main and resume:
            _rewind_steps(writer, "eigs", agreed)
        checkpointer = LanczosCheckpointer(store, op if main else None)
        basis = store.basis(location, op.device, checkpointer.committed_column_map())
        writer.start_streaming()
        callback = step_recorder(writer, "eigs", k, which, k_bottom) if main else None
        result = lanczos_eigsh(op, **solve, basis=basis, checkpoint=checkpointer,
                               callback=callback, progress=progress and main)
        writer.finish()
        if main:
            write_eigs(writer, result, "eigs", {**_plain_settings(settings),
                                                 "basis_location": location, "sharded": True})
    return result


def _open_rank_file(op, out, seed, resume, overwrite, attrs, rows, capacity):
    """This rank's file of a run with sharded vectors: ``out`` on rank 0, else
    :func:`shard_state_path`; created (after checking the path, and the disk space for
    ``capacity`` basis columns of ``rows`` values) or reopened to resume."""
    world = current_world()
    main = world.is_main
    path = out if main else shard_state_path(out, world.rank, world.size)
    if not resume:
        check_output_path(path, overwrite)
        check_disk_space(path, rows, capacity)
        role = {} if main else {"shard_of": str(out), "shard_rank": world.rank}
        return SpectrumWriter(path, {**provenance(op, seed=seed, **role), **(attrs or {})},
                              overwrite=overwrite)
    if not main and not path.exists():
        raise ResumeError(f"{path} is missing: a run with sharded vectors resumes on the "
                          f"number of ranks it ran on, here {world.size}")
    return SpectrumWriter(path, append=True)


def _agree_on_states(counts, error, writer, device) -> list:
    """The states every rank can resume from: for each of ``counts`` (a rank's committed
    state counts, or 0/1 flags), the minimum over ranks. One all-reduce, with the error
    protocol (a rank that failed to open its file fails every rank with its message).
    Ranks a kill caught between two commits differ by one; more is not one run."""
    from .parallel.distributed import gather_rows

    try:
        table = gather_rows(counts, error, device=device, what="opening the run's files")
    except Exception:
        if writer is not None:
            writer.close()
        raise
    low, high = table.min(dim=0).values, table.max(dim=0).values
    if bool((high - low > 1).any()):
        writer.close()
        raise ResumeError(f"the ranks' files hold states {table.int().tolist()}: more than "
                          "one commit apart, not one run")
    return [int(v) for v in low]


def _read_before_main_reopens(read, device=None, default=None):
    """On resume under torch.distributed, every rank calls this before rank 0 reopens the
    run's file: the ranks that do not write call ``read()`` (they read the committed state)
    and return its value, rank 0 returns ``default``. A barrier opens the reading, one
    all-reduce with the error protocol closes it (a rank that fails fails every rank)."""
    world = current_world()
    if world.size == 1:
        return default
    import torch.distributed as dist

    from .parallel.distributed import gather_rows

    dist.barrier()
    value, error = default, None
    if not world.is_main:
        try:
            value = read()
        except Exception as exc:  # every rank learns of it, then each raises
            error = exc
    gather_rows([0.0], error, device=device, what="reading the committed state")
    return value


def _read_replica_state(out, basis):
    """The committed eigs state for a rank that does not write, its basis copied into this
    rank's own store ``basis`` (see :func:`_read_before_main_reopens`)."""
    return _read_before_main_reopens(lambda: ReplicaCheckpointer.read(out, "eigs", basis))


@contextlib.contextmanager
def _scratch_basis(rows, capacity, location, device):
    """A basis of this rank's own: in memory, or on disk in a temporary HDF5 file."""
    if location != "disk":
        yield TensorBasis(rows, capacity, device=device)
        return
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as tmp, h5py.File(f"{tmp}/basis.h5", "w") as handle:
        yield HDF5Basis(create_basis_dataset(handle, "basis", rows, capacity), capacity,
                        device=device)


def _eigs_row(k):
    return {"matvec": 0, "alpha": 0.0, "beta": 0.0, "ritz_values": np.zeros(k),
            "residual_bounds": np.zeros(k)}


def _plain_settings(settings):
    return {key: ("None" if value is None else value) for key, value in settings.items()}


def _rewind_steps(writer, group, count):
    """Drop records appended after the last committed state (a kill between the two)."""
    steps = writer.file[f"{group}/steps"]
    if int(steps["committed"][0]) > count:
        steps["committed"][0] = count
        writer.file.flush()


def check_disk_space(out, dim, capacity) -> None:
    """Refuse to start when the output's file system cannot hold the basis (before any pass)."""
    import shutil
    from pathlib import Path

    need = dim * 2 * capacity * 8 + 2 * dim * 8
    free = shutil.disk_usage(Path(out).resolve().parent).free
    if free < need:
        raise OutputPathError(
            f"not enough disk space for the Lanczos basis in {out}: {need / 2**30:.2f} GiB "
            f"needed ({capacity} columns of {dim} float64 values, double-buffered), "
            f"{free / 2**30:.2f} GiB free")


def slq_recorder(writer, group: str = "slq"):
    """An :func:`~lanczos_hessian.slq.slq` callback committing each lockstep step.

    Record: every probe's ``alpha`` and ``beta`` of this step (NaN for probes that had
    stopped), and the cumulative pass count. The quadrature of a cut-off run is rebuilt
    from these rows (:mod:`lanczos_hessian.analysis`).
    """

    def record(step, state):
        writer.append_step(group, {"alpha": state.alpha, "beta": state.beta,
                                   "num_passes": state.num_passes})

    return record


def write_slq(writer, result, group: str = "slq", settings: dict | None = None) -> None:
    """Store an :class:`~lanczos_hessian.slq.SLQResult` under ``group``, marked complete."""
    writer.write_arrays(group, {
        "nodes": result.nodes, "weights": result.weights, "alphas": result.alphas,
        "betas": result.betas, "num_nodes": result.num_nodes, "outliers": result.outliers,
        "outlier_residuals": result.outlier_residuals,
    })
    writer.set_attrs(group, {
        **(settings or {}), "dim": result.dim, "num_probes": result.num_probes,
        "num_steps": result.num_steps, "probe": result.probe, "seed": result.seed,
        "reorthogonalized": result.reorthogonalized, "bulk_mass": result.bulk_mass,
        "num_passes": result.num_passes, "num_matvecs": result.num_matvecs,
        "deflation_passes": result.deflation_passes,
        "deflation_matvecs": result.deflation_matvecs, "timings": result.timings,
        "complete": True,
    })


def slq_job(op, out=None, *, num_probes=10, num_steps=80, probe="rademacher", k_top=0,
            k_bottom=0, tol=1e-6, reorthogonalize=True, seed=0, overwrite=False,
            resume=False, memory_budget=None, shard_vectors=False, progress=True, attrs=None):
    """SLQ of ``op`` (deflated by ``k_top``/``k_bottom`` eigenpairs first), streamed to ``out``.

    The deflation eigenpairs come from one :func:`lanczos_eigsh` run (``LA``, ``SA`` or
    ``BE``) stored with their eigenvectors in the ``eigs`` group; the quadrature goes to
    ``slq``. With a file, both phases commit their state after every operator application
    and ``resume=True`` continues a killed run; under ``torch.distributed`` the ranks that do
    not write first copy the committed state from the file (:class:`ReplicaSLQCheckpointer`).
    The two phases draw from independent seeds spawned from ``seed``, so a resumed run draws
    the same probes. With ``shard_vectors`` (under ``torch.distributed``) both phases split
    their vectors and bases by rows across the ranks, each rank committing its rows to its
    own file as :func:`eigs_job` does. Returns ``(eigs result or None, slq result)``.
    """
    world = current_world()
    if resume and out is None:
        raise ResumeError("resuming SLQ needs the run's file (--out)")
    eigs_seed, slq_seed = (int(s.generate_state(1)[0]) for s in
                           np.random.SeedSequence(seed).spawn(2))
    k = k_top + k_bottom
    which = "BE" if k_top and k_bottom else "LA" if k_top else "SA"
    k_b = k_bottom if which == "BE" else None
    settings = {"num_probes": num_probes, "num_steps": num_steps, "probe": probe,
                "k_top": k_top, "k_bottom": k_bottom, "tol": tol, "seed": seed,
                "reorthogonalize": reorthogonalize, "operator": op.kind,
                "num_params": op.shape[0], "model": model_fingerprint(op)}
    n = op.shape[0]
    capacity = min(num_steps, n - k)
    eigs_capacity = min(max(2 * k + 1, 20), n)
    shard = Shard(n) if shard_vectors and world.size > 1 else None
    rows = shard.local_dim if shard else n
    location = choose_location(rows, capacity * num_probes, memory_budget, op.device)
    if shard is not None:
        phases = dict(k=k, which=which, k_bottom=k_b, tol=tol, eigs_seed=eigs_seed,
                      slq_seed=slq_seed, num_probes=num_probes, num_steps=num_steps,
                      probe=probe, reorthogonalize=reorthogonalize, progress=progress)
        if out is None:
            return _sharded_slq(op, shard, **phases)
        return _sharded_slq_job(op, out, shard, settings, phases, capacity, eigs_capacity,
                                location, overwrite, resume, attrs)
    if out is None or not world.is_main:
        with contextlib.ExitStack() as stack:
            make_store = _probe_store_factory(stack, location, op.device)
            eigs_replica, eigs_attrs, slq_replica = (
                _read_slq_replicas(out, k, n, eigs_capacity, make_store, op.device)
                if resume else (None, {}, None))
            eigs = None
            if isinstance(eigs_replica, tuple):  # the deflation phase had finished
                eigs = eigs_replica
            elif k:
                basis = (eigs_replica.basis if eigs_replica
                         else make_store("eigs", n, eigs_capacity))
                eigs = lanczos_eigsh(op, k=k, which=which, k_bottom=k_b, tol=tol, rng=eigs_seed,
                                     basis=basis, checkpoint=eigs_replica)
            factory = slq_replica.basis_factory if slq_replica else make_store
            result = slq(op, num_probes, num_steps, probe=probe, rng=slq_seed,
                         reorthogonalize=reorthogonalize, deflate=eigs,
                         progress=progress and world.is_main,
                         basis_factory=factory if reorthogonalize else None,
                         checkpoint=slq_replica)
            return eigs, _with_deflation_cost(result, eigs, eigs_attrs)
    if resume:
        _read_slq_replicas(out, k, n, eigs_capacity, None, op.device)  # the others read first
    else:
        check_output_path(out, overwrite)
    writer = SpectrumWriter(out, None if resume else provenance(op, seed=seed, **(attrs or {})),
                            overwrite=overwrite, append=resume)
    with writer:
        slq_store = RunCheckpoint(writer, "slq", n, 2 * num_probes, 0)
        eigs_store = RunCheckpoint(writer, "eigs", n, 1, eigs_capacity) if k else None
        if resume:
            slq_store.check_same_run(settings)
            _rewind_steps(writer, "slq", slq_store.count)
        else:
            _declare_slq_file(writer, settings, slq_store, eigs_store, k, num_probes,
                              capacity if reorthogonalize else 0)
        eigs = _deflation_phase(writer, op, eigs_store, k, which, k_b, tol, eigs_seed, location,
                                resume, progress) if k else None
        eigs_attrs = dict(writer.file["eigs"].attrs) if k else {}
        make_basis = probe_basis_factory(writer, "slq", location, op.device)
        writer.start_streaming()
        result = slq(op, num_probes, num_steps, probe=probe, rng=slq_seed,
                     reorthogonalize=reorthogonalize, deflate=eigs,
                     callback=slq_recorder(writer), progress=progress,
                     basis_factory=make_basis if reorthogonalize else None,
                     checkpoint=SLQCheckpointer(slq_store, op))
        writer.finish()
        result = _with_deflation_cost(result, eigs, eigs_attrs)
        write_slq(writer, result, "slq", _plain_settings(settings))
    return eigs, result


def _sharded_slq(op, shard, *, k, which, k_bottom, tol, eigs_seed, slq_seed, num_probes,
                 num_steps, probe, reorthogonalize, progress):
    """Both phases with sharded vectors and no file."""
    main = current_world().is_main
    eigs = (lanczos_eigsh(op, k=k, which=which, k_bottom=k_bottom, tol=tol, rng=eigs_seed,
                          shard=shard) if k else None)
    result = slq(op, num_probes, num_steps, probe=probe, rng=slq_seed,
                 reorthogonalize=reorthogonalize, deflate=eigs, progress=progress and main,
                 shard=shard)
    return eigs, _with_deflation_cost(result, eigs)


def _sharded_slq_job(op, out, shard, settings, phases, capacity, eigs_capacity, location,
                     overwrite, resume, attrs):
    """:func:`slq_job` with sharded vectors: every rank commits its rows of both phases'
    state to its own file (as :func:`_sharded_eigs_job`); rank 0's file holds the records
    and results, every rank's file the deflation eigenpairs once that phase is done.

    On resume the ranks agree on the deflation's committed state, on whether every rank
    finished it, and on the SLQ's committed state (minimum over ranks of each)."""
    main = current_world().is_main
    k, num_probes, rows = phases["k"], phases["num_probes"], shard.local_dim
    error = writer = slq_store = eigs_store = None
    try:
        writer = _open_rank_file(op, out, settings["seed"], resume, overwrite, attrs, rows,
                                 capacity * num_probes + eigs_capacity)
        slq_store = RunCheckpoint(writer, "slq", rows, 2 * num_probes, 0)
        eigs_store = RunCheckpoint(writer, "eigs", rows, 1, eigs_capacity) if k else None
        if resume:
            slq_store.check_same_run(settings)
        else:
            _declare_slq_file(writer, settings, slq_store, eigs_store, k, num_probes,
                              capacity if phases["reorthogonalize"] else 0)
        done = bool(k and writer.file["eigs"].attrs.get("complete", False))
        mine = [eigs_store.count if k else 0, float(done), slq_store.count]
    except Exception as exc:  # every rank learns of it, then each raises
        error, mine = exc, [0, 0, 0]
    eigs_count, all_done, slq_count = _agree_on_states(mine, error, writer, op.device)
    with writer:
        eigs, eigs_attrs = None, {}
        if k:
            eigs = _sharded_deflation(writer, op, eigs_store, shard, phases, location,
                                      eigs_count, bool(all_done), resume)
            eigs_attrs = dict(writer.file["eigs"].attrs)
        slq_store.rewind(slq_count)
        if main and resume:
            _rewind_steps(writer, "slq", slq_count)
        make_basis = probe_basis_factory(writer, "slq", location, op.device)
        writer.start_streaming()
        result = slq(op, num_probes, phases["num_steps"], probe=phases["probe"],
                     rng=phases["slq_seed"], reorthogonalize=phases["reorthogonalize"],
                     deflate=eigs, callback=slq_recorder(writer) if main else None,
                     progress=phases["progress"] and main,
                     basis_factory=make_basis if phases["reorthogonalize"] else None,
                     checkpoint=SLQCheckpointer(slq_store, op if main else None),
                     shard=shard)
        writer.finish()
        result = _with_deflation_cost(result, eigs, eigs_attrs)
        if main:
            write_slq(writer, result, "slq", {**_plain_settings(settings), "sharded": True})
    return eigs, result


def _sharded_deflation(writer, op, store, shard, phases, location, count, all_done, resume):
    """The deflation phase of :func:`_sharded_slq_job` on this rank: read back when every
    rank finished it, else computed or resumed from the agreed state; each rank writes the
    eigenpairs into its own file (rank 0 with its records)."""
    main = current_world().is_main
    group = writer.file["eigs"]
    if all_done:
        return _finished_deflation(group)
    written = bool(group.attrs.get("complete", False))  # this rank's, not every rank's
    k, which, k_bottom = phases["k"], phases["which"], phases["k_bottom"]
    store.rewind(count)
    checkpointer = LanczosCheckpointer(store, op if main else None)
    basis = store.basis(location, op.device, checkpointer.committed_column_map())
    if main and resume and not written:
        _rewind_steps(writer, "eigs", count)
    writer.start_streaming()
    callback = step_recorder(writer, "eigs", k, which, k_bottom) if main and not written \
        else None
    eigs = lanczos_eigsh(op, k=k, which=which, k_bottom=k_bottom, tol=phases["tol"],
                         rng=phases["eigs_seed"], basis=basis, checkpoint=checkpointer,
                         callback=callback, progress=phases["progress"] and main, shard=shard)
    writer.finish()
    if not written:
        write_eigs(writer, eigs, "eigs", {"k": k, "k_bottom": k_bottom, "sharded": True})
    return eigs


def _with_deflation_cost(result, eigs, eigs_attrs=None):
    """``result`` with the passes and products of the deflation eigenpairs counted in
    (taken from the eigenpair result, or from the file's ``eigs`` attributes when the
    deflation had finished before a resume)."""
    if eigs is None:
        return result
    if hasattr(eigs, "num_passes"):
        passes, matvecs = eigs.num_passes, eigs.num_matvecs
    else:
        passes = int((eigs_attrs or {}).get("num_passes", 0))
        matvecs = int((eigs_attrs or {}).get("num_matvecs", 0))
    return dataclasses.replace(result, num_passes=result.num_passes + passes,
                               num_matvecs=result.num_matvecs + matvecs,
                               deflation_passes=passes, deflation_matvecs=matvecs)


def _probe_store_factory(stack, location, device):
    """``basis_factory`` for the SLQ probes of a rank that does not write: in memory, or on
    disk in a temporary HDF5 file of its own (closed with ``stack``)."""
    if location != "disk":
        return lambda p, dim, capacity: TensorBasis(dim, capacity, device=device)
    import tempfile

    import h5py

    tmp = stack.enter_context(tempfile.TemporaryDirectory())
    handle = stack.enter_context(h5py.File(f"{tmp}/bases.h5", "w"))

    def make(p, dim, capacity):
        rows, name = min(1 << 18, dim), f"basis_{p}"
        if name in handle:  # made before and not used (a resume that needed no copy)
            del handle[name]
        return HDF5Basis(create_basis_dataset(handle, name, dim, capacity, rows),
                         capacity, device=device, block_rows=rows)

    return make


def _read_slq_replicas(out, k, dim, eigs_capacity, make_store, device):
    """On resume under torch.distributed, every rank calls this before rank 0 reopens the
    file: the ranks that do not write read the committed state of both phases (the finished
    deflation as ``(eigenvalues, eigenvectors, residual_bounds)``, else a
    :class:`ReplicaCheckpointer` or None; and a :class:`ReplicaSLQCheckpointer` or None).
    Also returns the file's ``eigs`` attributes (the deflation's cost); see
    :func:`_read_before_main_reopens`."""

    def read():
        eigs, attrs = (_read_deflation_replica(out, make_store("eigs", dim, eigs_capacity))
                       if k else (None, {}))
        return eigs, attrs, ReplicaSLQCheckpointer.read(out, "slq", make_store)

    return _read_before_main_reopens(read, device, default=(None, {}, None))


def _read_deflation_replica(out, basis):
    """The deflation phase as the file holds it, with the ``eigs`` attributes: its result
    when finished, else a :class:`ReplicaCheckpointer` with its basis copied into ``basis``
    (None when nothing was committed)."""
    from .storage.hdf5 import open_spectrum

    with open_spectrum(out) as f:
        group = f["eigs"]
        attrs = dict(group.attrs)
        if attrs.get("complete", False):
            return _finished_deflation(group), attrs
    return ReplicaCheckpointer.read(out, "eigs", basis), attrs


def _finished_deflation(group) -> tuple:
    """``(eigenvalues, eigenvectors, residual_bounds)`` of a finished ``eigs`` group: the
    ``deflate`` argument of :func:`~lanczos_hessian.slq.slq`."""
    return group["eigenvalues"][:], group["eigenvectors"][:], group["residual_bounds"][:]


def _declare_slq_file(writer, settings, slq_store, eigs_store, k, num_probes, capacity):
    """Create every dataset both phases will stream into (SWMR allows no new ones later)."""
    if eigs_store is not None:
        writer.set_attrs("eigs", {"k": k, "complete": False})
        writer.declare_steps("eigs", _eigs_row(k))
        eigs_store.declare({"k": k})
    writer.set_attrs("slq", {**_plain_settings(settings), "complete": False})
    writer.declare_steps("slq", {"alpha": np.zeros(num_probes), "beta": np.zeros(num_probes),
                                 "num_passes": 0})
    slq_store.declare(settings)
    state = writer.file[f"slq/{slq_store.path.split('/', 1)[1]}"]
    for p in range(num_probes if capacity else 0):
        create_basis_dataset(state, f"basis_{p}", slq_store.dim, capacity,
                             min(1 << 18, slq_store.dim))


def _deflation_phase(writer, op, store, k, which, k_bottom, tol, seed, location, resume,
                     progress):
    """The outliers: computed (committed step by step), or read back when already complete."""
    if resume and writer.file["eigs"].attrs.get("complete", False):
        return _finished_deflation(writer.file["eigs"])
    checkpointer = LanczosCheckpointer(store, op)
    basis = store.basis(location, op.device, checkpointer.committed_column_map())
    if resume:
        _rewind_steps(writer, "eigs", store.count)
    writer.start_streaming()
    eigs = lanczos_eigsh(op, k=k, which=which, k_bottom=k_bottom, tol=tol, rng=seed,
                         basis=basis, checkpoint=checkpointer,
                         callback=step_recorder(writer, "eigs", k, which, k_bottom),
                         progress=progress)
    writer.finish()
    write_eigs(writer, eigs, "eigs", {"k": k, "k_bottom": k_bottom})
    return eigs
