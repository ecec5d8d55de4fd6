"""Stochastic Lanczos quadrature (SLQ): the whole spectral measure of a symmetric operator.

For the ``n x n`` symmetric ``A = sum_j lambda_j y_j y_j^T`` and a unit probe ``u``, the
measure ``mu_u = sum_j (u^T y_j)^2 delta(lambda_j)`` has Gauss quadrature rule given by
``m`` Lanczos steps from ``q_1 = u``: with ``T_m = S diag(theta) S^T`` the ``m x m``
tridiagonal (diagonal ``alphas``, off-diagonal ``betas``), the nodes are ``theta_i`` and the
weights ``w_i = S[0, i]^2`` (Golub and Welsch, Math. Comp. 23, 1969), and

    u^T f(A) u  ~  sum_i w_i f(theta_i)  =  e_1^T f(T_m) e_1,

exactly for polynomials ``f`` of degree ``<= 2m - 1`` (Golub and Meurant, *Matrices, Moments
and Quadrature with Applications*, 2010, ch. 6).

Probes and the estimator
------------------------
A probe ``z`` is Rademacher (entries +-1) or Gaussian (entries N(0, 1)), normalized to
``u = z / ||z||``. Both give ``E[u u^T] = I / n`` (Rademacher: ``||z||^2 = n`` exactly;
Gaussian: ``u`` is uniform on the sphere), hence the standard unbiased estimator of Ubaru,
Chen and Saad (SIAM J. Matrix Anal. Appl. 38(4), 2017):

    tr f(A)  ~  (n / P) sum_p sum_i w[p, i] f(theta[p, i]),

and the probe-averaged quadrature measure estimates ``mu = (1/n) sum_j delta(lambda_j)``.
For Gaussian probes the factor is ``n`` (not ``||z||^2``, Hutchinson's unnormalized form):
both are unbiased and the normalized form has the smaller variance.

Lockstep probes
---------------
All ``P`` probes run their own Lanczos recurrence, and advance together: each step applies
the operator ONCE to the ``(n, b)`` block of the current vectors of the ``b <= P`` probes
still running. An operator that makes one pass over a data set per block (a
:class:`~lanczos_hessian.curvature.operators.CurvatureOperator`) thus makes exactly ``num_steps``
passes, whatever ``P``. Each probe's step is, with full reorthogonalization, the step of
:class:`~lanczos_hessian.linalg.lanczos.LanczosProcess` (``alpha = q^T A q``, then classical
Gram-Schmidt twice against the probe's own basis), so lockstep and one-probe-at-a-time
runs give the same numbers.

Breakdown: when ``beta_j <= eps * ||T|| * max(100, sqrt(n))`` (the rule of
:mod:`~lanczos_hessian.linalg.lanczos`) the Krylov space of the probe is invariant and its
``j``-node rule already integrates ``mu_u`` exactly. The probe then stops: it is dropped
from later block products (it costs nothing more), its last ``beta`` is recorded as 0, and
its rows of ``nodes``/``weights`` are padded with NaN nodes of weight 0.

Without reorthogonalization
---------------------------
``reorthogonalize=False`` runs the plain three-term recurrence (Paige's ordering:
``w = A q_j - beta_{j-1} q_{j-1}``; ``alpha_j = q_j^T w``; ``w -= alpha_j q_j``), keeping
three vectors per probe instead of ``m``. In floating point the Lanczos vectors then lose
orthogonality as soon as a Ritz value converges (Paige, J. Inst. Math. Appl. 18, 1976) and
"ghost" copies of converged eigenvalues appear; yet the computed ``T_m`` is the exact
Lanczos matrix of a nearby larger problem whose eigenvalues lie in tiny intervals around
those of ``A`` (Greenbaum, Linear Algebra Appl. 113, 1989, "Behavior of slightly perturbed
Lanczos and conjugate-gradient recurrences"), so the ghosts split the weight of their
eigenvalue rather than adding to it, and the Gauss rule still integrates smooth ``f``
(polynomials, wide kernels, the CDF at a resolution coarser than the node spacing) almost
as accurately as in exact arithmetic (Knizhnerman, Comput. Math. Math. Phys. 36(3), 1996;
Chen, Trogdon and Ubaru, ICML 2021, "Analysis of stochastic Lanczos quadrature for
spectrum approximation", Sec. 5). Memory falls from ``P * m * n`` to ``3 * P * n`` numbers.

Deflation
---------
Given ``k`` eigenpairs ``(lambda_j, y_j)`` (e.g. the outliers from
:func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`), SLQ runs on ``P A P`` restricted to the
complement of ``Y = [y_1 .. y_k]``, ``P = I - Y Y^T`` (``Y`` re-orthonormalized by QR so
``P`` is an exact orthogonal projector): probes are projected (``u = P z / ||P z||``) and
every product is projected again. The spectral measure of ``A`` is then

    mu = sum_j (1/n) delta(lambda_j) + ((n - k)/n) * mu_bulk,

with ``mu_bulk`` estimated by the Gauss rules (``bulk_mass = (n - k)/n``). With Gaussian
probes ``P z / ||P z||`` is uniform on the unit sphere of the complement, so the
estimator stays exactly unbiased; with Rademacher probes it is a ratio estimator with a
relative bias of order ``k/n``.
"""

from __future__ import annotations

from .deflated import DeflatedPlan, deflated_slq, deflation_plan, with_deflation_cost
from .probes import ORTHONORMALITY_TOL, PROBES, draw_probes, split_seed
from .slq_drivers import adaptive_slq, check_slq_arguments, check_target, slq
from .slq_result import (SLQResult, SLQStep, count_duplicate_nodes, gauss_quadrature,
                         quadrature_rules)
from .slq_state import AdaptiveSLQState, SLQState, interval_half_width, merge_rounds

__all__ = ["AdaptiveSLQState", "DeflatedPlan", "ORTHONORMALITY_TOL", "PROBES", "SLQResult",
           "SLQState", "SLQStep", "adaptive_slq", "check_slq_arguments", "check_target",
           "count_duplicate_nodes", "deflated_slq", "deflation_plan", "draw_probes",
           "gauss_quadrature", "interval_half_width", "merge_rounds", "quadrature_rules",
           "slq", "split_seed", "with_deflation_cost"]
