"""Where a run's file goes: the output path's checks, the disk space a run needs, and the
path of a sharded rank's own file. Checked before any operator application."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputPathError

__all__ = ["EMPTY_SHELL_BYTES", "empty_shell_hint", "check_output_path", "check_output_location", "check_resume_path",
           "check_disk_space", "check_free_space", "format_bytes", "shard_state_path"]


def check_output_path(path, overwrite: bool = False) -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be created (before any work)."""
    path = check_output_location(path)  # a directory or a device: refused as such
    if path.exists() and not overwrite:
        raise OutputPathError(f"output file {path} exists; pass overwrite=True (--overwrite) "
                              "to replace it, or choose another path" + empty_shell_hint(path))
    return path


#: A file this small holds no run (an HDF5 header alone takes more).
EMPTY_SHELL_BYTES = 1024


def empty_shell_hint(path) -> str:
    """For a file too small to hold a run: the way out (a run killed while creating its file,
    before files were created under a temporary name, left such a shell)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return ""
    if size >= EMPTY_SHELL_BYTES:
        return ""
    return (f"; at {size} bytes it holds no run (a run killed while creating it leaves such "
            "a shell): rerun the command with --overwrite (overwrite=True) to replace it")


def check_output_location(path) -> Path:
    """The checks of :func:`check_output_path` but whether the file exists: not a directory,
    not a symbolic link, in a writable directory of a file system that holds files."""
    path = Path(path)
    if path.is_symlink():
        raise OutputPathError(f"output path {path} is a symbolic link (to "
                              f"{os.readlink(path)}); refusing to write through it: pass the "
                              "target's own path, or remove the link")
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a directory: --out (out) names the "
                              f"run's file, e.g. {path}/run.h5")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"output path {path} is not a regular file (a device, a pipe or "
                              "a socket): --out (out) must be a regular file or absent")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write {path}: directory {parent} is not writable")
    try:
        blocks = os.statvfs(parent).f_blocks
    except OSError:
        blocks = 1
    if blocks == 0:
        raise OutputPathError(f"cannot write {path}: directory {parent} is on a file system of "
                              "size 0 (a virtual file system such as /proc or /sys holds no "
                              "files); choose another path")
    return path


def check_resume_path(path) -> Path:
    """The file a resume continues: when it exists, a regular file (links followed), not a
    directory or a device (checked before any model is built)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot resume {path}: it is a directory, not a run's file "
                              f"(--out names the file, e.g. {path}/run.h5)")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"cannot resume {path}: it is not a regular file (a device, a "
                              "pipe or a socket)")
    return path


def check_disk_space(out, dim: int, capacity: int, reserve: int = 0) -> None:
    """Refuse to start when the output's file system cannot hold ``capacity`` basis vectors of
    ``dim`` float64 values, double-buffered, and two state vectors (before any pass), plus
    the writer's ``reserve``."""
    import shutil

    need = dim * 2 * capacity * 8 + 2 * dim * 8 + reserve
    free = shutil.disk_usage(Path(out).resolve().parent).free
    if free < need:
        raise OutputPathError(
            f"not enough disk space for the Lanczos basis in {out}: {format_bytes(need)} "
            f"needed ({capacity} columns of {dim} float64 values, double-buffered, and a "
            f"reserve of {format_bytes(reserve)}), {format_bytes(free)} free")


def check_free_space(out, need: int, what: str) -> None:
    """Refuse to write ``out`` when its file system has fewer than ``need`` bytes free."""
    import shutil

    try:
        free = shutil.disk_usage(Path(out).resolve().parent).free
    except OSError:
        return  # cannot tell; the reserve and the disk-full handling still hold
    if free < need:
        raise OutputPathError(f"not enough disk space for {what} of {out}: "
                              f"{format_bytes(need)} needed, {format_bytes(free)} free")


def format_bytes(n: float) -> str:
    """``123 bytes``, ``4.0 KiB``, ``12.5 MiB``, ``3.20 GiB``."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)):
        if n < 1024 * scale or unit == "TiB":
            return f"{n / scale:.{2 if unit in ('GiB', 'TiB') else 1}f} {unit}"
    return f"{n} bytes"


def shard_state_path(out, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` (> 0) of a run with sharded Lanczos vectors keeps its rows of the
    run's state: ``run.h5`` -> ``run.rank1-of-4.h5``, beside the run's own file (rank 0
    keeps its rows in the run's file)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")
