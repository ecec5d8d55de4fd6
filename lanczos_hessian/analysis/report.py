"""Plain-text tables and summaries for the terminal (used by the CLI; no computation)."""

from __future__ import annotations

import numpy as np


def eigen_table(eigenvalues, residual_bounds, error_bounds=None, residuals=None,
                converged=None, reference=None, title="") -> str:
    """A table of eigenpairs, largest first, with their residuals and, if given, the exact values.

    ``reference`` holds exact eigenvalues in the same order as ``eigenvalues``.
    """
    order = np.argsort(eigenvalues)[::-1]
    header = f"{'rank':>4}  {'eigenvalue':>13}  {'resid. bound':>12}"
    if error_bounds is not None:
        header += f"  {'error bound':>11}"
    if residuals is not None:
        header += f"  {'true resid.':>11}"
    if reference is not None:
        header += f"  {'exact':>13}  {'|diff|':>9}"
    if converged is not None:
        header += "  conv"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for rank, i in enumerate(order, 1):
        row = f"{rank:>4}  {eigenvalues[i]:>13.6e}  {residual_bounds[i]:>12.2e}"
        if error_bounds is not None:
            row += f"  {error_bounds[i]:>11.2e}"
        if residuals is not None:
            row += f"  {residuals[i]:>11.2e}"
        if reference is not None:
            row += f"  {reference[i]:>13.6e}  {abs(reference[i] - eigenvalues[i]):>9.1e}"
        if converged is not None:
            row += "  " + ("yes" if converged[i] else "NO")
        lines.append(row)
    return "\n".join(lines)


def closest(values, reference) -> np.ndarray:
    """For each value, the nearest entry of ``reference`` (to line up exact eigenvalues)."""
    reference = np.sort(np.asarray(reference))
    idx = np.clip(np.searchsorted(reference, values), 1, len(reference) - 1)
    left, right = reference[idx - 1], reference[idx]
    return np.where(np.abs(values - left) <= np.abs(values - right), left, right)


def run_summary(result) -> str:
    """One paragraph: applications, passes, restarts, timings, convergence."""
    t = result.timings
    share = t.get("operator", 0.0) / max(t.get("total", 1e-12), 1e-12)
    return (
        f"{len(result.eigenvalues)} eigenpairs ({result.which}), "
        f"{int(result.converged.sum())} converged to tol={result.tol:g}*||A|| "
        f"(||A|| ~ {result.anorm:.4g}); {result.num_matvecs} operator applications in "
        f"{result.num_passes} data passes, {result.num_restarts} thick restarts; "
        f"{t.get('total', 0.0):.1f} s, {100 * share:.0f}% in the operator"
    )
