"""Blockwise spectra: named diagonal blocks ``H_bb`` of a curvature operator (layers, module
prefixes, regular expressions, slices of one parameter such as the Q, K, V parts of a packed
attention projection or one head), presets for standard transformer layouts, and their top
eigenvalues and densities computed in lockstep, one pass over the data per step for all, and
the Jensen-Shannon distances between the blocks' densities (their heterogeneity)."""

from .heterogeneity import BlockHeterogeneity, block_heterogeneity, js_distance, js_matrix
from .presets import PRESETS, packed_qkv, preset_blocks
from .spec import Block, Regex, ResolvedBlock, Slice, resolve_blocks
from .spectra import BlockSpectra, BlockSpectrum, block_spectra, read_block_spectra

__all__ = ["Block", "Regex", "Slice", "ResolvedBlock", "resolve_blocks", "PRESETS",
           "packed_qkv", "preset_blocks", "block_spectra", "BlockSpectra", "BlockSpectrum",
           "read_block_spectra", "block_heterogeneity", "BlockHeterogeneity", "js_distance",
           "js_matrix"]
