"""The entry points: :func:`eigs` and :func:`slq`, each its checks, its plan and its phases
(:class:`~lanczos_hessian.run.driver.Phase`) handed to the driver."""

from __future__ import annotations

from pathlib import Path

from .. import validate
from ..analysis.spectrum import spectrum_of_run
from ..contract import identity_of
from ..errors import OutputPathError, ResumeError
from ..linalg.deflated import DeflatedPlan, with_deflation_cost
from ..linalg.eigsh import check_arguments, default_ncv, lanczos_eigsh
from ..linalg.slq import check_slq_arguments, check_target
from ..parallel.distributed import current_world
from ..storage.hdf5 import open_spectrum
from ..storage.records import (adaptive_recorder, declare_eigs, declare_slq,
                               finished_eigenpairs, plain_settings, read_eigs_result,
                               read_slq_result, slq_recorder, step_recorder, write_eigs,
                               write_slq)
from .driver import Phase, run_phases
from .files import finished_result
from .plan import (EIGS_IDENTITY, SLQ_IDENTITY, check_seed, decide_role, identity_settings,
                   provenance)

__all__ = ["eigs", "slq"]


def eigs(op, out=None, *, k=20, which="LA", k_bottom=None, tol=1e-6, ncv=None,
         max_matvecs=None, block_size=1, seed=0, save_vectors=False, true_residuals=True,
         overwrite=False, resume=False, memory_budget=None, shard_vectors=False, progress=True,
         attrs=None, keep_state=False, name="eigs", append=False):
    """Eigenpairs of ``op`` by :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`, committed
    to ``out`` after every pass.

    ``memory_budget`` (bytes or ``"6GiB"``) decides where the Lanczos basis lives: in device
    memory if it fits beside the working vectors, else on disk (streamed in row blocks). With
    a file, the basis is always kept in it too, with the rest of the state, so that
    ``resume=True`` continues a killed run from its last committed application. Under
    ``torch.distributed`` every rank runs the recurrence and rank 0 writes; with
    ``shard_vectors`` each rank keeps only its rows of the vectors and the basis, and of the
    state, in a file of its own (:mod:`lanczos_hessian.run.plan`). The finished file keeps
    the resume state only with ``keep_state=True``; ``resume=True`` on a finished file whose
    state was dropped returns the stored result (nothing is computed). ``name`` is the run's
    group in the file (``"blocks/fc1/eigs"``: a block's spectrum) and ``append=True`` adds
    the run to an existing file, whose other runs keep their state.

    Examples
    --------
    Any ``LinearOperator`` runs with a file (its identity is its class, size and dtype):

    >>> import tempfile, numpy as np
    >>> from scipy.sparse.linalg import aslinearoperator
    >>> A = aslinearoperator(np.diag(np.arange(1.0, 41.0)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     result = eigs(A, f"{tmp}/run.h5", k=2, tol=1e-10, progress=False)
    >>> np.round(result.eigenvalues, 8).tolist()
    [39.0, 40.0]
    """
    n = op.shape[0]
    check_arguments(k, n, which, tol, ncv, max_matvecs, k_bottom, block_size)
    check_seed(seed)
    capacity = default_ncv(k, n, block_size, which) if ncv is None else min(ncv, n)
    role = decide_role(op, out, shard_vectors, capacity, memory_budget, resume,
                       named=f"--k {k} (k)" if ncv is None else f"--ncv {ncv} (ncv)")
    identity = identity_of(op)
    settings = {"k": k, "which": which, "k_bottom": k_bottom, "tol": tol, "ncv": ncv,
                "block_size": block_size, "max_matvecs": max_matvecs, "seed": seed,
                "world_size": current_world().size,
                **identity_settings(identity, EIGS_IDENTITY)}
    if resume:
        stored = finished_result(out, name, settings,
                                 lambda f: _stored_eigs(f, name, out, save_vectors))
        if stored is not None:
            return stored
    elif append:
        _check_new_run(out, name)

    def solve(hooks, callback, earlier):
        return lanczos_eigsh(op, k=k, which=which, k_bottom=k_bottom, tol=tol, ncv=ncv,
                             max_matvecs=max_matvecs, block_size=block_size, rng=seed,
                             return_eigenvectors=save_vectors, true_residuals=true_residuals,
                             callback=callback, progress=progress and role.main, hooks=hooks)

    written = {**plain_settings(settings), "start_seed": seed, "basis_location": role.location,
               "sharded": role.shard is not None}
    phase = Phase(name, block_size, capacity, 1, solve, state_settings=settings,
                  check=settings, declare=lambda store: declare_eigs(store, settings, k, name),
                  recorder=lambda store: step_recorder(store, name, k, which, k_bottom),
                  write=lambda store, result: write_eigs(store, result, name, written))
    return run_phases(role, [phase], seed=seed, overwrite=overwrite, attrs=attrs,
                      identity=identity, keep_state=keep_state, disk_vectors=capacity,
                      append=append)[0]


def slq(op, out=None, *, num_probes=10, num_steps=80, probe="rademacher", k_top=0, k_bottom=0,
        tol=1e-6, reorthogonalize=True, seed=0, overwrite=False, resume=False,
        memory_budget=None, shard_vectors=False, progress=True, attrs=None, keep_state=False,
        target_error=None, confidence=0.95, max_probes=200):
    """SLQ of ``op`` deflated by its ``k_top`` largest and ``k_bottom`` smallest eigenpairs,
    streamed to ``out``; returns the :class:`~lanczos_hessian.analysis.spectrum.Spectrum`
    that :func:`~lanczos_hessian.analysis.spectrum.read_spectrum` reads back from ``out``
    (the same path, attributes, ``summary()``, ``to_dataframe()`` and repr; without a file,
    the provenance a file would hold), the solvers' results as its ``.eigs`` (the deflation
    eigenpairs, None without deflation) and ``.slq``. It unpacks as that pair:
    ``eigs, bulk = slq(op, out, ...)``.

    The deflation eigenpairs come from one eigensolver run
    (:class:`~lanczos_hessian.linalg.deflated.DeflatedPlan`) stored with their eigenvectors in
    the ``eigs`` group; the quadrature goes to ``slq``. The two phases draw from the two
    seeds :func:`~lanczos_hessian.linalg.probes.split_seed` spawns from ``seed`` (the numbers
    of :func:`~lanczos_hessian.linalg.deflated.deflated_slq` with ``rng=seed``). With
    ``target_error``, rounds of ``num_probes`` probes run until the trace is known to within
    ``target_error`` at ``confidence`` (at most ``max_probes`` probes:
    :func:`~lanczos_hessian.linalg.slq.adaptive_slq`). With a file, both phases commit their
    state after every operator application and ``resume=True`` continues a killed run from
    either phase (from any round); ``memory_budget``, ``shard_vectors``, the ranks' roles and
    ``keep_state`` are as in :func:`eigs` (a resume of a finished file whose state was
    dropped returns the stored eigenpairs and quadrature).

    Examples
    --------
    A flat bulk and two outliers, deflated: ``tr A = 38 + 5 + 7``, exactly.

    >>> import tempfile, numpy as np
    >>> from scipy.sparse.linalg import aslinearoperator
    >>> A = aslinearoperator(np.diag([1.0] * 38 + [5.0, 7.0]))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     spectrum = slq(A, f"{tmp}/run.h5", num_probes=3, num_steps=4, k_top=2,
    ...                    progress=False)
    >>> pairs, bulk = spectrum  # the solvers' results: spectrum.eigs, spectrum.slq
    >>> np.round(pairs.eigenvalues, 8).tolist(), round(spectrum.trace().value, 8)
    ([5.0, 7.0], 50.0)
    >>> spectrum.path.name, spectrum.attrs["num_params"], bulk.num_probes
    ('run.h5', 40, 3)
    """
    check_seed(seed)
    plan = DeflatedPlan.make(k_top, k_bottom, seed)
    k, which, k_b = plan.k, plan.which, plan.k_bottom
    n = op.shape[0]
    check_slq_arguments(num_probes, num_steps, probe)  # before any file is created
    adaptive = target_error is not None
    if adaptive:
        check_target(target_error, confidence)
        validate.integer("num_probes", num_probes, low=2, hint=" (probes per round: a "
                         "standard error needs two)")
        validate.integer("max_probes", max_probes, low=num_probes)
    if k:
        check_arguments(k, n, which, tol, k_bottom=k_b)
    capacity = min(num_steps, n - k)
    eigs_capacity = default_ncv(k, n, 1, which)
    role = decide_role(op, out, shard_vectors, capacity * num_probes, memory_budget, resume,
                       named=f"--num-steps {num_steps} x --num-probes {num_probes}")
    if adaptive and role.shard is not None:
        raise ResumeError("an adaptive SLQ run (target_error) keeps whole vectors: run it "
                          "without --shard-vectors")
    identity = identity_of(op)
    width = {"probes_per_round": num_probes, "target_error": target_error,
             "confidence": confidence, "max_probes": max_probes} if adaptive else {
        "num_probes": num_probes}
    settings = {**width, "num_steps": num_steps, "probe": probe, "k_top": k_top,
                "k_bottom": k_bottom, "tol": tol, "seed": seed,
                "reorthogonalize": reorthogonalize, **identity_settings(identity, SLQ_IDENTITY)}
    show = progress and role.main

    def spectrum(eigenpairs, bulk):
        return spectrum_of_run(eigenpairs, bulk, out,
                               {**provenance(op, seed=seed, identity=identity), **(attrs or {})},
                               read_file_attrs=role.main)

    if resume:
        stored = finished_result(out, "slq", settings, lambda f: (
            read_eigs_result(f["eigs"]) if k else None, read_slq_result(f["slq"])))
        if stored is not None:
            return spectrum(*stored)
    extra = {"sharded": True} if role.shard is not None else {}
    phases = [_deflation_phase(op, plan, tol, eigs_capacity, show, extra)] if k else []

    def quadrature(hooks, callback, earlier):
        eigenpairs = earlier[0] if k else None
        result = plan.quadrature(op, eigenpairs, num_probes=num_probes, num_steps=num_steps,
                                 probe=probe, reorthogonalize=reorthogonalize,
                                 target_error=target_error, confidence=confidence,
                                 max_probes=max_probes, callback=callback, progress=show,
                                 hooks=hooks)
        if eigenpairs is None:
            return result
        return with_deflation_cost(result, eigenpairs.num_passes, eigenpairs.num_matvecs)

    phases.append(Phase(
        "slq", 2 * num_probes, capacity, num_probes if reorthogonalize else 0, quadrature,
        state_settings=settings, check=settings,
        declare=lambda store: declare_slq(store, settings, num_probes, rounds=adaptive),
        recorder=lambda store: (adaptive_recorder(store, num_probes) if adaptive
                                else slq_recorder(store)),
        write=lambda store, result: write_slq(store, result, "slq",
                                              {**plain_settings(settings), **extra})))
    results = run_phases(role, phases, seed=seed, overwrite=overwrite, attrs=attrs,
                         identity=identity, keep_state=keep_state,
                         disk_vectors=capacity * num_probes + (eigs_capacity if k else 0))
    return spectrum(results[0] if k else None, results[-1])


def _deflation_phase(op, plan: DeflatedPlan, tol, capacity, show, extra) -> Phase:
    """The eigensolver phase of a deflated SLQ run (group ``eigs``), whose stored
    eigenpairs a resumed SLQ phase reuses."""
    k, which, k_b = plan.k, plan.which, plan.k_bottom
    return Phase(
        "eigs", 1, capacity, 1,
        lambda hooks, callback, earlier: plan.eigenpairs(op, tol=tol, callback=callback,
                                                         progress=show, hooks=hooks),
        state_settings={"k": k}, check=None,
        declare=lambda store: declare_eigs(store, {"k": k, "which": which, "k_bottom": k_b},
                                           k),
        recorder=lambda store: step_recorder(store, "eigs", k, which, k_b),
        write=lambda store, result: write_eigs(store, result, "eigs", {
            "k": k, "k_bottom": k_b, "start_seed": plan.eigs_seed, **extra}),
        read=finished_eigenpairs, reuse_finished=True)


def _stored_eigs(f, name: str, out, save_vectors: bool):
    """The finished result of run ``name`` of the open file ``f``; eigenvectors asked for
    but not saved would need the dropped basis, so they are refused naming ``--keep-state``."""
    if save_vectors and "eigenvectors" not in f[name]:
        raise ResumeError(
            f"the {name} run of {out} is complete but saved no eigenvectors, and its resume "
            "state (the Lanczos basis they are formed from) was dropped when it finished: run "
            "again with --save-vectors (save_vectors=True), and pass --keep-state "
            "(keep_state=True) to runs whose files are to be continued")
    return read_eigs_result(f[name])


def _check_new_run(out, name: str) -> None:
    """A run added to an existing file (``append``) must have a name of its own."""
    if out is not None and Path(out).exists():
        with open_spectrum(out) as f:
            if name in f:
                raise OutputPathError(f"{out} already holds a run named {name!r}: resume it "
                                      "(resume=True) or give the new run another name")
