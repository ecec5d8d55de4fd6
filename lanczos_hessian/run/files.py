"""The files of a run: this process's store (created, reopened or added to), the ranks'
agreement on where to continue, scratch stores for processes without a file, and the stored
result of a run that finished and dropped its state.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..contract import identity_of
from ..errors import LanczosHessianError, ResumeError, SpectrumFileError
from ..linalg.basis import TensorBasis
from ..parallel.distributed import current_world
from ..storage.agreement import agree_on_states
from ..storage.settings import check_settings, saved_settings, state_dropped
from ..storage.disk_basis import HDF5Basis, create_basis_dataset
from ..storage.hdf5 import check_disk_space, check_output_path, open_spectrum, shard_state_path
from ..storage.runstore import RunStore
from .plan import Role, provenance, reserve_bytes

logger = logging.getLogger(__name__)

__all__ = ["scratch_stores", "open_and_agree", "finished_result", "record_num_samples",
           "remove_shard_file"]


def scratch_stores(stack, location: str, device):
    """``make(i, dim, capacity)`` for bases of this process's own: in memory, or in a
    temporary HDF5 file closed with ``stack`` (a ``contextlib.ExitStack``)."""
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


def _open_store(role: Role, seed, overwrite, attrs, disk_vectors, identity,
                append: bool) -> RunStore:
    """This process's store: the run's file (rank 0) or its rows' (other ranks, sharded);
    created after checking the path and the disk space for ``disk_vectors`` basis vectors,
    reopened to resume, or (``append``) reopened to add a run to an existing file."""
    world = current_world()
    path = Path(role.out if role.main else shard_state_path(role.out, world.rank, world.size))
    reserve = reserve_bytes(role.rows, disk_vectors)
    if role.resume or (append and path.exists()):
        if not role.main and not path.exists():
            raise ResumeError(f"{path} is missing: a run with sharded vectors resumes on the "
                              f"number of ranks it ran on, here {world.size}")
        if not role.resume:
            check_disk_space(path, role.rows, disk_vectors, reserve)
        return RunStore.reopen(path, reserve=reserve)
    check_output_path(path, overwrite)
    check_disk_space(path, role.rows, disk_vectors, reserve)
    shard = {} if role.main else {"shard_of": str(role.out), "shard_rank": world.rank}
    return RunStore.create(path, {**provenance(role.op, seed=seed, identity=identity, **shard),
                                  **(attrs or {})}, overwrite=overwrite, reserve=reserve)


def open_and_agree(role: Role, prepare, num_counts: int, *, seed, overwrite, attrs,
                   disk_vectors, identity=None, append=False):
    """Open this process's store and declare or check it with ``prepare(store) ->
    (prepared, counts)``; return ``(store, prepared, counts agreed by every rank)``. Sharded
    ranks agree on the minimum of each count (one collective with the error protocol: a
    rank that cannot open its file fails every rank with its message); a single writer
    keeps its own counts."""
    if role.shard is None:
        store = _open_store(role, seed, overwrite, attrs, disk_vectors, identity, append)
        try:
            return (store, *prepare(store))
        except BaseException:
            store.writer.close()  # and its lock: a refused resume leaves the file free
            raise
    store, error, prepared, counts = None, None, None, [0] * num_counts
    try:
        store = _open_store(role, seed, overwrite, attrs, disk_vectors, identity, append)
        prepared, counts = prepare(store)
    except Exception as exc:  # every rank learns of it, then each raises
        error = exc
    writer = store.writer if store is not None else None
    return store, prepared, agree_on_states(counts, error, writer, role.device)


def finished_result(out, group: str, settings: dict, read):
    """On a resume: ``read(file)``, the stored result of run ``group`` when it finished and
    its resume state was dropped (there is nothing to compute), after checking that the
    settings are the run's; None when the file holds a state to continue (or no file: the
    resume itself says so). Every rank reads it alike."""
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


def record_num_samples(store: RunStore, op) -> None:
    """The sample count over all ranks, known after the first pass for an iterable of batches
    (the file's provenance was written before it), when the operator offers one."""
    num_samples = identity_of(op)["provenance"].get("num_samples")
    if num_samples is not None:
        store.set_attrs("/", {"num_samples": num_samples})


def remove_shard_file(role: Role) -> None:
    """A finished sharded run: ranks other than 0 delete their files of state."""
    if role.has_file and not role.main:
        world = current_world()
        shard_state_path(role.out, world.rank, world.size).unlink(missing_ok=True)
