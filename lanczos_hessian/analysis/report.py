"""Plain-text tables and summaries for the terminal (used by the CLI; no computation).

Ordering: every table lists eigenpairs in the order of the arrays they come from, ascending
by eigenvalue (scipy's ``eigsh`` convention, that of ``EigshResult.eigenvalues``), with the
array index in the first column, so that row ``i`` is ``result.eigenvalues[i]``.

Residual columns, named for what they are:

* ``Ritz bound`` -- ``|beta_m s_mi|`` (``residual_bounds``): the residual norm
  ``||A y_i - theta_i y_i||`` the Lanczos recurrence implies in exact arithmetic; free, and
  blind to the rounding of the products (it can read 1e-22 for float32 products);
* ``measured`` -- ``||A y_i - theta_i y_i||`` computed with one more pass (``residuals``,
  ``true_residuals=True``): includes the products' own rounding;
* ``error bound`` -- ``min(r, r^2 / gap)`` with ``r`` the larger of the two: how far
  ``theta_i`` can be from an eigenvalue of ``A``.

A bound below the float64 floor ``eps * max |theta|`` (rounding of the eigenvalues
themselves) says nothing more than "at the floor", and is printed as ``< floor``
(e.g. ``< 6e-18``) rather than as ``5.92e-101``.
"""

from __future__ import annotations

import textwrap

import numpy as np

from ..linalg.eigsh_result import bound_floor, bound_text

#: The legend printed under every eigenpair table.
RESIDUAL_LEGEND = (
    "i: index into result.eigenvalues (ascending, as scipy's eigsh); Ritz bound: "
    "|beta_m s_mi|, the residual in exact arithmetic (free); measured: ||A y - theta y|| "
    "from one more pass (includes the products' rounding); error bound: distance of theta "
    "to an eigenvalue of A")


def eigen_table(eigenvalues, residual_bounds, error_bounds=None, residuals=None,
                converged=None, reference=None, title="", rows=None) -> str:
    """A table of eigenpairs in array order (ascending), the array index in column ``i``.

    ``reference`` holds exact eigenvalues in the same order as ``eigenvalues``. ``rows``
    (array indices, optional) restricts the table to those pairs, still ascending; skipped
    runs of pairs are shown as one ``...`` line. The columns are explained in the module
    docstring and in the legend printed under the table.
    """
    eigenvalues = np.asarray(eigenvalues)
    order = np.argsort(eigenvalues, kind="stable")  # the arrays' own order when sorted
    floor = bound_floor(eigenvalues)
    keep = set(range(len(order)) if rows is None else (int(i) for i in rows))
    header = f"{'i':>4}  {'eigenvalue':>14}  {'Ritz bound':>10}"
    if residuals is not None:
        header += f"  {'measured':>10}"
    if error_bounds is not None:
        header += f"  {'error bound':>11}"
    if reference is not None:
        header += f"  {'exact':>14}  {'|diff|':>9}"
    if converged is not None:
        header += "  conv"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    skipped = False
    for i in order:
        if i not in keep:
            skipped = True
            continue
        if skipped:
            lines.append(f"{'...':>4}")
            skipped = False
        row = f"{i:>4}  {eigenvalues[i]:>14.7e}  {_number(residual_bounds, i, 10, floor)}"
        if residuals is not None:
            row += f"  {_number(residuals, i, 10, floor)}"
        if error_bounds is not None:
            row += f"  {_number(error_bounds, i, 11, floor)}"
        if reference is not None:
            row += f"  {reference[i]:>14.7e}  {abs(reference[i] - eigenvalues[i]):>9.1e}"
        if converged is not None:
            row += "  " + ("yes" if converged[i] else "NO")
        lines.append(row)
    if skipped:
        lines.append(f"{'...':>4}")
    lines += textwrap.wrap(RESIDUAL_LEGEND, 96)
    return "\n".join(lines)


def _number(values, i, width, floor=0.0) -> str:
    """``values[i]`` in a column of ``width`` (a dash where there are no values; ``< floor``
    below the floor)."""
    if values is None:
        return f"{'-':>{width}}"
    return bound_text(values[i], floor, width)


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
