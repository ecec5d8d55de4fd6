"""What a run writes into its spectrum file: declared groups, per-step records, final results.

Both solvers' groups follow one pattern (:mod:`lanczos_hessian.storage.hdf5`): the group's
settings as attributes with ``complete = False`` and its ``steps`` datasets are declared
before streaming (SWMR allows no new datasets later); one record is committed per operator
application; the final arrays and attributes are written after streaming, with
``complete = True``.

* ``eigs/steps``: ``matvec`` (steps so far), ``alpha``, ``beta``, and the wanted
  ``ritz_values`` with their ``residual_bounds`` (NaN-padded to ``k`` while fewer exist);
* ``slq/steps``: every probe's ``alpha`` and ``beta`` of the lockstep step (NaN for probes
  that had stopped) and the cumulative ``num_passes``; the quadrature of a cut-off run is
  rebuilt from these rows (:mod:`lanczos_hessian.analysis.spectrum`).
"""

from __future__ import annotations

import numpy as np

from ..linalg.eigsh import wanted_indices


def plain_settings(settings: dict) -> dict:
    """Settings as attribute values (None written as the string ``"None"``)."""
    return {key: ("None" if value is None else value) for key, value in settings.items()}


def _eigs_row(k: int) -> dict:
    return {"matvec": 0, "alpha": 0.0, "beta": 0.0, "ritz_values": np.zeros(k),
            "residual_bounds": np.zeros(k)}


def declare_eigs(writer, settings: dict, k: int) -> None:
    """The ``eigs`` group's settings (incomplete) and its step records."""
    writer.set_attrs("eigs", {**plain_settings(settings), "complete": False})
    writer.declare_steps("eigs", _eigs_row(k))


def declare_slq(writer, settings: dict, num_probes: int) -> None:
    """The ``slq`` group's settings (incomplete) and its step records."""
    writer.set_attrs("slq", {**plain_settings(settings), "complete": False})
    writer.declare_steps("slq", {"alpha": np.zeros(num_probes), "beta": np.zeros(num_probes),
                                 "num_passes": 0})


def step_recorder(writer, group: str, k: int, which: str, k_bottom=None):
    """A :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh` callback that commits one record
    per operator application (see the module docstring)."""

    def record(process, theta, bounds):
        want = wanted_indices(theta, k, which, k_bottom)
        ritz = np.full(k, np.nan)
        res = np.full(k, np.nan)
        ritz[: len(want)], res[: len(want)] = theta[want], bounds[want]
        j = process.size - 1
        writer.append_step(group, {
            "matvec": process.num_vectors,
            "alpha": process.T[j, j],
            "beta": process.beta,
            "ritz_values": ritz,
            "residual_bounds": res,
        })

    return record


def slq_recorder(writer, group: str = "slq"):
    """An :func:`~lanczos_hessian.linalg.slq.slq` callback committing each lockstep step."""

    def record(step, state):
        writer.append_step(group, {"alpha": state.alpha, "beta": state.beta,
                                   "num_passes": state.num_passes})

    return record


def write_eigs(writer, result, group: str = "eigs", settings: dict | None = None) -> None:
    """Store an :class:`~lanczos_hessian.linalg.eigsh.EigshResult` under ``group``, complete."""
    writer.write_arrays(group, {
        "eigenvalues": result.eigenvalues,
        "residual_bounds": result.residual_bounds,
        "error_bounds": result.error_bounds,
        "residuals": result.residuals,
        "converged": result.converged.astype(np.int8),
        "alphas": result.alphas,
        "betas": result.betas,
        "eigenvectors": result.eigenvectors,
    })
    writer.set_attrs(group, {
        **(settings or {}),
        "which": result.which,
        "tol": result.tol,
        "anorm": result.anorm,
        "num_matvecs": result.num_matvecs,
        "num_passes": result.num_passes,
        "num_restarts": result.num_restarts,
        "orthogonality": result.orthogonality,
        "block_size": result.block_size,
        "timings": result.timings,
        "complete": True,
    })


def write_slq(writer, result, group: str = "slq", settings: dict | None = None) -> None:
    """Store an :class:`~lanczos_hessian.linalg.slq.SLQResult` under ``group``, complete."""
    writer.write_arrays(group, {
        "nodes": result.nodes, "weights": result.weights, "alphas": result.alphas,
        "betas": result.betas, "num_nodes": result.num_nodes, "outliers": result.outliers,
        "outlier_residuals": result.outlier_residuals,
    })
    writer.set_attrs(group, {
        **(settings or {}), "dim": result.dim, "num_probes": result.num_probes,
        "num_steps": result.num_steps, "probe": result.probe,
        # the probes' own seed (split from the run's seed, which the settings record)
        "probe_seed": result.seed,
        "reorthogonalized": result.reorthogonalized, "bulk_mass": result.bulk_mass,
        "num_passes": result.num_passes, "num_matvecs": result.num_matvecs,
        "deflation_passes": result.deflation_passes,
        "deflation_matvecs": result.deflation_matvecs, "timings": result.timings,
        "orthogonality": result.orthogonality, "duplicate_nodes": result.duplicate_nodes,
        "complete": True,
    })


def finished_eigenpairs(group) -> tuple:
    """``(eigenvalues, eigenvectors, residual_bounds)`` of a complete ``eigs`` group: the
    ``deflate`` argument of :func:`~lanczos_hessian.linalg.slq.slq`."""
    return group["eigenvalues"][:], group["eigenvectors"][:], group["residual_bounds"][:]


def rewind_steps(writer, group: str, count: int) -> None:
    """Drop records appended after the last committed state (a kill between the two)."""
    try:
        steps = writer.file[f"{group}/steps"]
        if int(steps["committed"][0]) > count:
            steps["committed"][0] = count
            writer.file.flush()
    except (KeyError, OSError, RuntimeError, TypeError) as exc:
        from ..errors import SpectrumFileError

        raise SpectrumFileError(f"{writer.path} is damaged: its {group} step records cannot "
                                f"be read ({type(exc).__name__}: {exc})") from exc
