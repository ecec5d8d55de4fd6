"""Jobs that combine an operator, a solver and an HDF5 file: what the CLI runs.

Each job checks its output path before any operator application, streams one record per
application into the file (so a killed job keeps what it computed), and writes the final
arrays with their provenance. Only the main rank (global rank 0) writes.
"""

from __future__ import annotations

import logging
import platform

import numpy as np
from .distributed import current_world
from .eigen import lanczos_eigsh, wanted_indices
from .io import SpectrumWriter, check_output_path, write_eigs

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
    if op.data.num_samples is not None and world.size == 1:
        attrs["num_samples"] = op.data.num_samples
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
             overwrite=False, progress=True, attrs=None):
    """Eigenpairs of ``op`` by :func:`lanczos_eigsh`, streamed to and stored in ``out``."""
    if out is not None and current_world().is_main:
        check_output_path(out, overwrite)
    settings = {"k": k, "which": which, "k_bottom": k_bottom, "tol": tol, "ncv": ncv,
                "max_matvecs": max_matvecs, "seed": seed}
    with open_writer(out, provenance(op, seed=seed, **(attrs or {})), overwrite) as writer:
        writer.set_attrs("eigs", {**settings, "complete": False})
        result = lanczos_eigsh(
            op, k=k, which=which, k_bottom=k_bottom, tol=tol, ncv=ncv, max_matvecs=max_matvecs,
            rng=seed, return_eigenvectors=save_vectors, true_residuals=true_residuals,
            callback=step_recorder(writer, "eigs", k, which, k_bottom),
            progress=progress and current_world().is_main,
        )
        write_eigs(writer, result, "eigs", settings)
    return result


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
            progress=True, attrs=None):
    """SLQ of ``op`` (deflated by ``k_top``/``k_bottom`` eigenpairs first), streamed to ``out``.

    The deflation eigenpairs are computed by one :func:`lanczos_eigsh` run (``LA``, ``SA``
    or ``BE``) and stored in the ``eigs`` group; the quadrature goes to ``slq``. Returns
    ``(eigs result or None, slq result)``.
    """
    from .slq import slq

    if out is not None and current_world().is_main:
        check_output_path(out, overwrite)
    settings = {"num_probes": num_probes, "num_steps": num_steps, "probe": probe,
                "k_top": k_top, "k_bottom": k_bottom, "tol": tol, "seed": seed,
                "reorthogonalize": reorthogonalize}
    main = current_world().is_main
    rng = np.random.default_rng(seed)
    with open_writer(out, provenance(op, seed=seed, **(attrs or {})), overwrite) as writer:
        eigs = None
        if k_top + k_bottom > 0:
            k, which = k_top + k_bottom, ("BE" if k_top and k_bottom else "LA" if k_top else "SA")
            k_b = k_bottom if which == "BE" else None
            writer.set_attrs("eigs", {"k": k, "which": which, "complete": False})
            eigs = lanczos_eigsh(op, k=k, which=which, k_bottom=k_b, tol=tol, rng=rng,
                                 callback=step_recorder(writer, "eigs", k, which, k_b),
                                 progress=progress and main)
            write_eigs(writer, eigs, "eigs", {"k": k, "k_bottom": k_b})
        writer.set_attrs("slq", {**settings, "complete": False})
        result = slq(op, num_probes, num_steps, probe=probe, rng=rng,
                     reorthogonalize=reorthogonalize, deflate=eigs,
                     callback=slq_recorder(writer), progress=progress and main)
        write_slq(writer, result, "slq", settings)
    return eigs, result
