"""Selection and conversion shared by the offline data loaders: the class filter, the
deterministic class-balanced subset, and the uint8-images-to-tensors conversion (see
:mod:`lanczos_hessian.examples.datasets` for the options' semantics)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["NUM_CLASSES", "balanced_indices", "check_count", "select_classes", "sha256_file",
           "subset", "to_tensors"]

#: Every shipped data set has ten classes.
NUM_CLASSES = 10


def sha256_file(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of the file at ``path``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def balanced_indices(labels: np.ndarray, num_examples: int | None) -> np.ndarray:
    """Indices of a deterministic class-balanced first-``num_examples`` subset.

    Each example is ranked by its position among the examples of its own class;
    examples are taken by increasing rank, ties broken by increasing label, so
    the per-class counts differ by at most one until a class runs out.  The
    indices are returned sorted (file order).  ``None`` selects everything.
    """
    labels = np.asarray(labels)
    if num_examples is None:
        return np.arange(len(labels))
    check_count(num_examples, len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))
    return np.sort(order[:num_examples])


def check_count(num_examples: int, available: int) -> None:
    """Raise unless ``num_examples`` is an int in 1..available."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)):
        raise TypeError(f"num_examples must be an int or None, got {num_examples!r}")
    if not 1 <= num_examples <= available:
        raise ValueError(f"num_examples must be in 1..{available}, got {num_examples}")


def select_classes(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the examples whose label is in ``classes``; relabel to 0..k-1."""
    if classes is None:
        return images, labels
    chosen = [int(c) for c in classes]
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"classes must be non-empty and without repeats, got {classes!r}")
    if any(not 0 <= c < NUM_CLASSES for c in chosen):
        raise ValueError(f"classes must lie in 0..{NUM_CLASSES - 1}, got {classes!r}")
    mapping = np.full(NUM_CLASSES, -1, dtype=np.int64)
    mapping[chosen] = np.arange(len(chosen))
    keep = np.isin(labels, chosen)
    return images[keep], mapping[labels[keep]]


def subset(
    images: np.ndarray, labels: np.ndarray,
    classes: Sequence[int] | None, num_examples: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``classes`` then ``num_examples`` (see the module docstring)."""
    images, labels = select_classes(images, labels, classes)
    keep = balanced_indices(labels, num_examples)
    return images[keep], labels[keep]


def to_tensors(
    images: np.ndarray, labels: np.ndarray, *, max_value: float,
    mean: Sequence[float], std: Sequence[float], normalize: bool, flatten: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) integer images -> float32 in [0, 1], optionally
    standardised per channel and flattened; labels -> int64."""
    inputs = torch.from_numpy(images.astype(np.float32) / np.float32(max_value))
    if normalize:
        shape = (1, len(mean), 1, 1)
        inputs = (inputs - torch.tensor(mean).reshape(shape)) / torch.tensor(std).reshape(shape)
    if flatten:
        inputs = inputs.reshape(len(inputs), -1)
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
    return inputs.to(torch.float32), targets
