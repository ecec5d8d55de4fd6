"""CIFAR-10 from the standard python batches a user provides (never downloaded), read by an
unpickler that admits numpy arrays only; and a writer of such batches for tests."""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .selection import NUM_CLASSES, subset, to_tensors

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10",
           "write_cifar10_batch"]

# CIFAR-10 (Krizhevsky, 2009): per-channel (R, G, B) mean and std of the
# pixel values (scaled to [0, 1]) over the 50,000 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
_CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR10_PIXELS = 3 * 32 * 32


# Globals a CIFAR-10 python batch may reference: numpy array reconstruction
# (numpy 1 and 2 module names) and the bytes encoding used by protocol 2.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction,
    so a malicious batch file cannot run code."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch") from None


def _cifar10_dir(root: str | os.PathLike) -> Path:
    """``root`` or its ``cifar-10-batches-py`` subdirectory; raise if absent."""
    directory = Path(root)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 directory {directory} does not exist. CIFAR-10 is not available "
            "offline: obtain the python version (cifar-10-python.tar.gz) yourself and "
            "pass its extracted cifar-10-batches-py directory."
        )
    return directory


def _cifar10_batch_names(split: str) -> tuple[str, ...]:
    """File names of the batches of ``split`` ("train" or "test")."""
    if split not in _CIFAR10_BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _CIFAR10_BATCHES[split]


def _unpickle_batch(path: Path) -> object:
    """Unpickle one batch file with :class:`_ArrayOnlyUnpickler`."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file {path} not found")
    try:
        with open(path, "rb") as handle:
            return _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except OSError:
        raise
    except Exception as err:  # any unpickling failure means a malformed file
        raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({err})") from err


def _check_cifar10_batch(batch: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch dict; return uint8 (N, 3, 32, 32) images and int64 labels."""
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch must be a dict with keys b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR10_PIXELS:
        raise ValueError(f"{path}: b'data' must be uint8 (N, {_CIFAR10_PIXELS}), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"{path}: b'labels' must hold {len(data)} integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{path}: labels must lie in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(
    root: str | os.PathLike, split: str = "train", num_examples: int | None = None, *,
    classes: Sequence[int] | None = None, normalize: bool = True, flatten: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 (Krizhevsky, 2009) from the standard *python* batches.

    CIFAR-10 is not available offline and is never downloaded: ``root`` must
    be the extracted ``cifar-10-batches-py`` directory (or its parent), holding
    ``data_batch_1`` .. ``data_batch_5`` (``split="train"``, 50,000 images) or
    ``test_batch`` (``split="test"``, 10,000 images).  Each is a pickled dict
    with ``b"data"`` (uint8, N x 3072, channel-major R, G, B planes of 32 x 32)
    and ``b"labels"``.  Only numpy arrays are unpickled; other globals are refused.

    Images are scaled to [0, 1]; with ``normalize`` each channel is standardised
    with the training-set mean (0.4914, 0.4822, 0.4465) and std
    (0.2470, 0.2435, 0.2616).  Returns float32 (N, 3, 32, 32), or (N, 3072)
    with ``flatten``, and int64 targets.  Raises FileNotFoundError for a
    missing directory or batch, ValueError for a malformed batch.
    """
    directory = _cifar10_dir(root)
    parts = [
        _check_cifar10_batch(_unpickle_batch(directory / name), directory / name)
        for name in _cifar10_batch_names(split)
    ]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    images, labels = subset(images, labels, classes, num_examples)
    return to_tensors(
        images, labels, max_value=255.0, mean=CIFAR10_MEAN, std=CIFAR10_STD,
        normalize=normalize, flatten=flatten,
    )


def write_cifar10_batch(
    path: str | os.PathLike, images_uint8: np.ndarray, labels: Sequence[int], *,
    batch_label: bytes = b"training batch 1 of 5",
) -> None:
    """Write a CIFAR-10 python batch in the original format: a dict pickled
    with protocol 2, keys as bytes: ``b"batch_label"``, ``b"labels"`` (list of
    ints), ``b"data"`` (uint8 N x 3072, channel-major) and ``b"filenames"``.

    ``images_uint8`` is uint8 of shape (N, 3, 32, 32) or (N, 3072).
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.shape[1:] not in ((3, 32, 32), (_CIFAR10_PIXELS,)):
        raise ValueError(f"images must be uint8 (N, 3, 32, 32) or (N, 3072), got {images.dtype} {images.shape}")
    label_list = [int(label) for label in labels]
    if len(label_list) != len(images) or any(not 0 <= label < NUM_CLASSES for label in label_list):
        raise ValueError("labels must be one integer in 0..9 per image")
    batch = {
        b"batch_label": bytes(batch_label),
        b"labels": label_list,
        b"data": np.ascontiguousarray(images.reshape(len(images), _CIFAR10_PIXELS)),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
