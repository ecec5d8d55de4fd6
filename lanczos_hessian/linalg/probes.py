"""SLQ's probes: their distributions and seeds, and the deflation projector they start in.

>>> draw_probes(3, 2, "rademacher", 0).shape
(3, 2)
>>> split_seed(0) == split_seed(0)
True
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .eigsh_result import EigshResult
from .lanczos import EPS
from .partition import Whole

__all__ = ["PROBES", "ORTHONORMALITY_TOL", "draw_probes", "resolve_seed", "split_seed",
           "Projector", "parse_deflate", "start_vectors"]

#: The probe distributions (the command line's ``--probe`` choices).
PROBES = ("rademacher", "gaussian")

#: Tolerance on ``max |Y^T Y - I|`` for deflation vectors (they are re-orthonormalized
#: afterwards; this only rejects vectors that are not eigenvectors of one symmetric matrix).
ORTHONORMALITY_TOL = 1e-3


def draw_probes(dim: int, num_probes: int, kind: str = "rademacher", rng=None) -> np.ndarray:
    """``(dim, num_probes)`` float64 raw probes (not normalized): +-1 or N(0, 1) entries.

    ``rng`` is an int seed or a numpy ``Generator``; :func:`slq` with ``rng=seed`` uses
    ``draw_probes(n, P, kind, seed)``.
    """
    if kind not in PROBES:
        raise ValueError(f"unknown probe={kind!r}; choose one of {PROBES}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if kind == "rademacher":
        return 2.0 * gen.integers(0, 2, size=(dim, num_probes)).astype(np.float64) - 1.0
    return gen.standard_normal((dim, num_probes))


def resolve_seed(rng, matvec) -> int:
    """An integer seed: ``rng`` itself, drawn from a Generator, or for None fresh entropy
    (63 bits, an int64 attribute; the operator's, so that every rank draws the same)."""
    if rng is None:
        return matvec.draw_seed()
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    raise TypeError(f"rng must be None, a non-negative int or a numpy Generator, got {rng!r}")


def split_seed(seed) -> tuple:
    """``(eigensolver seed, probe seed)``: two independent integer seeds spawned from ``seed``
    (``numpy.random.SeedSequence(seed).spawn(2)``), so that a deflated run draws its probes
    independently of its eigensolver's start vector, and the same probes whether it ran
    whole or resumed. Every deflated SLQ of the package (Python, command line, demo) splits
    its seed here."""
    return tuple(int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))


class Projector:
    """``P = I - Q Q^T`` for an orthonormal basis ``Q`` of ``span(Y)`` (identity if ``k = 0``).

    With a split :class:`~lanczos_hessian.linalg.partition.Whole`, ``Y`` is whole and ``Q``
    keeps this process's rows; ``Q^T W`` is summed over processes.
    """

    def __init__(self, Y: torch.Tensor | None, shard=None):
        self.shard = shard or Whole(0 if Y is None else Y.shape[0])
        Q = None if Y is None or Y.shape[1] == 0 else torch.linalg.qr(Y)[0]
        self.Q = None if Q is None else self.shard.local(Q).contiguous()

    @property
    def rank(self) -> int:
        return 0 if self.Q is None else self.Q.shape[1]

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        """``P W``, by classical Gram-Schmidt twice (``W`` is ``(n, b)``, or this rank's rows)."""
        if self.Q is None:
            return W
        for _ in range(2):
            W = W - self.Q @ self.shard.sum(self.Q.T @ W)
        return W


def parse_deflate(deflate, dim: int, device) -> tuple:
    """``(values (k,), residuals (k,), Y (n, k) tensor or None)`` from the ``deflate`` argument."""
    if deflate is None:
        return np.zeros(0), np.zeros(0), None
    if isinstance(deflate, EigshResult):
        values, vectors = deflate.eigenvalues, deflate.eigenvectors
        residuals = deflate.residual_bounds
        if vectors is None:
            raise ValueError("deflate: the EigshResult holds no eigenvectors "
                             "(use return_eigenvectors=True)")
    elif isinstance(deflate, (tuple, list)) and len(deflate) in (2, 3):
        values, vectors = deflate[0], deflate[1]
        residuals = deflate[2] if len(deflate) == 3 else None
    else:
        raise TypeError("deflate must be (eigenvalues, eigenvectors), (eigenvalues, "
                        "eigenvectors, residuals) or an EigshResult")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    k = values.size
    Y = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors)
    Y = Y.to(device, torch.float64)
    if Y.ndim != 2 or Y.shape != (dim, k):
        raise ValueError(f"deflate: eigenvectors have shape {tuple(Y.shape)}, expected "
                         f"({dim}, {k}) for {k} eigenvalues")
    if not k < dim:
        raise ValueError(f"deflate: {k} eigenpairs leave no complement in dimension {dim}")
    if not (np.all(np.isfinite(values)) and bool(torch.isfinite(Y).all())):
        raise ValueError("deflate: eigenvalues and eigenvectors must be finite")
    gram_error = float((Y.T @ Y - torch.eye(k, dtype=torch.float64, device=device))
                       .abs().max()) if k else 0.0
    if gram_error > ORTHONORMALITY_TOL:
        raise ValueError(f"deflate: eigenvectors are not orthonormal (max |Y^T Y - I| = "
                         f"{gram_error:.2e} > {ORTHONORMALITY_TOL:g})")
    residuals = (np.full(k, np.nan) if residuals is None
                 else np.asarray(residuals, dtype=np.float64).reshape(-1))
    if residuals.size != k:
        raise ValueError(f"deflate: {residuals.size} residuals for {k} eigenpairs")
    return values, residuals, (Y if k else None)


def start_vectors(probes, num_probes, probe, rng, matvec, project, shard) -> tuple:
    """Unit columns ``P z / ||P z||`` (this rank's rows of them when sharded) and the seed
    (None for explicit probes)."""
    n, device = matvec.dim, matvec.device
    if probes is None:
        seed = resolve_seed(rng, matvec)
        Z = torch.from_numpy(draw_probes(n, num_probes, probe, seed))
    else:
        seed = None
        Z = torch.as_tensor(np.asarray(probes) if not isinstance(probes, torch.Tensor)
                            else probes).to(torch.float64)
        if Z.ndim == 1:
            Z = Z[:, None]
        if Z.shape != (n, num_probes):
            raise ValueError(f"probes have shape {tuple(Z.shape)}, expected ({n}, "
                             f"{num_probes}) (num_probes={num_probes})")
    Z = project(shard.local(Z).to(device))
    norms = shard.sum((Z * Z).sum(dim=0)).sqrt().to(device)
    if not bool(torch.isfinite(norms).all()) or bool((norms <= EPS * math.sqrt(n)).any()):
        raise ValueError("a probe is zero (or not finite) after projection onto the "
                         "complement of the deflated eigenvectors")
    return Z / norms, seed
