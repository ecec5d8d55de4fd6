"""One run path: an operator, a solver, its file and its resume, as every entry point runs them.

:func:`eigs` (eigenpairs) and :func:`slq` (the spectral density, deflated by eigenpairs,
optionally to a requested error) are what the command line, the demo and the experiment
scripts call. The package reads like its plan:

* :mod:`~lanczos_hessian.run.plan`: the settings, the seeds and this process's role,
  decided ONCE from the operator's contract (:mod:`lanczos_hessian.contract`);
* :mod:`~lanczos_hessian.run.driver`: the phases of a run (named runs of its file,
  :class:`~lanczos_hessian.storage.runstore.RunStore`), each restore -> step -> commit, with
  the four roles written once;
* :mod:`~lanczos_hessian.run.entry`: the entry points, each its checks and its phases;
* :mod:`~lanczos_hessian.run.files`: opening the store and the ranks' agreement.

Each entry point hands every solver the plumbing its role implies
(:class:`~lanczos_hessian.linalg.hooks.Hooks`); the four roles (no file, writer, replica,
shard) and what each keeps are tabled in :mod:`~lanczos_hessian.run.plan`.

Rank 0 of a run with a file is its writer; the other ranks are replicas of it, unless the vectors
are sharded (``shard_vectors``), in which case every rank keeps its rows of the state in a file of
its own (:func:`~lanczos_hessian.storage.hdf5.shard_state_path`). Where the bases live follows the
memory budget (:func:`~lanczos_hessian.linalg.basis.choose_location`). When a run finishes, its file
keeps results, step records and provenance only: its resume state (most of the file for SLQ: one
basis of ``num_steps`` vectors per probe) is dropped, unless ``keep_state=True`` (``--keep-state``).
A resume of a finished run whose state was dropped (``resume=True`` after a kill that came too late,
or twice) computes nothing: with the same settings it returns the stored result
(:func:`~lanczos_hessian.run.files.finished_result`); with other settings, or one that needs the
state (eigenvectors that were not saved), it is refused naming ``--keep-state``. Each job checks its
output path before any operator application, streams one record per application (so a killed job
keeps what it computed), and writes the final arrays with their provenance.

The seeds: ``eigs`` starts the eigensolver from ``seed``; ``slq`` splits ``seed`` into the
deflation's seed and the probes' seed (:func:`~lanczos_hessian.linalg.probes.split_seed`),
exactly as :func:`~lanczos_hessian.linalg.deflated.deflated_slq`, so the same seed gives the same
numbers from Python, the command line and the demo. The file records the run's ``seed`` at
its root (and in the settings of its groups), the start vector's seed as ``eigs`` attribute
``start_seed`` and the probes' as ``slq`` attribute ``probe_seed``.
"""

from .entry import eigs, slq
from .plan import EIGS_IDENTITY, SLQ_IDENTITY, identity_settings, provenance

__all__ = ["eigs", "slq", "eigs_job", "slq_job", "provenance", "identity_settings",
           "EIGS_IDENTITY", "SLQ_IDENTITY"]

#: The names the command line and earlier releases used.
eigs_job = eigs
slq_job = slq
