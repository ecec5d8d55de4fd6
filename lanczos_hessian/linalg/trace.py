"""Hutchinson's trace estimator, with its standard error, in blocks of probes per pass.

For a symmetric ``A`` (``n x n``) and probes ``z`` with ``E[z z^T] = I`` (Rademacher entries
+-1, or standard normal), ``E[z^T A z] = tr(A)`` (Hutchinson, Commun. Stat. Simul. Comput.
19(2), 1990). The estimate is the mean of ``z_p^T A z_p`` over ``P`` probes; its standard error
is their sample standard deviation over ``sqrt(P)`` (the variance of one Rademacher probe is
``2 (||A||_F^2 - sum_i A_ii^2)``). The probes are applied ``probes_per_pass`` at a time, so
``P`` probes cost ``ceil(P / probes_per_pass)`` passes over the data. The same probes through
:func:`~lanczos_hessian.linalg.slq.slq` give the same trace with one Lanczos step each; SLQ's
further steps buy the rest of the spectrum, not a better trace.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import validate
from .density import Estimate, estimate
from .linop import BlockMatvec, as_block_matvec
from .probes import PROBES, draw_probes, resolve_seed


def hutchinson_trace(op, num_probes: int = 100, *, probes_per_pass: int = 10,
                     probe: str = "rademacher", rng=None, dim: int | None = None) -> Estimate:
    """``tr(A)`` by Hutchinson's estimator with its standard error (module docstring).

    ``rng`` is an int seed, a numpy Generator or None; the probes are
    ``draw_probes(n, num_probes, probe, seed)``, so ``slq(op, num_probes, 1, rng=seed)``
    uses the same ones.

    Examples
    --------
    For a diagonal matrix a Rademacher probe gives ``z^T D z = tr D`` exactly:

    >>> import numpy as np
    >>> hutchinson_trace(np.diag([1.0, 2.0, 3.0]), num_probes=4, rng=0).value
    6.0
    """
    for name, value in (("num_probes", num_probes), ("probes_per_pass", probes_per_pass)):
        validate.integer(name, value, low=1)
    validate.choice("probe", probe, PROBES)
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    Z = torch.from_numpy(draw_probes(matvec.dim, num_probes, probe,
                                     resolve_seed(rng, matvec)))
    values = []
    for start in range(0, num_probes, probes_per_pass):
        block = Z[:, start:start + probes_per_pass].to(matvec.device)
        AZ = matvec(block).to(block.device, torch.float64)
        values.append((block * AZ).sum(dim=0).cpu().numpy())
    return estimate(np.concatenate(values))


__all__ = ["Estimate", "hutchinson_trace"]
