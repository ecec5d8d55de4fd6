"""Blockwise spectra in one run: top-k and SLQ density of every diagonal block ``H_bb``.

``block_spectra(op, blocks)`` resolves the blocks (:mod:`.spec`, :mod:`.presets`) against
the operator's parameters, refusing an empty selection or overlapping blocks before any pass,
then runs, for every block, the package's Lanczos eigensolver (:func:`lanczos_eigsh`, the
``k`` largest eigenvalues of ``H_bb`` with their residual bounds) and its stochastic Lanczos
quadrature (:func:`slq`, the spectral density of ``H_bb``), all in lockstep
(:mod:`.lockstep`): each step of all of them is one pass over the data. Zhang et al. (2024,
"Why Transformers Need Adam: A Hessian Perspective") compare exactly these per-block
densities across the blocks of a transformer and of a CNN.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..linalg.density import spectral_density
from ..linalg.eigsh import lanczos_eigsh
from ..linalg.slq import slq
from ..parallel.layout import operator_indices
from ..linalg.hooks import Hooks
from .files import BlockFile, SolverRun, stored_blocks
from .lockstep import run_in_lockstep
from .presets import PRESETS, preset_blocks
from .spec import resolve_blocks


@dataclass
class BlockSpectrum:
    """One block's results: ``eigs`` (an :class:`EigshResult` or None), ``density`` (an
    :class:`SLQResult` or None) and its size ``dim``."""

    name: str
    dim: int
    eigs: object = None
    density: object = None


@dataclass
class BlockSpectra:
    """The spectra of every block, in the order given, and the passes over the data taken:
    ``num_passes`` by this call, after the ``resumed_from`` passes that a resumed run had
    committed (the run's total is their sum)."""

    blocks: list
    num_passes: int
    seed: int = 0
    resumed_from: int = 0
    names: list = field(init=False)

    def __post_init__(self):
        self.names = [b.name for b in self.blocks]

    def __getitem__(self, name) -> BlockSpectrum:
        return self.blocks[self.names.index(name)]

    def densities(self, grid=None, width=None) -> tuple:
        """``(grid, {name: density})`` on one common grid and with one common Gaussian width
        (:func:`~lanczos_hessian.linalg.density.spectral_density`; default width 1/100 of
        the range of all blocks' nodes, so that the densities compare point by point)."""
        with_density = [b for b in self.blocks if b.density is not None]
        nodes = np.concatenate([b.density.nodes[np.isfinite(b.density.nodes)]
                                for b in with_density])
        span = float(nodes.max() - nodes.min()) or max(abs(float(nodes.max())), 1.0)
        width = width or span / 100
        if grid is None:
            grid = np.linspace(nodes.min() - 5 * width, nodes.max() + 5 * width, 1024)
        return grid, {b.name: spectral_density(b.density.nodes, b.density.weights, grid,
                                                width)[1] for b in with_density}

    def plot(self, path=None, ax=None, width=None):
        """The per-block densities on one axis (log scale), saved to ``path`` when given."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(7, 4))
        grid, dens = self.densities(width=width)
        for name, phi in dens.items():
            ax.semilogy(grid, np.maximum(phi, 1e-12), label=name, lw=1)
        ax.set_xlabel("eigenvalue of the diagonal block $H_{bb}$")
        ax.set_ylabel("spectral density")
        ax.legend(fontsize=6, ncol=2)
        if path is not None:
            (fig or ax.figure).savefig(path, dpi=120, bbox_inches="tight")
        return ax

    def summary(self) -> str:
        lines = [f"{'block':<32}{'dim':>8}  top eigenvalues"]
        for b in self.blocks:
            top = "" if b.eigs is None else "  ".join(
                f"{v:.6g}" for v in b.eigs.eigenvalues[::-1])
            lines.append(f"{b.name:<32}{b.dim:>8}  {top}")
        resumed = (f" (after {self.resumed_from} committed before the resume)"
                   if self.resumed_from else "")
        lines.append(f"passes over the data: {self.num_passes}{resumed}")
        return "\n".join(lines)


def block_spectra(op, blocks, *, k: int = 5, tol: float = 1e-6, max_matvecs=None,
                  num_probes: int = 10, num_steps: int = 40, seed=None,
                  per_head: bool = False, out=None, resume: bool = False,
                  overwrite: bool = False) -> BlockSpectra:
    """Top-``k`` eigenpairs and SLQ density of each diagonal block ``H_bb`` of ``op``.

    Parameters
    ----------
    op : CurvatureOperator
        The full operator (a torch-native operator with ``apply``, ``space``, ``device``).
    blocks : list of Block, dict or str
        The blocks (:mod:`lanczos_hessian.blocks.spec`), or a preset name
        (:mod:`lanczos_hessian.blocks.presets`: ``"mha"``, ``"encoder"``, ``"gpt2"``,
        ``"llama"``).
    k : int
        Largest eigenvalues per block (capped at the block's size); 0 for none.
    tol, max_matvecs
        :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`'s.
    num_probes, num_steps : int
        :func:`~lanczos_hessian.linalg.slq.slq`'s; ``num_probes=0`` for no density.
    seed : int, optional
        Seed of every block's random vectors (default: drawn by ``op.common_seed()``; give
        one to resume).
    out, resume, overwrite
        A spectrum file with one group per block (:mod:`lanczos_hessian.blocks.files`),
        every solver's state committed after every pass; ``resume=True`` keeps the blocks
        it holds complete and continues the others from the last pass all of them
        committed, bit for bit.

    Every step of every solver of every block shares one pass over the data, so the run
    takes ``max(num_steps, matvecs of the slowest eigensolver)`` passes.
    """
    if isinstance(blocks, str):
        if blocks not in PRESETS:
            raise ValueError(f"unknown block preset {blocks!r}; presets: {sorted(PRESETS)}")
        blocks = preset_blocks(op.model, blocks, per_head)
    resolved = resolve_blocks(op.space, blocks)  # refused here, before any pass
    resolved = [replace(b, indices=operator_indices(op, b.indices)) for b in resolved]
    if k < 0 or num_probes < 0 or (k == 0 and num_probes == 0):
        raise ValueError("ask for eigenvalues (k >= 1), a density (num_probes >= 1) or both")
    if resume and seed is None:
        raise ValueError("resume=True needs the seed of the run it continues (seed=)")
    seed = int(op.common_seed() if seed is None else seed)
    settings = {"k": k, "tol": tol, "max_matvecs": max_matvecs, "num_probes": num_probes,
                "num_steps": num_steps, "seed": seed}
    file = None if out is None else BlockFile(out, op, settings, resume=resume,
                                              overwrite=overwrite)
    wants = tuple(kind for kind, n in (("eigs", k), ("density", num_probes)) if n)
    spectra = [BlockSpectrum(b.name, b.dim) for b in resolved]
    runs = []
    for i, block in enumerate(resolved):
        stored = {} if file is None else file.finished(block, wants)
        for kind, result in stored.items():
            setattr(spectra[i], kind, result)
        runs += [(i, SolverRun.of(block, kind, k, num_probes, num_steps))
                 for kind in wants if kind not in stored]
    if not runs:
        return BlockSpectra(spectra, 0, seed)
    hooks = [Hooks()] * len(runs) if file is None else file.start([r for _, r in runs])
    tasks = [(i, _solver(run, k, tol, max_matvecs, num_probes, num_steps,
                         _seed(seed, i, run.kind == "density"), hook))
             for (i, run), hook in zip(runs, hooks)]
    try:
        results, passes = run_in_lockstep(op, resolved, tasks)
    except BaseException:
        if file is not None:
            file.close()  # every committed state stays: resume=True continues from it
        raise
    if file is not None:
        file.finish([r for _, r in runs], results)
    for (i, run), result in zip(runs, results):
        setattr(spectra[i], run.kind, result)
    return BlockSpectra(spectra, passes, seed,
                        resumed_from=0 if file is None else file.resumed_from)


def _solver(run, k, tol, max_matvecs, num_probes, num_steps, rng, hooks):
    """The task of one block's solver: ``view -> result``, committing after every step
    through ``hooks``."""
    dim = run.block.dim

    def solve(view):
        if run.kind == "eigs":
            return lanczos_eigsh(view, min(k, dim), "LA", tol, max_matvecs=max_matvecs,
                                 rng=rng, hooks=hooks)
        return slq(view, num_probes, min(num_steps, dim), rng=rng, hooks=hooks)

    return solve


def _seed(seed: int, block: int, role: int) -> int:
    """An independent seed per block and solver, the same on every rank."""
    return int(np.random.SeedSequence([seed, block, role]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def read_block_spectra(path) -> BlockSpectra:
    """The :class:`BlockSpectra` a file holds (complete groups only; ``num_passes`` 0:
    nothing was computed to read them)."""
    blocks, seed = [], 0
    for name, dim, seed, results in stored_blocks(path):
        blocks.append(BlockSpectrum(name, dim, results.get("eigs"), results.get("density")))
    return BlockSpectra(blocks, 0, seed)
