"""Datasets, all offline: embedded digits, synthetic teachers, MNIST/CIFAR-10 files.

``load_dataset(name, n_train, n_test, seed)`` returns a :class:`Dataset` whose
inputs are standardised with the *training* mean and standard deviation, and
whose targets are +-1 for two-class tasks (real for regression teachers).

Names:

* ``digits:AvB`` (e.g. ``digits:3v8``), ``digits:even-odd``: scikit-learn's
  bundled 8x8 digits (1797 images, shipped inside the package).
* ``single-index:d=30,k=2``: Gaussian inputs, target ``He_k(w.x)/sqrt(k!)``
  with a random unit teacher ``w`` (``single-index-sign:...`` uses its sign).
* ``mixture:d=30,sep=3``: two Gaussian classes at ``+-(sep/2) u``.
* ``mnist:AvB``, ``mnist:even-odd``: MNIST IDX files from the data directory.
* ``cifar10:AvB`` (class indices or names, ``cifar10:cat-v-dog``): the CIFAR-10
  python batches from the data directory.

The data directory is ``data_dir`` if given, else ``$AKVIZ_DATA_DIR``, else
``~/.cache/akviz``.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Optional

import numpy as np

DEFAULT_DATASET = "digits:3v8"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

MNIST_URL = "https://yann.lecun.com/exdb/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train/test split. Iterating yields ``(x_train, y_train, x_test, y_test)``.

    Attributes:
      name: the name it was loaded by.
      x_train, x_test: ``(P, D)`` and ``(Q, D)`` float64 inputs, standardised
        with the training statistics.
      y_train, y_test: float64 targets (+-1 for classification).
      labels_train, labels_test: original class labels (or the targets), for
        sorting kernel heatmaps by class.
      description: one human-readable line.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels_train: np.ndarray
    labels_test: np.ndarray
    description: str = ""

    def __iter__(self):
        return iter((self.x_train, self.y_train, self.x_test, self.y_test))

    @property
    def is_binary(self) -> bool:
        return bool(np.all(np.abs(self.y_train) == 1))


def as_arrays(dataset):
    """``(x_train, y_train, x_test, y_test)`` as float64 arrays from a Dataset or a 4-tuple.

    Raises ``ValueError`` on inconsistent shapes, so every solver can accept
    either form with one call.
    """
    try:
        x_train, y_train, x_test, y_test = dataset
    except (TypeError, ValueError):
        raise ValueError(
            "dataset must be what akviz.load_dataset returns or a tuple (x_train, y_train, x_test, y_test)."
        ) from None
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train, y_test = np.asarray(y_train, np.float64), np.asarray(y_test, np.float64)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"x_train and x_test must be 2-D with equal widths, got {x_train.shape}, {x_test.shape}.")
    if y_train.shape != (x_train.shape[0],) or y_test.shape != (x_test.shape[0],):
        raise ValueError("y_train and y_test must be 1-D with one target per input.")
    if not (np.all(np.isfinite(x_train)) and np.all(np.isfinite(y_train))):
        raise ValueError("training inputs and targets must be finite.")
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- name parsing

def _parse_params(text: str, defaults: dict, name: str) -> dict:
    params = dict(defaults)
    if not text:
        return params
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(
                f"dataset {name!r}: bad parameter {item!r}; expected key=value with keys {sorted(defaults)}."
            )
        try:
            params[key] = type(defaults[key])(float(value)) if isinstance(defaults[key], int) else float(value)
        except ValueError:
            raise ValueError(f"dataset {name!r}: parameter {key} must be a number, got {value!r}.") from None
    return params


def _parse_pair(spec: str, name: str, class_names=None):
    """``'3v8'`` / ``'cat-v-dog'`` / ``'even-odd'`` -> (positive classes, negative classes)."""
    if spec == "even-odd":
        return (0, 2, 4, 6, 8), (1, 3, 5, 7, 9)
    parts = re.split(r"-?v-?", spec) if spec.count("v") == 1 else []
    if len(parts) != 2:
        raise ValueError(f"dataset {name!r}: expected a class pair like '3v8' or 'even-odd'.")
    out = []
    for part in parts:
        if part.isdigit() and 0 <= int(part) <= 9:
            out.append(int(part))
        elif class_names and part in class_names:
            out.append(class_names.index(part))
        else:
            allowed = "0-9" + (f" or one of {', '.join(class_names)}" if class_names else "")
            raise ValueError(f"dataset {name!r}: unknown class {part!r}; use {allowed}.")
    if out[0] == out[1]:
        raise ValueError(f"dataset {name!r}: the two classes must differ.")
    return (out[0],), (out[1],)


# ---------------------------------------------------------------- file loaders

def default_data_dir() -> Path:
    """``$AKVIZ_DATA_DIR`` or ``~/.cache/akviz``."""
    return Path(os.environ.get("AKVIZ_DATA_DIR") or Path.home() / ".cache" / "akviz")


def read_idx(path) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX data type code {code:#x}.")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[code], offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} but the file holds {data.size} values.")
    return data.reshape(dims)


def _find_file(data_dir: Path, subdirs, names):
    for sub in subdirs:
        for nm in names:
            for candidate in (data_dir / sub / nm, data_dir / sub / (nm + ".gz")):
                if candidate.is_file():
                    return candidate
    return None


def load_mnist(data_dir=None):
    """MNIST as ``((x_train, labels_train), (x_test, labels_test))``, pixels as float64.

    Looks for the four IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally ``.gz``) in
    ``data_dir``, ``data_dir/mnist`` or ``data_dir/MNIST/raw``.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    subdirs = ("", "mnist", "MNIST/raw")
    stems = {
        "train_x": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
        "train_y": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
        "test_x": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
        "test_y": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
    }
    found = {k: _find_file(data_dir, subdirs, v) for k, v in stems.items()}
    missing = [stems[k][0] for k, v in found.items() if v is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST files not found: {', '.join(missing)} (optionally .gz) in {data_dir} or {data_dir / 'mnist'}. "
            f"Download the four IDX files from {MNIST_URL} into {data_dir / 'mnist'}, "
            "or point --data-dir / AKVIZ_DATA_DIR at the folder that holds them."
        )
    out = []
    for split in ("train", "test"):
        images = read_idx(found[f"{split}_x"]).astype(np.float64)
        labels = read_idx(found[f"{split}_y"]).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels.")
        out.append((images.reshape(images.shape[0], -1), labels))
    return tuple(out)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but the few that a CIFAR-10 batch needs (numpy arrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch file.")


def _read_cifar_batch(path: Path):
    with open(path, "rb") as f:
        batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (needs b'data' and b'labels').")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: expected (n, 3072) uint8 data and n labels, got {data.shape}, {labels.shape}.")
    return data.astype(np.float64), labels


def load_cifar10(data_dir=None):
    """CIFAR-10 as ``((x_train, labels_train), (x_test, labels_test))`` from the python batches.

    Looks for ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` under
    ``data_dir``. The batches are pickles: they are read with an unpickler that
    refuses everything but NumPy arrays, and only from the user's own folder.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    candidates = [data_dir / "cifar-10-batches-py", data_dir, data_dir / "cifar10" / "cifar-10-batches-py"]
    root = next((c for c in candidates if (c / "test_batch").is_file()), None)
    if root is None:
        raise FileNotFoundError(
            f"CIFAR-10 python batches not found under {data_dir} (looked for cifar-10-batches-py/test_batch). "
            f"Download 'CIFAR-10 python version' from {CIFAR10_URL}, unpack it into {data_dir}, "
            "or point --data-dir / AKVIZ_DATA_DIR at the folder that holds cifar-10-batches-py."
        )
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files:
        raise FileNotFoundError(f"no data_batch_* files in {root}.")
    parts = [_read_cifar_batch(p) for p in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, _read_cifar_batch(root / "test_batch")


# ---------------------------------------------------------------- builders

def _binary_split(pool_train, pool_test, positive, negative, n_train, n_test, rng, name):
    """Sample ``n_train``/``n_test`` points of the two class groups; +1 for ``positive``."""
    def take(pool, n, which):
        x, labels = pool
        keep = np.flatnonzero(np.isin(labels, positive + negative))
        if n > keep.size:
            raise ValueError(
                f"dataset {name!r} has only {keep.size} {which} points of those classes; asked for {n}."
            )
        idx = rng.choice(keep, size=n, replace=False)
        lab = labels[idx]
        return x[idx], np.where(np.isin(lab, positive), 1.0, -1.0), lab

    if pool_test is None:  # one pool: split it without overlap
        x, labels = pool_train
        keep = np.flatnonzero(np.isin(labels, positive + negative))
        if n_train + n_test > keep.size:
            raise ValueError(
                f"dataset {name!r} has {keep.size} points of those classes; "
                f"n_train + n_test = {n_train + n_test} is too many."
            )
        idx = rng.permutation(keep)[: n_train + n_test]
        lab = labels[idx]
        y = np.where(np.isin(lab, positive), 1.0, -1.0)
        return (x[idx[:n_train]], y[:n_train], lab[:n_train]), (x[idx[n_train:]], y[n_train:], lab[n_train:])
    return take(pool_train, n_train, "training"), take(pool_test, n_test, "test")


def _digits_pool():
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64)


def _hermite_normalised(z, k):
    """``He_k(z) / sqrt(k!)``: unit variance under N(0, 1)."""
    coef = np.zeros(k + 1)
    coef[k] = 1.0
    return np.polynomial.hermite_e.hermeval(z, coef) / math.sqrt(math.factorial(k))


def _standardise(x_train, x_test):
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # constant pixels stay zero, not NaN
    return (x_train - mean) / std, (x_test - mean) / std


def load_dataset(name: str = DEFAULT_DATASET, n_train: int = 100, n_test: int = 200, seed: int = 0,
                 data_dir: Optional[str] = None) -> Dataset:
    """Load a named dataset, sample a split, standardise with train statistics.

    Raises ``ValueError`` for an unknown name or impossible sizes and
    ``FileNotFoundError`` (saying where to put the files) for missing MNIST/CIFAR files.
    """
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{label} must be a positive integer, got {n!r}.")
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}.")
    rng = np.random.default_rng(seed)
    family, _, spec = name.partition(":")
    labels_tr = labels_te = None

    if family in ("digits", "mnist", "cifar10"):
        class_names = CIFAR10_CLASSES if family == "cifar10" else None
        positive, negative = _parse_pair(spec, name, class_names)
        if family == "digits":
            pools = (_digits_pool(), None)
            desc = "scikit-learn 8x8 digits"
        elif family == "mnist":
            pools = load_mnist(data_dir)
            desc = "MNIST"
        else:
            pools = load_cifar10(data_dir)
            desc = "CIFAR-10"
        (x_tr, y_tr, labels_tr), (x_te, y_te, labels_te) = _binary_split(
            pools[0], pools[1], positive, negative, n_train, n_test, rng, name)
        desc += f", classes {positive} (+1) vs {negative} (-1)"
    elif family in ("single-index", "single-index-sign"):
        p = _parse_params(spec, {"d": 30, "k": 2}, name)
        d, k = p["d"], p["k"]
        if d < 1 or k < 1:
            raise ValueError(f"dataset {name!r}: d and k must be >= 1.")
        w = rng.standard_normal(d)
        w /= np.linalg.norm(w)
        x = rng.standard_normal((n_train + n_test, d))
        target = _hermite_normalised(x @ w, k)
        y = np.where(target >= 0, 1.0, -1.0) if family == "single-index-sign" else target
        x_tr, x_te, y_tr, y_te = x[:n_train], x[n_train:], y[:n_train], y[n_train:]
        desc = f"Gaussian inputs in d={d}, target {'sign of ' if family.endswith('sign') else ''}He_{k}(w.x)/sqrt({k}!)"
    elif family == "mixture":
        p = _parse_params(spec, {"d": 30, "sep": 3.0}, name)
        d = int(p["d"])
        if d < 1 or p["sep"] < 0:
            raise ValueError(f"dataset {name!r}: need d >= 1 and sep >= 0.")
        u = rng.standard_normal(d)
        u /= np.linalg.norm(u)
        y = rng.choice([-1.0, 1.0], size=n_train + n_test)
        x = rng.standard_normal((n_train + n_test, d)) + 0.5 * p["sep"] * y[:, None] * u
        x_tr, x_te, y_tr, y_te = x[:n_train], x[n_train:], y[:n_train], y[n_train:]
        desc = f"two Gaussian classes in d={d}, means +-{p['sep'] / 2:g} u"
    else:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of: {', '.join(n for n, _ in DATASETS)} "
            "(see `python -m akviz datasets`)."
        )

    x_tr, x_te = _standardise(np.asarray(x_tr, float), np.asarray(x_te, float))
    return Dataset(
        name=name, x_train=x_tr, y_train=np.asarray(y_tr, float), x_test=x_te, y_test=np.asarray(y_te, float),
        labels_train=np.asarray(labels_tr if labels_tr is not None else y_tr),
        labels_test=np.asarray(labels_te if labels_te is not None else y_te),
        description=desc,
    )


#: Name patterns and what they are, for ``python -m akviz datasets`` and the dashboard.
DATASETS = (
    ("digits:AvB", "embedded 8x8 digits, class A (+1) vs class B (-1), e.g. digits:3v8"),
    ("digits:even-odd", "embedded 8x8 digits, even (+1) vs odd (-1)"),
    ("single-index:d=30,k=2", "synthetic: Gaussian x, real target He_k(w.x)/sqrt(k!)"),
    ("single-index-sign:d=30,k=3", "synthetic: Gaussian x, target sign(He_k(w.x))"),
    ("mixture:d=30,sep=3", "synthetic: two Gaussian classes separated by sep"),
    ("mnist:AvB", "MNIST IDX files in the data dir (also mnist:even-odd)"),
    ("cifar10:AvB", "CIFAR-10 python batches in the data dir (indices or names, cifar10:cat-v-dog)"),
)

#: Ready-made names for menus (embedded, so always available).
EXAMPLE_DATASETS = ("digits:3v8", "digits:0v1", "digits:4v9", "digits:even-odd",
                    "single-index-sign:d=30,k=3", "single-index:d=30,k=2", "mixture:d=30,sep=3")


def list_datasets(data_dir=None):
    """``[(pattern, description, available)]``; file datasets are available when their files are found."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    rows = []
    for pattern, desc in DATASETS:
        available = True
        if pattern.startswith("mnist"):
            available = _find_file(data_dir, ("", "mnist", "MNIST/raw"), ("t10k-labels-idx1-ubyte",)) is not None
        elif pattern.startswith("cifar10"):
            available = any((c / "test_batch").is_file() for c in (data_dir / "cifar-10-batches-py", data_dir))
        rows.append((pattern, desc, available))
    return rows
