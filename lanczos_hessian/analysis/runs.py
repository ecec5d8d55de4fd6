"""Several files of one run read as one: an ``eigs`` file and an ``slq`` file of the same
operator (``analyze eigs.h5 slq.h5``) give one spectrum, one summary and one verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .spectrum import Spectrum


#: Root attributes that identify the operator of a run: files agreeing on all of those they
#: both hold (and holding at least the operator and its size) describe one operator.
IDENTITY = ("problem", "operator", "num_params", "num_samples", "loss", "reduction",
            "param_names", "train_steps", "train_loss", "checkpoint")


def same_operator(a: Spectrum, b: Spectrum) -> bool:
    """True when two files describe one operator (:data:`IDENTITY`)."""
    if not all(key in a.attrs and key in b.attrs for key in ("operator", "num_params")):
        return False
    shared = [k for k in IDENTITY if k in a.attrs and k in b.attrs]
    return all(np.array_equal(np.asarray(a.attrs[k]), np.asarray(b.attrs[k])) for k in shared)


def merge_runs(spectra: list) -> list:
    """Files of one run analysed together: an ``eigs`` file and an ``slq`` (or demo) file of
    the same operator become one :class:`Spectrum` (eigenpairs from the one that has them,
    quadrature and exact spectrum from the other), so that a density section knows the
    bottom eigenvalue the other file holds and the run has one outlier verdict. A deflated
    SLQ file's eigenpairs are its deflation's: beside an eigensolver's file, the
    eigensolver's pairs are the run's (the deflated outliers stay in the quadrature). Files
    that overlap otherwise (both with SLQ rules, both with an exact spectrum, or both with
    eigenpairs of their own) or describe different operators stay apart."""
    merged: list = []
    for spectrum in spectra:
        partner = next((m for m in merged if same_operator(m, spectrum)
                        and _complementary(m, spectrum)), None)
        if partner is None:
            merged.append(spectrum)
            continue
        _absorb(partner, spectrum)
    return merged


def _complementary(a: Spectrum, b: Spectrum) -> bool:
    """No part in both, except eigenpairs of which one file's are its SLQ's deflation."""
    def both(name):
        return getattr(a, name) is not None and getattr(b, name) is not None

    if both("quadrature") or both("dense_eigenvalues"):
        return False
    return not both("eigenvalues") or (a.quadrature is None) != (b.quadrature is None)


def _absorb(into: Spectrum, other: Spectrum) -> None:
    """Fill ``into``'s missing parts from ``other`` (and take an eigensolver's pairs over a
    deflation's); its label names both files."""
    deflation_only = into.quadrature is not None and other.quadrature is None
    if other.eigenvalues is not None and (into.eigenvalues is None or deflation_only):
        for name in ("eigenvalues", "residual_bounds", "residuals", "converged",
                     "eigs_complete", "eigs_attrs", "eigs"):
            setattr(into, name, getattr(other, name))
    if into.quadrature is None:
        into.quadrature, into.slq = other.quadrature, other.slq
    if into.dense_eigenvalues is None:
        into.dense_eigenvalues = other.dense_eigenvalues
    into.progress += [f"{other.path.name}: {line}" for line in other.progress]
    into.attrs = {**other.attrs, **into.attrs,
                  "label": f"{into.label} + {other.label}"}
    into.path = Path(f"{into.path} + {other.path}")
