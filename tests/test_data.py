"""Datasets: embedded, synthetic, and the MNIST / CIFAR-10 file loaders on tiny files in the real formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest

import akviz
from akviz.data import as_arrays, read_idx


def _write_idx(path, array, compress):
    """IDX format: 0x0000, dtype code 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _write_mnist(folder, compress, n_train=40, n_test=30, seed=0):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_loader_roundtrip(tmp_path, compress):
    arrays = _write_mnist(tmp_path, compress)
    (x_tr, l_tr), (x_te, l_te) = akviz.load_mnist(tmp_path)
    np.testing.assert_array_equal(x_tr, arrays["train"][0].reshape(40, -1))
    np.testing.assert_array_equal(l_te, arrays["t10k"][1])
    ds = akviz.load_dataset("mnist:3v8", n_train=6, n_test=4, seed=1, data_dir=str(tmp_path))
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (4, 784)
    assert set(ds.labels_train) <= {3, 8} and set(ds.labels_test) <= {3, 8}
    np.testing.assert_array_equal(ds.y_train, np.where(ds.labels_train == 3, 1.0, -1.0))


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="Download") as err:
        akviz.load_dataset("mnist:3v8", 10, 10, data_dir=str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        akviz.load_dataset("cifar10:cat-v-dog", 10, 10, data_dir=str(tmp_path))


def _write_cifar(folder, n_per_batch=20, seed=0):
    """The CIFAR-10 python format: pickled dicts with bytes keys, data (n, 3072) uint8."""
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
                 b"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * n_per_batch}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def test_cifar10_loader_and_names(tmp_path):
    _write_cifar(tmp_path)
    (x_tr, l_tr), (x_te, l_te) = akviz.load_cifar10(tmp_path)
    assert x_tr.shape == (100, 3072) and x_te.shape == (20, 3072)
    n_cat_dog = int(np.isin(l_tr, [3, 5]).sum())
    ds = akviz.load_dataset("cifar10:cat-v-dog", n_train=min(5, n_cat_dog), n_test=2, seed=0, data_dir=str(tmp_path))
    assert set(ds.labels_train) <= {3, 5}
    np.testing.assert_array_equal(ds.y_train, np.where(ds.labels_train == 3, 1.0, -1.0))


def test_cifar10_loader_refuses_code_in_pickles(tmp_path):
    root = _write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        akviz.load_cifar10(tmp_path)


def test_digits_pair_standardised_with_train_statistics():
    ds = akviz.load_dataset("digits:3v8", n_train=100, n_test=200, seed=0)
    assert ds.x_train.shape == (100, 64) and ds.x_test.shape == (200, 64)
    assert set(np.unique(ds.y_train)) == {-1.0, 1.0}
    np.testing.assert_array_equal(ds.y_test, np.where(ds.labels_test == 3, 1.0, -1.0))
    varying = ds.x_train.std(axis=0) > 0
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(ds.x_train.std(axis=0)[varying], 1, atol=1e-12)
    assert np.all(np.isfinite(ds.x_test))
    again = akviz.load_dataset("digits:3v8", n_train=100, n_test=200, seed=0)
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    other = akviz.load_dataset("digits:3v8", n_train=100, n_test=200, seed=1)
    assert not np.array_equal(ds.x_train, other.x_train)


def test_even_odd_and_synthetic_tasks():
    ds = akviz.load_dataset("digits:even-odd", 50, 50, seed=0)
    np.testing.assert_array_equal(ds.y_train, np.where(ds.labels_train % 2 == 0, 1.0, -1.0))
    reg = akviz.load_dataset("single-index:d=10,k=2", 2000, 10, seed=0)
    assert reg.x_train.shape == (2000, 10) and not reg.is_binary
    assert abs(reg.y_train.var() - 1.0) < 0.15  # He_2/sqrt(2) has unit variance
    sign = akviz.load_dataset("single-index-sign:d=10,k=3", 50, 10, seed=0)
    assert sign.is_binary
    mix = akviz.load_dataset("mixture:d=5,sep=4", 400, 10, seed=0)
    # Class means sit +-2 apart along one direction: a linear read-out separates them.
    diff = mix.x_train[mix.y_train > 0].mean(0) - mix.x_train[mix.y_train < 0].mean(0)
    assert np.linalg.norm(diff) > 2.0


@pytest.mark.parametrize("name,n_train,match", [
    ("nope", 10, "unknown dataset"),
    ("digits:3v3", 10, "must differ"),
    ("digits:3x8", 10, "class pair"),
    ("digits:3v8", 500, "too many"),
    ("mixture:d=abc", 10, "must be a number"),
    ("single-index:q=3", 10, "bad parameter"),
    ("digits:3v8", 0, "positive integer"),
])
def test_bad_dataset_arguments(name, n_train, match):
    with pytest.raises(ValueError, match=match):
        akviz.load_dataset(name, n_train, 10)


def test_as_arrays_accepts_tuples_and_validates():
    ds = akviz.load_dataset("digits:0v1", 10, 5)
    for arrays in (ds, tuple(ds)):
        x_tr, y_tr, x_te, y_te = as_arrays(arrays)
        assert x_tr.shape == (10, 64) and y_te.shape == (5,)
    with pytest.raises(ValueError, match="x_train and x_test"):
        as_arrays((ds.x_train, ds.y_train, ds.x_test[:, :3], ds.y_test))
    with pytest.raises(ValueError, match="load_dataset"):
        as_arrays(ds.x_train)
