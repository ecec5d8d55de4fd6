"""What every group and dataset of a spectrum file means, declared once.

Each dataset a spectrum file holds carries three attributes, written when it is created
(:func:`annotate`):

* ``description``: one sentence saying what it is;
* ``units``: ``"loss / param^2"`` for curvature values (eigenvalues, Gauss nodes, Lanczos
  coefficients, residuals: the units of the loss divided by those of two parameters), ``"1"``
  for dimensionless numbers and counts (weights, unit-vector components, numbers of steps),
  ``"loss"`` for loss values, ``"s"`` for seconds, and ``""`` for what is not a quantity
  (indices, flags, bytes);
* ``order``: how its entries are ordered along each axis (``"ascending"``,
  ``"probe-major"``, ``"step-major"``, ``"none"``, ...).

Groups carry a ``description`` too (the root's says which seed is which). ``docs/FORMAT.md``
is the written specification; it and this table say the same thing, and the tests read
every dataset of a written file to check that none lacks its attributes.

A dataset that this table does not declare (one an experiment script adds with
:meth:`~lanczos_hessian.storage.hdf5.SpectrumWriter.write_arrays`) is described by the
caller's ``meta``, or else generically (``units = "unspecified"``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import NamedTuple

#: Units of a curvature value: the loss's units over those of two parameters.
CURVATURE = "loss / param^2"


class Declared(NamedTuple):
    """The attributes of one dataset: ``description``, ``units``, ``order``, and its role
    in the file (``result``, ``record``, ``state`` or ``provenance``; not written, see
    docs/FORMAT.md)."""

    description: str
    units: str
    order: str
    role: str = "result"


_EIGEN_ORDER = "ascending eigenvalue (aligned with eigenvalues)"

#: Datasets by their path in the file (``fnmatch`` patterns, first match wins).
DATASETS: dict[str, Declared] = {
    # ---- eigs: the eigensolver's results (also the deflation of an SLQ run) --------------
    "eigs/eigenvalues": Declared(
        "Ritz values: the computed eigenvalues of the operator.", CURVATURE, "ascending"),
    "eigs/residual_bounds": Declared(
        "Ritz bound |beta_j s_ji| on ||A y_i - theta_i y_i||, exact in exact arithmetic.",
        CURVATURE, _EIGEN_ORDER),
    "eigs/error_bounds": Declared(
        "min(r_i, r_i^2 / gap_i): a bound on the distance of each Ritz value to an eigenvalue.",
        CURVATURE, _EIGEN_ORDER),
    "eigs/residuals": Declared(
        "Measured residual norms ||A y_i - theta_i y_i|| (one extra block product).",
        CURVATURE, _EIGEN_ORDER),
    "eigs/converged": Declared(
        "1 where the pair met the tolerance, else 0.", "", _EIGEN_ORDER),
    "eigs/eigenvectors": Declared(
        "Unit-norm Ritz vectors, one column per eigenvalue, rows in the order of the "
        "parameters (root attribute param_names).", "1",
        "rows: flat parameter index; columns: ascending eigenvalue"),
    "eigs/alphas": Declared(
        "Diagonal of the tridiagonal matrix of the first Lanczos cycle from the start vector.",
        CURVATURE, "Lanczos step"),
    "eigs/betas": Declared(
        "Off-diagonal of the tridiagonal matrix of the first Lanczos cycle.",
        CURVATURE, "Lanczos step"),
    # ---- slq: the quadrature's results -----------------------------------------------------
    "slq/nodes": Declared(
        "Gauss quadrature nodes of each probe (eigenvalues of its tridiagonal matrix), NaN "
        "after a probe's last step.", CURVATURE,
        "probe-major; ascending within a probe, NaN padding last"),
    "slq/weights": Declared(
        "Gauss quadrature weights of each probe (squared first components of its tridiagonal "
        "matrix's eigenvectors; a row sums to 1), 0 on padding.", "1",
        "probe-major; aligned with nodes"),
    "slq/alphas": Declared(
        "Diagonal of each probe's tridiagonal matrix, NaN after its last step.", CURVATURE,
        "probe-major; Lanczos step"),
    "slq/betas": Declared(
        "Off-diagonal of each probe's tridiagonal matrix; entry num_nodes-1 is the norm of "
        "its last residual.", CURVATURE, "probe-major; Lanczos step"),
    "slq/num_nodes": Declared(
        "Lanczos steps made by each probe (num_steps unless it broke down).", "1", "probe"),
    "slq/outliers": Declared(
        "Deflated eigenvalues, each of mass 1/dim in the spectral measure.", CURVATURE,
        "ascending"),
    "slq/outlier_residuals": Declared(
        "Residual bounds of the deflated eigenpairs.", CURVATURE, "aligned with outliers"),
    # ---- per-step records (committed as the run goes) --------------------------------------
    "*/steps/committed": Declared(
        "Number of complete rows of every dataset of this steps group; readers trust it only.",
        "1", "none", "record"),
    "eigs/steps/matvec": Declared(
        "Vectors the operator had been applied to when the row was committed.", "1",
        "step-major", "record"),
    "eigs/steps/alpha": Declared(
        "Diagonal entry of the Lanczos matrix added at this step.", CURVATURE, "step-major",
        "record"),
    "eigs/steps/beta": Declared(
        "Norm of the Lanczos residual after this step.", CURVATURE, "step-major", "record"),
    "eigs/steps/ritz_values": Declared(
        "The wanted Ritz values after this step, NaN-padded while fewer exist.", CURVATURE,
        "step-major; columns ascending", "record"),
    "eigs/steps/residual_bounds": Declared(
        "Ritz bounds of those Ritz values after this step.", CURVATURE,
        "step-major; columns aligned with ritz_values", "record"),
    "slq/steps/alpha": Declared(
        "Each probe's diagonal entry of this lockstep step, NaN for probes that had stopped.",
        CURVATURE, "step-major; columns: probe", "record"),
    "slq/steps/beta": Declared(
        "Each probe's residual norm after this lockstep step, NaN for probes that had stopped.",
        CURVATURE, "step-major; columns: probe", "record"),
    "slq/steps/num_passes": Declared(
        "Passes over the data made by the quadrature up to this step.", "1", "step-major",
        "record"),
    "slq/steps/round": Declared(
        "The round of probes this step belongs to (adaptive SLQ only), from 0.", "1",
        "step-major", "record"),
    # ---- SpectrumTracker (analysis/tracking.py): one row per measurement during training ----
    "tracking/steps/step": Declared(
        "Training step after which the row was measured.", "", "step-major", "record"),
    "tracking/steps/eigenvalues": Declared(
        "The tracked Ritz values at that step.", CURVATURE, "step-major; columns ascending",
        "record"),
    "tracking/steps/residual_bounds": Declared(
        "Ritz bounds of those Ritz values.", CURVATURE,
        "step-major; columns aligned with eigenvalues", "record"),
    "tracking/steps/converged": Declared(
        "1 where the pair met the tolerance, else 0.", "",
        "step-major; columns aligned with eigenvalues", "record"),
    "tracking/steps/num_matvecs": Declared(
        "Vectors the operator was applied to for that measurement.", "1", "step-major",
        "record"),
    "tracking/steps/num_passes": Declared(
        "Passes over the data for that measurement.", "1", "step-major", "record"),
    "tracking/steps/warm": Declared(
        "1 if the solver started from the previous eigenvectors, else 0.", "", "step-major",
        "record"),
    "tracking/steps/cold_matvecs": Declared(
        "Vectors a cold start needed for comparison (-1: not measured).", "1", "step-major",
        "record"),
    "tracking/steps/loss": Declared(
        "Full-data loss at that step.", "loss", "step-major", "record"),
    "tracking/steps/grad_norm": Declared(
        "Norm of the full-data gradient (NaN: not measured).", "loss / param", "step-major",
        "record"),
    "tracking/steps/overlap": Declared(
        "Fraction of the squared gradient norm in the span of the tracked eigenvectors.", "1",
        "step-major", "record"),
    "tracking/steps/overlap_parts": Declared(
        "That fraction per eigenvector.", "1", "step-major; columns aligned with eigenvalues",
        "record"),
    "tracking/steps/slq_nodes": Declared(
        "Gauss nodes of the bulk's SLQ at that step, NaN padding.", CURVATURE,
        "step-major; then probe-major, ascending within a probe", "record"),
    "tracking/steps/slq_weights": Declared(
        "Gauss weights of those nodes, 0 on padding.", "1",
        "step-major; then probe-major, aligned with slq_nodes", "record"),
    "tracking/steps/seconds": Declared(
        "Wall time of that measurement.", "s", "step-major", "record"),
    "*/steps/*": Declared(
        "One value per committed measurement of this group's run.", "unspecified",
        "step-major", "record"),
    # ---- resume state (dropped when a run finishes, unless kept) ---------------------------
    "*/state/basis_*": Declared(
        "A Lanczos basis, one float64 vector per row in two slots per column (the committed "
        "layout is in the blob).", "1", "none (slots named by the blob's basis_layouts)",
        "state"),
    "*/state/vectors_*": Declared(
        "One commit slot: the vectors the recurrence needs next.", "1", "none", "state"),
    "*/state/blob_*": Declared(
        "One commit slot: the solver's small arrays and counters as .npz bytes.", "",
        "none", "state"),
    "*/state/commit": Declared(
        "Three integers: the count of the last committed state, the slot (0 or 1) that "
        "holds it, and 1 once the run had finished.", "",
        "count, slot, finished", "state"),
    # ---- the demo's extras -------------------------------------------------------------------
    "dense/eigenvalues": Declared(
        "Every eigenvalue of the dense matrix of the operator (numpy.linalg.eigvalsh).",
        CURVATURE, "ascending", "result"),
    "training/loss": Declared(
        "Training loss after each gradient step of the model analysed.", "loss",
        "training step", "provenance"),
}

#: Groups by their path (root is "/").
GROUPS: dict[str, str] = {
    "/": ("A lanczos_hessian spectrum file (docs/FORMAT.md). Attribute seed is the run's seed: "
          "an eigs run starts its Lanczos vector from it; an slq run splits it "
          "(lanczos_hessian.linalg.slq.split_seed) into the deflation's start_seed and the "
          "probes' probe_seed, recorded in those groups."),
    "eigs": ("Eigenpairs by thick-restart Lanczos: settings and counters as attributes; in an "
             "slq file, the deflation. start_seed is the seed of the start vector (the run's "
             "seed for an eigs run, split from it for a deflation)."),
    "slq": ("Stochastic Lanczos quadrature: Gauss rules of the probes. Attribute seed is the "
            "run's seed (as the root's); probe_seed is the probes' own seed, split from it."),
    "*/steps": "Per-step records committed as the run went; rows beyond committed[0] are void.",
    "*/state": ("Resume state of a run (present while it runs, and after it finished only "
                "when kept: --keep-state / keep_state=True)."),
    "dense": "The exact spectrum of the operator (small models only).",
    "training": "The training run that produced the model analysed.",
    "tracking": ("Top eigenpairs measured every few training steps (SpectrumTracker): "
                 "settings as attributes, one step row per measurement."),
}


def _run_paths(path: str):
    """``path``, then the same path with its leading groups dropped one by one: a run named
    ``blocks/fc1/eigs`` has the datasets of ``eigs``."""
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


#: The number of axes of each result and record dataset (docs/FORMAT.md, "dtype, shape"),
#: checked by every reader; ``(axes, aligned with)``: a dataset whose length must be that
#: of another of its group.
SHAPES: dict[str, tuple] = {
    "eigs/eigenvalues": (1, None),
    "eigs/residual_bounds": (1, "eigenvalues"), "eigs/error_bounds": (1, "eigenvalues"),
    "eigs/residuals": (1, "eigenvalues"), "eigs/converged": (1, "eigenvalues"),
    "eigs/eigenvectors": (2, None), "eigs/alphas": (1, None), "eigs/betas": (1, None),
    "slq/nodes": (2, None), "slq/weights": (2, "nodes"), "slq/alphas": (2, None),
    "slq/betas": (2, None), "slq/num_nodes": (1, None), "slq/outliers": (1, None),
    "slq/outlier_residuals": (1, "outliers"),
    "eigs/steps/matvec": (1, None), "eigs/steps/alpha": (1, None),
    "eigs/steps/beta": (1, None), "eigs/steps/ritz_values": (2, None),
    "eigs/steps/residual_bounds": (2, None), "slq/steps/alpha": (2, None),
    "slq/steps/beta": (2, None), "slq/steps/num_passes": (1, None),
    "slq/steps/round": (1, None), "*/steps/committed": (1, None),
}


def declared_shape(path: str) -> tuple | None:
    """``(axes, aligned with)`` of the dataset at ``path`` (:data:`SHAPES`; a run of another
    name, ``blocks/fc1/eigs``, has the shapes of ``eigs``), or None when not declared."""
    path = path.lstrip("/")
    for key in _run_paths(path):
        for pattern, entry in SHAPES.items():
            if fnmatchcase(key, pattern):
                return entry
    return None


def declared(path: str) -> Declared | None:
    """The declaration of the dataset at ``path`` (e.g. ``"/slq/nodes"``, or
    ``"/blocks/fc1/eigs/eigenvalues"`` in a run of another name), or None."""
    path = path.lstrip("/")
    for key in _run_paths(path):  # a run's own datasets first, then the generic patterns
        for pattern, entry in DATASETS.items():
            if not pattern.startswith("*") and fnmatchcase(key, pattern):
                return entry
    for pattern, entry in DATASETS.items():
        if fnmatchcase(path, pattern):
            return entry
    return None


def group_description(path: str) -> str | None:
    """The description of the group at ``path`` (``"/"`` for the root), or None."""
    key = path.strip("/") or "/"
    for candidate in ([key] if key == "/" else _run_paths(key)):
        for pattern, text in GROUPS.items():
            if not pattern.startswith("*") and fnmatchcase(candidate, pattern):
                return text
    for pattern, text in GROUPS.items():
        if fnmatchcase(key, pattern):
            return text
    return None


def annotate(node, meta: Declared | dict | None = None) -> None:
    """Write ``description``, ``units`` and ``order`` on the dataset ``node`` (from ``meta``,
    else from :data:`DATASETS`, else generic), or ``description`` on a group of
    :data:`GROUPS`."""
    import h5py

    if isinstance(node, h5py.Group):
        text = group_description(node.name)
        if text is not None and "description" not in node.attrs:
            node.attrs["description"] = text
        return
    if isinstance(meta, dict):
        meta = Declared(meta.get("description", ""), meta.get("units", "unspecified"),
                        meta.get("order", "none"))
    entry = meta or declared(node.name) or Declared(
        f"{node.name.rsplit('/', 1)[-1]} of group {node.parent.name} (not declared by "
        "docs/FORMAT.md: see the script that wrote it).", "unspecified", "none")
    node.attrs["description"] = entry.description
    node.attrs["units"] = entry.units
    node.attrs["order"] = entry.order
