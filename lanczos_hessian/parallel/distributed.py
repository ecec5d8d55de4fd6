"""Process-group helpers: who am I, which device, one flat all-reduce that cannot hang.

Everything here is a no-op without an initialized ``torch.distributed`` process group, so
single-process code paths carry no special cases. Under ``torchrun`` (or Slurm with the usual
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` variables) :func:`init_from_env`
starts the group: gloo for CPU tensors, plus NCCL for CUDA tensors when CUDA is available
(``"cpu:gloo,cuda:nccl"``, so a model kept on the CPU of a GPU machine still works, and
object collectives run over gloo). The *local* rank picks the device; the *global* rank
decides who writes files and prints progress (rank 0).

No hang on a one-rank failure
-----------------------------
A collective waits for every rank: if one rank raises during its local part of a data pass
(a NaN loss, a bad batch, a fingerprint mismatch, any exception) and leaves, the others
would wait in the all-reduce until the process-group timeout. :func:`all_reduce_or_raise`
prevents that: the reduced buffer carries an error flag, a failing rank sets it and *still*
joins the one all-reduce, and then every rank sees the flag. Only on that failure path the
ranks exchange their error messages (``all_gather_object``); the failing ranks re-raise their
own exception and the others raise :class:`RankFailedError` naming the failing rank(s) and
their messages. The group stays usable afterwards (every rank made the same collectives).
What this cannot catch (a rank killed outright, a rank that skips a collective) ends at the
process-group timeout: ``init_from_env(timeout_s=...)`` or the environment variable
``LANCZOS_HESSIAN_TIMEOUT`` (seconds; default 1800).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import DistributedError, RankFailedError

DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "LANCZOS_HESSIAN_TIMEOUT"


@dataclass(frozen=True)
class World:
    """Rank, local rank and size of the current process group (0, 0, 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (global rank 0)."""
        return self.rank == 0


def is_distributed() -> bool:
    """True when a process group of more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_world() -> World:
    """The process group in use, or the trivial single-process world."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), local_rank=_local_rank(), size=dist.get_world_size())


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def launched_distributed() -> bool:
    """True when the environment describes a multi-process launch (torchrun, Slurm)."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) > 1


def resolve_timeout(timeout_s: float | None = None) -> float:
    """The collective timeout in seconds: the argument, else ``$LANCZOS_HESSIAN_TIMEOUT``,
    else :data:`DEFAULT_TIMEOUT_S`; always finite and positive."""
    source = "timeout_s"
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT_S
        source = f"${TIMEOUT_ENV}"
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ValueError(f"{source}={raw!r} is not a number of seconds") from None
    if not (0 < float(timeout_s) < float("inf")):
        raise ValueError(f"{source} must be a finite positive number of seconds, "
                         f"got {timeout_s!r}")
    return float(timeout_s)


def init_from_env(timeout_s: float | None = None) -> World:
    """Start the process group from the launcher's environment, if there is one.

    Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` are mapped to the variables
    ``torch.distributed`` reads (``MASTER_ADDR``/``MASTER_PORT`` must be exported by the job
    script). ``timeout_s`` bounds every wait in a collective (see :func:`resolve_timeout`):
    a rank that died or skipped a collective ends the run after that long instead of never.
    Returns the resulting :class:`World`.
    """
    if dist.is_available() and dist.is_initialized():
        return current_world()
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
        ntasks = os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1"))
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", ntasks)
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if not launched_distributed():
        return World()
    timeout = resolve_timeout(timeout_s)
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} describes a multi-process run but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; launch with "
            "torchrun, or export them in the Slurm job script (MASTER_ADDR: the first node, "
            "MASTER_PORT: a free port)"
        )
    if torch.cuda.is_available():
        torch.cuda.set_device(_local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"  # NCCL for CUDA tensors, gloo for CPU ones and objects
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    global _STARTED_HERE
    _STARTED_HERE = True
    return current_world()


_STARTED_HERE = False  # whether init_from_env started a process group in this process


def exit_process(code: int) -> None:
    """End the process with ``code``. After a process group ran here (:func:`init_from_env`),
    flush the standard streams and leave with ``os._exit``: during interpreter finalization
    gloo's threads may still release tensors and abort the process ("terminate called
    without an active exception", seen here about once in 7 two-rank runs even after
    :func:`shutdown`), which would turn a finished run into a failed exit code."""
    if not _STARTED_HERE:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def group_running() -> bool:
    """Whether a ``torch.distributed`` process group is initialized in this process."""
    return dist.is_available() and dist.is_initialized()


def shutdown(orderly: bool = True) -> None:
    """End the process group, if one is running: after a barrier when every rank finished
    alike (``orderly``), so that no rank tears down its connections while another still
    uses them (gloo aborts the process then), else at once."""
    if not group_running():
        return
    try:
        if orderly:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def default_device(world: World | None = None) -> torch.device:
    """``cuda:<local rank>`` when CUDA is available, else the CPU."""
    world = world or current_world()
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def all_reduce_sum(buffer: torch.Tensor) -> torch.Tensor:
    """Sum ``buffer`` over all ranks in place (one collective); identity without a group."""
    if is_distributed():
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s copy on every rank; identity without a group."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def common_seed(seed: int | None = None) -> int:
    """``seed`` itself, or (for ``None``) fresh entropy drawn on rank 0 and shared by all.

    For solvers that draw random vectors: every rank must draw the same ones (the operators
    check this on every application, see :mod:`lanczos_hessian.curvature.operators`). One small
    collective when ``seed`` is None under a process group; no collective otherwise.
    """
    if seed is not None:
        return int(seed)
    import numpy as np

    value = [int(np.random.default_rng().integers(2**63))]
    if is_distributed():
        dist.broadcast_object_list(value, src=0)
    return value[0]


def all_reduce_or_raise(buffer: torch.Tensor, error: BaseException | None, *,
                        flag_index: int = -1, what: str = "a collective step") -> torch.Tensor:
    """The one all-reduce (sum) of a step, joined by every rank even after a local failure.

    ``buffer[flag_index]`` is the error flag: 0 on entry, set here to 1 when ``error`` (this
    rank's exception from its local part, or None) is given. After the sum, a nonzero flag
    means some rank failed: the ranks gather the messages (only then), the failing ranks
    re-raise their own exception and the others raise :class:`RankFailedError`. Without a
    process group this re-raises ``error`` or returns ``buffer`` unchanged.
    """
    if error is not None:
        buffer[flag_index] = 1.0
    if not is_distributed():
        if error is not None:
            raise error
        return buffer
    try:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    except Exception as exc:
        if error is not None:
            raise error
        raise _collective_failed(what, exc) from exc
    if float(buffer[flag_index]) != 0.0:
        _raise_gathered(error, what)
    return buffer


def gather_rows(values, error: BaseException | None = None, *, device=None,
                what: str = "a consistency check") -> torch.Tensor:
    """Every rank's float64 ``values`` (``k`` numbers) as a ``(world size, k)`` tensor.

    One all-reduce of a one-hot layout (each rank fills its own row, adding zeros is exact),
    with the error protocol of :func:`all_reduce_or_raise`. For checks made once (at
    construction); identity (one row) without a process group.
    """
    row = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    world = current_world()
    k = row.numel()
    buffer = torch.zeros(world.size * k + 1, dtype=torch.float64, device=device)
    if error is None:
        buffer[world.rank * k:(world.rank + 1) * k] = row.to(buffer.device)
    all_reduce_or_raise(buffer, error, what=what)
    return buffer[:-1].view(world.size, k).cpu()


def _collective_failed(what: str, exc: BaseException) -> DistributedError:
    world = current_world()
    return DistributedError(
        f"rank {world.rank}: the all-reduce of {what} failed ({type(exc).__name__}: {exc}); "
        "another rank has died, skipped the collective, or the process-group timeout "
        f"(${TIMEOUT_ENV} / init_from_env(timeout_s=...)) ran out"
    )


def _raise_gathered(error: BaseException | None, what: str):
    """Failure path: exchange ``(rank, type, message)`` of the failing ranks and raise."""
    world = current_world()
    mine = None if error is None else (world.rank, type(error).__name__, str(error))
    gathered = [None] * world.size
    try:
        dist.all_gather_object(gathered, mine)
    except Exception as exc:
        if error is not None:
            raise error
        raise _collective_failed(f"the error messages after {what}", exc) from exc
    if error is not None:
        raise error
    failures = [g for g in gathered if g is not None]
    listed = "; ".join(f"rank {r} raised {name}: {message}" for r, name, message in failures)
    raise RankFailedError(f"{what} failed on another rank (this is rank {world.rank} of "
                          f"{world.size}): {listed}", failures)
