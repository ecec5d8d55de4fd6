"""HDF5 spectrum files: an append-only writer with a committed counter, and a reader.

Layout (format ``lanczos_hessian.spectrum``, version :data:`FORMAT_VERSION`)::

    /                       attrs: format, format_version, package_version, torch_version,
                                   created, command, and the run's provenance (num_params,
                                   num_samples, loss, reduction, dtype, seed, world_size, ...)
    /<run>/                 one group per computation ("eigs", "slq", ...); attrs: its
                            settings and, once finished, its timings and "complete" = True
    /<run>/<name>           fixed arrays written once (e.g. eigenvalues, residual_bounds)
    /<run>/steps/<name>     growing records, one row per operator application; the
                            one-element dataset steps/committed counts the complete rows
    /<run>/state/...        the resume state of a run (checkpoint.py): present while it
                            runs, dropped when it finishes unless kept (keep_state=True)

Every dataset carries the attributes ``description``, ``units`` and ``order``
(:mod:`~lanczos_hessian.storage.schema`); attributes hold numbers as numbers (an absent
attribute means "not set", e.g. no ``max_matvecs`` cap), and ``docs/FORMAT.md`` is the
written specification of every group, dataset and attribute.

A record is appended by resizing every dataset of ``steps``, writing the row, then raising
the counter ``steps/committed`` (a one-element dataset) and flushing. Readers trust that
counter only, so a file cut off by a crash or ``kill -9`` is readable up to its last
committed step. Long runs stream in HDF5's SWMR mode, so another process can follow them.

One process writes a file: every :class:`SpectrumWriter` holds the file's lock
(:mod:`~lanczos_hessian.storage.lock`) while it is open. A writer killed outside SWMR mode (creating
the file, between two phases, writing results) leaves HDF5's "open for write" flags set, which makes
HDF5 refuse the file; readers and resumes clear them
(:func:`~lanczos_hessian.storage.recovery.recover_left_open`) once the lock shows that no writer is
alive. A full disk ends a writer with :class:`~lanczos_hessian.errors.DiskFullError` after a clean
close (its reserve given back), and a write that HDF5 cannot do otherwise is a
:class:`SpectrumFileError`.

The module is split by job: :mod:`~lanczos_hessian.storage.paths` (output checks),
:mod:`~lanczos_hessian.storage.writer`, :mod:`~lanczos_hessian.storage.reader` and
:mod:`~lanczos_hessian.storage.recovery` (opening, left-open files, dropping state); the
names are importable from here as before.
"""

from __future__ import annotations

from .paths import (check_disk_space, check_free_space, check_output_location,
                    check_output_path, check_resume_path, format_bytes, shard_state_path)
from .reader import COMMITTED, SpectrumRecord, decode_attrs, read_file, read_group
from .recovery import (FORMAT, FORMAT_VERSION, LEFT_OPEN_WAIT, clear_left_open,
                       drop_resume_state, open_spectrum, recover_left_open)
from .writer import DEFAULT_RESERVE, SpectrumWriter, attr_items, is_disk_full, timing_attrs

__all__ = ["COMMITTED", "DEFAULT_RESERVE", "FORMAT", "FORMAT_VERSION", "LEFT_OPEN_WAIT",
           "SpectrumRecord", "SpectrumWriter", "attr_items", "check_disk_space",
           "check_free_space", "check_output_location", "check_output_path",
           "check_resume_path", "clear_left_open", "decode_attrs", "drop_resume_state", "format_bytes",
           "is_disk_full", "open_spectrum", "read_file", "read_group", "recover_left_open",
           "shard_state_path", "timing_attrs"]
