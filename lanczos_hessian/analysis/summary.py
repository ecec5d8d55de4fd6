"""The plain-text summary of a spectrum (``analyze``, ``Spectrum.summary()``): provenance,
how to continue a cut-off run, the eigenpairs with one outlier verdict, the SLQ statistics
with the brackets of :mod:`~lanczos_hessian.linalg.resolution`, and the scalar summaries of
:mod:`~lanczos_hessian.analysis.statistics`. No computation beyond reading the spectrum."""

from __future__ import annotations

import shlex

import numpy as np

from .report import eigen_table

#: Thresholds of the negative (and near-zero) mass, as fractions of ``lambda_max``.
MASS_THRESHOLDS = (1e-2, 1e-3, 1e-4)


def summarize(spectrum, num_top: int = 20) -> str:
    """A plain-text summary: top eigenvalues with residuals, the outlier verdict, SLQ
    statistics with their brackets, and the scalar summaries."""
    a = spectrum.attrs
    lines = [f"== {spectrum.path}",
             f"   {a.get('operator', '?')} of {a.get('num_params', '?')} parameters, "
             f"{a.get('num_samples', '?')} samples, loss {a.get('loss', '?')} "
             f"({a.get('reduction', '?')}), lanczos_hessian {a.get('package_version', '?')}, "
             f"torch {a.get('torch_version', '?')}"]
    lines += [f"   in progress or cut off: {line}" for line in spectrum.progress]
    if spectrum.progress:
        lines.append(f"   to continue it: {resume_hint(spectrum)}")
    lines += eigs_lines(spectrum, num_top)
    if spectrum.quadrature is not None:
        lines += slq_lines(spectrum, spectrum.quadrature)
    stats = spectrum.statistics(num_top)
    if stats:
        lines.append("   summaries (value +- standard error [3 standard errors]):")
        lines += [f"     {s.name:<26} {s}" for s in stats]
    return "\n".join(lines)


def resume_hint(spectrum) -> str:
    """The command that continues the run which wrote the file: its own command line with
    ``--resume`` instead of ``--overwrite`` (which would delete what it committed)."""
    words = shlex.split(str(spectrum.attrs.get("command", "")))
    if words and (words[0].endswith(("lanczos-hessian", "__main__.py"))
                  or words[:2] == ["-m", "lanczos_hessian"]):
        args = [w for w in words[1:] if w not in ("--overwrite", "--resume")]
        return "lanczos-hessian " + " ".join(shlex.quote(w) for w in args) + " --resume"
    return (f"run what wrote it again with resume=True and the same settings "
            f"(lanczos_hessian.run.eigs / slq, out={str(spectrum.path)!r}); it was "
            f"{spectrum.attrs.get('command', 'an unrecorded command')!r}")


def eigs_lines(spectrum, num_top):
    """The eigenpair table (ascending, array index first: :func:`~.report.eigen_table`) of the
    top ``num_top`` pairs and the 5 smallest (of a ``BE`` run: of its bottom end), and the
    outlier verdict of the top."""
    if spectrum.eigenvalues is None:
        return []
    state = "complete" if spectrum.eigs_complete else "CUT OFF: last committed Ritz values"
    order = np.argsort(spectrum.eigenvalues, kind="stable")
    num_bottom = 5
    if spectrum.eigs_attrs.get("which") == "BE":
        num_bottom = min(5, int(spectrum.eigs_attrs.get("k_bottom") or len(order) // 2))
    shown = list(order[:num_bottom]) + list(order[-num_top:] if num_top > 0 else [])
    table = eigen_table(spectrum.eigenvalues, spectrum.residual_bounds,
                        residuals=spectrum.residuals, converged=spectrum.converged,
                        rows=shown)
    lines = [f"   eigenpairs ({spectrum.eigs_attrs.get('which', '?')}, {state}):"]
    lines += ["     " + line for line in table.splitlines()]
    verdict = spectrum.outlier_verdict(num_top)
    if verdict is not None:
        lines.append("   " + verdict_line(spectrum, num_top))
    return lines


#: What each outlier rule measures, for the verdict line.
RULE_PHRASES = {"below_top": "largest ratio of neighbours below the top eigenvalue",
                "gap": "largest gap between neighbours", "ratio": "largest ratio of neighbours",
                "elbow": "knee of the scree plot", "threshold": "values above a cutoff"}


def verdict_line(spectrum, num_top) -> str:
    """``outliers: 9 (below-top rule: ...); other rules: gap 1, ...``: the run's one count."""
    count, rule = spectrum.outlier_verdict(num_top)
    counts = spectrum.outlier_counts(num_top)
    others = ", ".join(f"{name.replace('_', '-')} {value}"
                       for name, value in counts.as_dict().items() if name != rule)
    line = (f"outliers among the top {min(num_top, len(counts.values))}: {count} "
            f"({rule.replace('_', '-')} rule, the {RULE_PHRASES[rule]}); other rules: {others}")
    if counts.disagree():
        line += (" -- the rules disagree; help(lanczos_hessian.analysis.outliers) says how "
                 "each fails")
    return line


def describe(fraction) -> str:
    """``0.0123 [0.0050, 0.0300]``; ``unresolved [0.0929, 0.8545]`` when the quadrature
    cannot place the threshold (:attr:`~lanczos_hessian.linalg.resolution.Fraction.resolved`):
    the bracket alone, since the rules' own value there is not a measurement."""
    bracket = f"[{fraction.lower:.4f}, {fraction.upper:.4f}]"
    return f"{fraction.value:.4f} {bracket}" if fraction.resolved else f"unresolved {bracket}"


def slq_lines(spectrum, q):
    """Trace, second moment, and the spectral mass at several thresholds, each fraction with
    its bracket (quadrature resolution and probes, three standard errors).

    The negative mass of a trained network's Hessian sits mostly within ``1e-3 lambda_max``
    of zero, where a Gauss rule's nodes carry the atom at zero on either side of a
    threshold: the table gives the mass below ``-t lambda_max`` and within ``t lambda_max``
    of zero for each ``t`` in :data:`MASS_THRESHOLDS`, each with its bracket, so that an
    unresolved threshold shows as its bracket alone, marked ``unresolved``. The mass below 0 is
    printed as a bracket when unresolved, with the nearest threshold below 0 the rules do
    resolve. ``lambda_max`` is the largest eigenvalue known (eigensolver, outliers, nodes,
    dense); for a spectrum with no positive part the spectral radius stands in.
    """
    state = "complete" if q.complete else f"CUT OFF after {q.num_steps_done} committed steps"
    trace = q.trace()
    second = q.moments(2, normalized=False)[2]
    lo, hi = np.nanmin(q.nodes), np.nanmax(q.nodes)
    scale, scale_name = lambda_max(spectrum, q, lo, hi)
    lines = [
        f"   SLQ ({q.nodes.shape[0]} probes x {q.nodes.shape[1]} nodes, {len(q.outliers)} "
        f"deflated outliers, {state}):",
        f"     trace          {trace.value: .6e} +- {trace.stderr:.2e}",
        f"     tr(H^2)        {second.value: .6e} +- {second.stderr:.2e}",
        f"     support        [{lo:.4e}, {hi:.4e}]",
        f"     spectral mass (fraction of the {q.dim} eigenvalues) by threshold "
        f"t * {scale_name} ({scale_name} = {scale:.4e}); value [bracket: quadrature "
        "resolution and 3 standard errors of the probes]:",
        f"       {'t':>7}  {'threshold':>10}  {'mass below -threshold':<36}"
        f"mass |l| <= threshold",
    ]
    for t in MASS_THRESHOLDS:
        below, near = q.fraction_below(-t * scale), q.fraction_within(t * scale)
        lines.append(f"       {t:>7.0e}  {t * scale:>10.2e}  {describe(below):<36}"
                     f"{describe(near)}")
    lines.append(negative_line(q))
    lines.append(bottom_line(spectrum, lo))
    return lines


def negative_line(q) -> str:
    """The mass below 0: value and bracket when resolved; else the bracket alone, why, and the
    nearest threshold below 0 that is resolved."""
    negative = q.fraction_below(0.0)
    if negative.resolved:
        return f"     mass below 0   {describe(negative)}"
    line = (f"     mass below 0   unresolved: between {negative.lower:.4f} and "
            f"{negative.upper:.4f} (the Gauss nodes on either side of 0 carry "
            f"{2 * negative.resolution:.3f} of the mass; the rules' own value "
            f"{negative.value:.4f} is not a measurement)")
    t = q.nearest_resolved_threshold(0.0, "below")
    if t == t:  # not NaN
        line += (f"\n                    nearest resolved threshold {t:.3e}: mass below it "
                 f"{describe(q.fraction_below(t))}")
    else:
        line += "\n                    no threshold below 0 is resolved by these rules"
    return line


def lambda_max(spectrum, q, lo, hi) -> tuple:
    """``(lambda_max, its name)``: the largest known eigenvalue, or the spectral radius when
    no eigenvalue is positive."""
    known = [hi, *np.asarray(q.outliers, dtype=float)]
    if spectrum.eigenvalues is not None and len(spectrum.eigenvalues):
        known.append(float(np.nanmax(spectrum.eigenvalues)))
    if spectrum.dense_eigenvalues is not None and len(spectrum.dense_eigenvalues):
        known.append(float(np.max(spectrum.dense_eigenvalues)))
    top = max(known)
    if top > 0:
        return float(top), "lambda_max"
    return float(max(abs(lo), abs(top), 1e-300)), "spectral radius"


def bottom_line(spectrum, smallest_node) -> str:
    """The bottom eigenvalue when an eigensolver computed it, else the smallest node."""
    bottom = spectrum.bottom_eigenvalues()
    if len(bottom) and spectrum.dense_eigenvalues is None:
        return f"     bottom eigenvalue  {bottom[0]: .6e} (eigensolver)"
    if spectrum.dense_eigenvalues is not None and len(spectrum.dense_eigenvalues):
        return (f"     bottom eigenvalue  {np.min(spectrum.dense_eigenvalues): .6e} (exact, "
                "dense)")
    return (f"     bottom eigenvalue  unknown (no bottom-end eigensolver run); smallest SLQ "
            f"node {smallest_node: .6e}")
