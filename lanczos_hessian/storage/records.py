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

from ..linalg.eigsh import EigshResult, wanted_indices
from ..linalg.slq import SLQResult
from .hdf5 import decode_attrs, timing_attrs


def plain_settings(settings: dict) -> dict:
    """Settings as attribute values: a setting that is None (no cap, default basis size, ...)
    is left out, so that its attribute is absent (docs/FORMAT.md: absent = not set)."""
    return {key: value for key, value in settings.items() if value is not None}


def _eigs_row(k: int) -> dict:
    return {"matvec": 0, "alpha": 0.0, "beta": 0.0, "ritz_values": np.zeros(k),
            "residual_bounds": np.zeros(k)}


def declare_eigs(writer, settings: dict, k: int, group: str = "eigs") -> None:
    """An eigensolver run's group (``eigs``): settings (incomplete) and step records."""
    writer.set_attrs(group, {**plain_settings(settings), "complete": False})
    writer.declare_steps(group, _eigs_row(k))


def declare_slq(writer, settings: dict, num_probes: int, group: str = "slq",
                rounds: bool = False) -> None:
    """An SLQ run's group (``slq``): settings (incomplete) and step records (with the round
    of each row for an adaptive run, ``rounds``)."""
    writer.set_attrs(group, {**plain_settings(settings), "complete": False})
    writer.declare_steps(group, {"alpha": np.zeros(num_probes), "beta": np.zeros(num_probes),
                                 "num_passes": 0, **({"round": 0} if rounds else {})})


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


def adaptive_recorder(writer, width: int, group: str = "slq"):
    """An :func:`~lanczos_hessian.linalg.slq.adaptive_slq` callback committing each lockstep
    step of each round: the round's ``alpha``/``beta`` NaN-padded to ``width`` (the probes
    per round), ``num_passes`` counted over all rounds (one per record) and the ``round``
    (a round's first step is its step 1)."""

    def record(step, state):
        pad = np.full(width - len(state.alpha), np.nan)
        done = writer.committed(group)
        last = int(writer.file[f"{group}/steps/round"][done - 1]) if done else -1
        writer.append_step(group, {"alpha": np.concatenate([state.alpha, pad]),
                                   "beta": np.concatenate([state.beta, pad]),
                                   "num_passes": done + 1,
                                   "round": last + 1 if step == 1 else last})

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
        **timing_attrs(result.timings),
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
        "deflation_matvecs": result.deflation_matvecs, **timing_attrs(result.timings),
        "orthogonality": result.orthogonality, "duplicate_nodes": result.duplicate_nodes,
        "complete": True,
    })


def read_eigs_result(group) -> EigshResult:
    """The :class:`~lanczos_hessian.linalg.eigsh.EigshResult` a complete ``eigs`` group holds
    (an open HDF5 group): what a finished run returned, its eigenvectors when they were
    saved (else None), its timings from the ``seconds_<phase>`` attributes."""
    attrs = decode_attrs(group.attrs)
    arrays = {name: group[name][()] for name in ("eigenvalues", "residual_bounds",
                                                 "error_bounds", "residuals", "converged",
                                                 "alphas", "betas", "eigenvectors")
              if name in group}
    return EigshResult(
        eigenvalues=arrays["eigenvalues"], eigenvectors=arrays.get("eigenvectors"),
        residual_bounds=arrays["residual_bounds"], error_bounds=arrays["error_bounds"],
        residuals=arrays.get("residuals"), converged=arrays["converged"].astype(bool),
        num_matvecs=int(attrs["num_matvecs"]), num_passes=int(attrs["num_passes"]),
        num_restarts=int(attrs["num_restarts"]), alphas=arrays["alphas"],
        betas=arrays["betas"], timings=dict(attrs.get("timings") or {}),
        which=str(attrs["which"]), tol=float(attrs["tol"]), anorm=float(attrs["anorm"]),
        orthogonality=float(attrs.get("orthogonality", np.nan)),
        block_size=int(attrs.get("block_size", 1)),
        k_bottom=None if attrs.get("k_bottom") is None else int(attrs["k_bottom"]))


def read_slq_result(group) -> SLQResult:
    """The :class:`~lanczos_hessian.linalg.slq.SLQResult` a complete ``slq`` group holds (an
    open HDF5 group), its counts including the deflation's as the run returned them."""
    attrs = decode_attrs(group.attrs)
    seed = attrs.get("probe_seed")
    return SLQResult(
        nodes=group["nodes"][()], weights=group["weights"][()], alphas=group["alphas"][()],
        betas=group["betas"][()], num_nodes=group["num_nodes"][()], dim=int(attrs["dim"]),
        num_probes=int(attrs["num_probes"]), num_steps=int(attrs["num_steps"]),
        num_passes=int(attrs["num_passes"]), num_matvecs=int(attrs["num_matvecs"]),
        outliers=group["outliers"][()] if "outliers" in group else np.zeros(0),
        outlier_residuals=(group["outlier_residuals"][()] if "outlier_residuals" in group
                           else np.zeros(0)),
        bulk_mass=float(attrs["bulk_mass"]), probe=str(attrs["probe"]),
        seed=None if seed is None else int(seed),
        reorthogonalized=bool(attrs.get("reorthogonalized", True)),
        deflation_passes=int(attrs.get("deflation_passes", 0)),
        deflation_matvecs=int(attrs.get("deflation_matvecs", 0)),
        timings=dict(attrs.get("timings") or {}),
        orthogonality=float(attrs.get("orthogonality", np.nan)),
        duplicate_nodes=int(attrs.get("duplicate_nodes", 0)),
        target_error=float(attrs.get("target_error", np.nan)),
        confidence=float(attrs.get("confidence", np.nan)))


def finished_eigenpairs(group) -> EigshResult:
    """The :class:`~lanczos_hessian.linalg.eigsh.EigshResult` of a complete ``eigs`` group of
    an SLQ run, eigenvectors included: the ``deflate`` argument of
    :func:`~lanczos_hessian.linalg.slq.slq`, and what a resumed run returns (the same type
    as an uninterrupted one)."""
    return read_eigs_result(group)


def rewind_steps(writer, group: str, count: int) -> None:
    """Drop records appended after the last committed state (a kill between the two), after
    checking that the records can be continued (:func:`check_growable`)."""
    try:
        steps = writer.file[f"{group}/steps"]
        check_growable(steps, count, writer.path)
        if int(steps["committed"][0]) > count:
            steps["committed"][0] = count
            writer.file.flush()
    except (KeyError, OSError, RuntimeError, TypeError) as exc:
        from ..errors import SpectrumFileError

        raise SpectrumFileError(f"{writer.path} is damaged: its {group} step records cannot "
                                f"be read ({type(exc).__name__}: {exc})") from exc


def check_growable(steps, count: int, path) -> None:
    """Before a resume appends to the step records ``steps`` (an open group) from state
    ``count``: every record is a chunked dataset that can grow along its first axis, with
    the format's number of axes, at least as many rows as ``committed`` counts, which counts
    at least the state's ``count``; else :class:`SpectrumFileError` naming the dataset."""
    from ..errors import SpectrumFileError
    from .reader import check_shapes

    check_shapes(steps)
    committed = int(steps["committed"][0])
    if committed < count:
        raise SpectrumFileError(f"{path} is damaged: {steps.name}/committed counts {committed} "
                                f"records but the run's state was committed after {count}")
    for key, ds in steps.items():
        if key == "committed":
            continue
        if ds.chunks is None or ds.maxshape[0] is not None:
            raise SpectrumFileError(f"{path} is damaged: dataset {ds.name} cannot grow (shape "
                                    f"{ds.shape}, max {ds.maxshape}, chunks {ds.chunks}); the "
                                    "format's records are chunked and unlimited along their "
                                    "first axis (docs/FORMAT.md)")
        if len(ds) < committed:
            raise SpectrumFileError(f"{path} is damaged: dataset {ds.name} holds {len(ds)} "
                                    f"rows but {steps.name}/committed counts {committed}")
