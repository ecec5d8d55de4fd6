"""Synthetic data sets of the seed papers, generated from a seed (nothing is downloaded).

* :func:`gaussian_clusters`: ``k`` Gaussian clusters in ``dim`` dimensions (Sagun et al.
  2018, Sec. 3.1: "inputs from k Gaussian clusters in 100 dimensions").
* :func:`two_blobs`: two 2-D Gaussian blobs (Sagun, Bottou and LeCun 2016, the simple case
  of their Sec. 3).
"""

from __future__ import annotations

import numpy as np
import torch


def _generator(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def standardize(inputs: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance per feature over the data set ("normalized" inputs)."""
    return (inputs - inputs.mean(0)) / np.maximum(inputs.std(0), 1e-12)


def gaussian_clusters(num_classes: int = 10, num_examples: int = 1000, dim: int = 100,
                      scale: float = 1.0, separation: float = 1.0, rng=0):
    """``num_classes`` Gaussian clusters, equally many samples each, then standardized.

    Class means ``mu_c ~ N(0, separation^2 I_dim)``; samples ``x = mu_c + sqrt(scale) * e``
    with ``e ~ N(0, I_dim)`` (``scale`` is the input covariance scale of the paper's
    Table 1: 1 or 10). Returns float32 inputs ``(N, dim)`` and int64 labels ``(N,)``,
    classes interleaved so that any prefix is nearly balanced.
    """
    if num_classes < 2 or num_examples < num_classes:
        raise ValueError(f"need num_classes >= 2 and num_examples >= num_classes, got "
                         f"{num_classes}, {num_examples}")
    gen = _generator(rng)
    means = separation * gen.standard_normal((num_classes, dim))
    labels = np.arange(num_examples) % num_classes
    inputs = means[labels] + np.sqrt(scale) * gen.standard_normal((num_examples, dim))
    return (torch.from_numpy(standardize(inputs)).float(), torch.from_numpy(labels).long())


def two_blobs(num_examples: int = 1000, distance: float = 4.0, std: float = 1.0, rng=0):
    """Two 2-D Gaussian blobs at ``(+-distance/2, 0)`` with isotropic ``std``; labels 0/1.

    Smaller ``distance / std`` makes the classes less separable (2016 paper, Fig. 9).
    """
    gen = _generator(rng)
    labels = np.arange(num_examples) % 2
    centers = np.stack([(2 * labels - 1) * distance / 2, np.zeros(num_examples)], axis=1)
    inputs = centers + std * gen.standard_normal((num_examples, 2))
    return torch.from_numpy(inputs).float(), torch.from_numpy(labels).long()
