"""How different the blocks' spectra are: Jensen-Shannon distances between their densities.

Zhang et al. (2024, "Why Transformers Need Adam: A Hessian Perspective") measure the "block
heterogeneity" of a network by the Jensen-Shannon distance between the spectral densities of
its diagonal Hessian blocks ``H_bb``, averaged over pairs of blocks. Here, for blocks ``b``
and ``c``:

1. each block's density ``phi_b`` is its SLQ quadrature smoothed by a Gaussian of standard
   deviation ``width`` (:func:`~lanczos_hessian.linalg.density.spectral_density`), all on
   one common grid ``t_1 < ... < t_G`` of equal spacing, after dividing the block's Ritz
   values by its scale ``s_b`` (``scale="top"``: the largest ``|theta|`` of its Lanczos
   rules, which estimates ``||H_bb||``, so that shapes are compared; ``scale=None``: the
   eigenvalues as they are);
2. the densities become distributions on the grid, ``p_i = phi_b(t_i) / sum_j phi_b(t_j)``;
3. ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` and
   ``KL(p || m) = sum_i p_i log(p_i / m_i)`` (terms with ``p_i = 0`` are 0), natural logs;
   the distance is ``d(p, q) = sqrt(JS(p, q))``, a metric on distributions (Endres and
   Schindelin, IEEE Trans. Inf. Theory 49(7), 2003), between 0 (equal) and ``sqrt(log 2)``
   (disjoint supports); ``scipy.spatial.distance.jensenshannon``'s convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..linalg.density import spectral_density

__all__ = ["js_distance", "js_matrix", "BlockHeterogeneity", "block_heterogeneity"]


def js_distance(p, q) -> float:
    """Jensen-Shannon distance ``sqrt(JS(p, q))`` (natural logarithm) of two distributions
    on the same points: non-negative arrays of one shape, each normalized to sum 1 here.

    Disjoint supports are the furthest apart, ``sqrt(log 2)``:

    >>> round(js_distance([1.0, 0.0], [0.0, 1.0]), 6)
    0.832555
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"the two distributions have shapes {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or not (p.sum() > 0 and q.sum() > 0):
        raise ValueError("distributions must be non-negative with a positive total")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    divergence = (_kl(p, m) + _kl(q, m)) / 2
    return float(np.sqrt(max(divergence, 0.0)))


def _kl(p, m) -> float:
    """``sum_i p_i log(p_i / m_i)`` over ``p_i > 0`` (where ``m_i >= p_i / 2 > 0``, but for
    a subnormal ``p_i`` whose half rounds to 0: its term, under 1e-300, is left out)."""
    keep = (p > 0) & (m > 0)
    return float(np.sum(p[keep] * np.log(p[keep] / m[keep])))


def js_matrix(densities: list) -> np.ndarray:
    """``(K, K)`` symmetric matrix of :func:`js_distance` between ``K`` densities sampled
    on one grid (zero diagonal)."""
    K = len(densities)
    D = np.zeros((K, K))
    for i in range(K):
        for j in range(i + 1, K):
            D[i, j] = D[j, i] = js_distance(densities[i], densities[j])
    return D


@dataclass(frozen=True)
class BlockHeterogeneity:
    """Pairwise Jensen-Shannon distances between blocks' densities (module docstring).

    ``names`` (K,), ``scales`` (K,) the divisor of each block's eigenvalues (1 when raw),
    ``grid`` (G,), ``densities`` (K, G) on it, ``distances`` (K, K), ``width`` the kernel's
    standard deviation in the grid's units."""

    names: list
    scales: np.ndarray
    grid: np.ndarray
    densities: np.ndarray
    distances: np.ndarray
    width: float

    @property
    def pairs(self) -> np.ndarray:
        """The ``K (K - 1) / 2`` distances between distinct blocks (upper triangle)."""
        return self.distances[np.triu_indices(len(self.names), 1)]

    @property
    def mean_distance(self) -> float:
        """The mean distance over pairs of distinct blocks (the paper's averaged measure)."""
        return float(self.pairs.mean())


def block_heterogeneity(spectra, width: float, *, scale: str | None = "top",
                        num_points: int = 2048) -> BlockHeterogeneity:
    """Jensen-Shannon distances between the densities of the blocks of ``spectra`` (a
    :class:`~lanczos_hessian.blocks.spectra.BlockSpectra`; its blocks with a density).

    ``width`` is the Gaussian kernel's standard deviation, in units of each block's scale
    with ``scale="top"`` (e.g. 0.02: 2% of ``||H_bb||``), of the eigenvalues with
    ``scale=None``; the grid spans every block's nodes with ``5 width`` beyond them."""
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"width (kernel standard deviation) must be positive, got {width!r}")
    if scale not in ("top", None):
        raise ValueError(f"scale must be 'top' or None, got {scale!r}")
    blocks = [b for b in spectra.blocks if b.density is not None]
    if len(blocks) < 2:
        raise ValueError("the heterogeneity of blocks needs the densities of two or more")
    scales = np.array([_top(b.density.nodes) if scale == "top" else 1.0 for b in blocks])
    nodes = [b.density.nodes / s for b, s in zip(blocks, scales)]
    finite = np.concatenate([n[np.isfinite(n)] for n in nodes])
    grid = np.linspace(finite.min() - 5 * width, finite.max() + 5 * width, int(num_points))
    densities = np.array([spectral_density(n, b.density.weights, grid, width)[1]
                          for n, b in zip(nodes, blocks)])
    return BlockHeterogeneity([b.name for b in blocks], scales, grid, densities,
                              js_matrix(list(densities)), float(width))


def _top(nodes) -> float:
    """The largest ``|theta|`` of a block's rules (its spectral radius, as Lanczos sees it)."""
    finite = np.abs(nodes[np.isfinite(nodes)])
    top = float(finite.max()) if finite.size else 0.0
    if top <= 0:
        raise ValueError("a block's Ritz values are all zero: its spectrum has no scale")
    return top
