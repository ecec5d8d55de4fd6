"""Tests for lanczos_hessian.examples.datasets (offline real-data loaders)."""

from __future__ import annotations

import gzip
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lanczos_hessian.examples import datasets as ds

MNIST_SHA256 = "0217e13bd0668deb198aa7d305edbf0331eb89f8a6e7dd226e03d1aa3a9bd4ef"
MNIST_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


# ------------------------------------------------------------------ helpers


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode ``array`` as an (uncompressed) IDX file."""
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def make_fashion_dir(root: Path, split_sizes=(("train", 30), ("t10k", 20))) -> dict:
    """Write tiny Fashion-MNIST-style gzip IDX files; return the raw arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in split_sizes:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(images))
        write_idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(labels))
        arrays[prefix] = (images, labels)
    return arrays


def make_cifar_dir(root: Path, per_batch: int = 4, test_size: int = 3) -> dict:
    """Write five tiny training batches and a test batch; return the raw arrays."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train": ([], []), "test": ([], [])}
    names = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)] + [("test_batch", "test", test_size)]
    for k, (name, split, n) in enumerate(names):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [(k * n + j) % 10 for j in range(n)]
        ds.write_cifar10_batch(root / name, images, labels)
        arrays[split][0].append(images)
        arrays[split][1].append(labels)
    return {s: (np.concatenate(i), np.concatenate(l)) for s, (i, l) in arrays.items()}


# ------------------------------------------------------------------ MNIST


@pytest.fixture(scope="module")
def mnist_raw():
    return ds.load_mnist(normalize=False)


def test_mnist_file_checksum():
    path = ds._data_dir() / ds.MNIST_FILENAME
    assert path.is_file()
    assert ds.sha256_file(path) == MNIST_SHA256


def test_mnist_counts_shapes_dtypes(mnist_raw):
    x, y = mnist_raw
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    counts = torch.bincount(y, minlength=10).tolist()
    assert counts == MNIST_COUNTS
    # Roughly balanced; digit 5 has only 863 examples in this subset.
    assert all(800 <= c <= 1200 for c in counts)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_mnist_normalize_and_flatten(mnist_raw):
    x, y = ds.load_mnist(flatten=True)
    assert x.shape == (10_000, 784) and x.dtype == torch.float32
    expected = (mnist_raw[0].reshape(10_000, 784) - ds.MNIST_MEAN) / ds.MNIST_STD
    assert float((x - expected).abs().max()) < 1e-5
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01
    assert torch.equal(y, mnist_raw[1])


def test_mnist_num_examples_is_balanced_first_n(mnist_raw):
    x, y = ds.load_mnist(100, normalize=False)
    assert x.shape == (100, 1, 28, 28)
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    full_x, full_y = mnist_raw
    for digit in range(10):
        first = full_x[full_y == digit][:10]
        assert torch.equal(x[y == digit], first)
    x2, y2 = ds.load_mnist(100, normalize=False)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    _, y25 = ds.load_mnist(25)
    assert torch.bincount(y25, minlength=10).tolist() == [3] * 5 + [2] * 5


def test_mnist_classes_relabel(mnist_raw):
    x, y = ds.load_mnist(classes=(3, 8), normalize=False)
    assert len(y) == MNIST_COUNTS[3] + MNIST_COUNTS[8]
    assert torch.bincount(y).tolist() == [MNIST_COUNTS[3], MNIST_COUNTS[8]]
    full_x, full_y = mnist_raw
    assert torch.equal(x[y == 0], full_x[full_y == 3])
    _, y_rev = ds.load_mnist(classes=(8, 3))
    assert torch.bincount(y_rev).tolist() == [MNIST_COUNTS[8], MNIST_COUNTS[3]]
    _, y50 = ds.load_mnist(50, classes=[3, 8])
    assert torch.bincount(y50).tolist() == [25, 25]


@pytest.mark.parametrize("kwargs, error", [
    ({"classes": (10,)}, ValueError),
    ({"classes": (1, 1)}, ValueError),
    ({"classes": ()}, ValueError),
    ({"num_examples": 0}, ValueError),
    ({"num_examples": 10_001}, ValueError),
    ({"num_examples": 2.5}, TypeError),
])
def test_mnist_bad_arguments(kwargs, error):
    with pytest.raises(error):
        ds.load_mnist(**kwargs)


def test_mnist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_mnist_data.py"):
        ds.load_mnist(path=tmp_path / "missing.npz")


def test_mnist_malformed_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 27, 28), np.uint8), labels=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="28, 28"):
        ds.load_mnist(path=bad)


def test_balanced_indices_past_smallest_class():
    labels = np.array([0] * 5 + [1] * 2)
    assert ds.balanced_indices(labels, 4).tolist() == [0, 1, 5, 6]
    assert ds.balanced_indices(labels, 6).tolist() == [0, 1, 2, 3, 5, 6]
    assert ds.balanced_indices(labels, None).tolist() == list(range(7))


# ------------------------------------------------------------------ IDX / Fashion-MNIST


def test_fashion_mnist_tiny_files(tmp_path):
    arrays = make_fashion_dir(tmp_path)
    x, y = ds.load_fashion_mnist(root=tmp_path, normalize=False)
    images, labels = arrays["train"]
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images).float() / 255)
    assert y.tolist() == labels.tolist()

    xt, yt = ds.load_fashion_mnist("test", root=tmp_path, flatten=True)
    expected = (torch.from_numpy(arrays["t10k"][0]).float().reshape(20, 784) / 255 - ds.FASHION_MNIST_MEAN) / ds.FASHION_MNIST_STD
    torch.testing.assert_close(xt, expected)

    xs, ys = ds.load_fashion_mnist(root=tmp_path, num_examples=6, classes=(9, 0, 4))
    assert ys.tolist() == [1, 2, 0, 1, 2, 0]  # file order: labels 0, 4, 9, 0, 4, 9


def test_fashion_mnist_env_override(tmp_path, monkeypatch):
    make_fashion_dir(tmp_path)
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path))
    _, y = ds.load_fashion_mnist("test")
    assert len(y) == 20


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        ds.load_fashion_mnist(root=tmp_path)
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        ds.load_fashion_mnist()
    with pytest.raises(ValueError, match="split"):
        ds.load_fashion_mnist("validation", root=tmp_path)


def test_idx_parser_roundtrip_and_types(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    assert np.array_equal(ds.parse_idx(idx_bytes(values, 0x0C)), values)
    floats = np.linspace(0, 1, 5, dtype=np.float32)
    assert np.array_equal(ds.parse_idx(idx_bytes(floats, 0x0D)), floats)
    plain = tmp_path / "plain-idx1-ubyte"
    plain.write_bytes(idx_bytes(np.arange(7, dtype=np.uint8)))
    assert ds.read_idx(plain).tolist() == list(range(7))


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00\x08", "magic"),
    (b"\x08\x03\x00\x00" + b"\x00" * 12, "magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "magic"),
    (b"\x00\x00\x08\x00", "magic"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "header truncated"),
    (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1], "data bytes"),
    (idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\x00", "data bytes"),
])
def test_corrupt_idx_raises(tmp_path, payload, message):
    path = write_idx_gz(tmp_path / "x-idx3-ubyte.gz", payload)
    with pytest.raises(ValueError, match=message):
        ds.read_idx(path)


def test_corrupt_gzip_raises(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="gzip"):
        ds.read_idx(path)


def test_fashion_mnist_inconsistent_files(tmp_path):
    make_fashion_dir(tmp_path)
    write_idx_gz(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(ValueError, match="labels"):
        ds.load_fashion_mnist(root=tmp_path)
    write_idx_gz(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((29, 28, 27), np.uint8)))
    with pytest.raises(ValueError, match="28, 28"):
        ds.load_fashion_mnist(root=tmp_path)


_DEBIAN_FILES_PRESENT = all(
    (ds.FASHION_MNIST_DEFAULT_ROOT / name).is_file()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
)


@pytest.mark.skipif(
    not _DEBIAN_FILES_PRESENT,
    reason=f"Fashion-MNIST IDX files absent from {ds.FASHION_MNIST_DEFAULT_ROOT} "
           f"(install with `{ds.FASHION_MNIST_APT_COMMAND}`)",
)
def test_fashion_mnist_debian_counts():
    _, y_test = ds.load_fashion_mnist("test", root=ds.FASHION_MNIST_DEFAULT_ROOT)
    assert torch.bincount(y_test).tolist() == [1000] * 10
    images, labels = ds._read_idx_images_labels(
        *ds._fashion_mnist_files(ds.FASHION_MNIST_DEFAULT_ROOT, "train"))
    assert images.shape == (60_000, 28, 28)
    assert np.bincount(labels).tolist() == [6000] * 10
    x, _ = ds.load_fashion_mnist("train", 200, root=ds.FASHION_MNIST_DEFAULT_ROOT)
    assert x.shape == (200, 1, 28, 28)


# ------------------------------------------------------------------ scikit-learn digits


def test_digits():
    pytest.importorskip("sklearn", reason="scikit-learn (optional test dependency) not installed")
    x, y = ds.load_digits(normalize=False)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    xf, _ = ds.load_digits(flatten=True)
    assert xf.shape == (1797, 64)
    assert abs(float(xf.mean())) < 0.01 and abs(float(xf.std()) - 1.0) < 0.01
    _, y2 = ds.load_digits(20, classes=(1, 7))
    assert torch.bincount(y2).tolist() == [10, 10]


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        ds.load_digits()


# ------------------------------------------------------------------ CIFAR-10


def test_cifar10_roundtrip(tmp_path):
    arrays = make_cifar_dir(tmp_path / "cifar-10-batches-py")
    x, y = ds.load_cifar10(tmp_path / "cifar-10-batches-py", normalize=False)
    images, labels = arrays["train"]
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, torch.from_numpy(images).float() / 255)
    assert y.tolist() == labels.tolist()

    # Parent directory works too; per-channel normalisation and flatten.
    xt, yt = ds.load_cifar10(tmp_path, "test", flatten=True)
    mean = torch.tensor(ds.CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(ds.CIFAR10_STD).reshape(1, 3, 1, 1)
    expected = (torch.from_numpy(arrays["test"][0]).float() / 255 - mean) / std
    torch.testing.assert_close(xt, expected.reshape(3, 3072))
    assert yt.tolist() == arrays["test"][1].tolist()

    _, ys = ds.load_cifar10(tmp_path, num_examples=4, classes=(0, 1))
    assert torch.bincount(ys).tolist() == [2, 2]


def test_cifar10_numpy1_pickle_names(tmp_path):
    """The original batches name numpy 1's ``numpy.core.multiarray``."""
    arrays = make_cifar_dir(tmp_path)
    raw = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, _ = ds.load_cifar10(tmp_path, "test", normalize=False)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(arrays["test"][0]))


def test_write_cifar10_batch_format(tmp_path):
    images = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3, 32, 32)
    path = tmp_path / "data_batch_1"
    ds.write_cifar10_batch(path, images, [3, 7])
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"labels"] == [3, 7]
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (2, 3072)
    assert np.array_equal(batch[b"data"][1, :1024], images[1, 0].ravel())  # channel-major
    with pytest.raises(ValueError):
        ds.write_cifar10_batch(path, images.transpose(0, 2, 3, 1), [3, 7])
    with pytest.raises(ValueError):
        ds.write_cifar10_batch(path, images, [3, 10])


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not available offline"):
        ds.load_cifar10(tmp_path / "nowhere")
    make_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        ds.load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="split"):
        ds.load_cifar10(tmp_path, "val")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


@pytest.mark.parametrize("payload, message", [
    ({b"labels": [1]}, "keys"),
    ([1, 2, 3], "keys"),
    ({b"data": np.zeros((1, 3071), np.uint8), b"labels": [1]}, "3072"),
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "labels"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "0..9"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil()]}, "not allowed"),
])
def test_cifar10_malformed_batch(tmp_path, payload, message):
    make_cifar_dir(tmp_path)
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    with pytest.raises(ValueError, match=message):
        ds.load_cifar10(tmp_path, "test")


def test_cifar10_garbage_file(tmp_path):
    make_cifar_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="not a readable CIFAR-10"):
        ds.load_cifar10(tmp_path, "test")
