"""Where the raw images come from: scikit-learn's digits, and the publishers' files on local disk.

Nothing is ever downloaded: :func:`read_files` looks for the files a data set's publisher
distributes under ``data_dir`` and says exactly what it expected when they are missing.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .split import RawImages, fixed_split

__all__ = ["FILES", "digits", "read_files"]


@dataclass(frozen=True)
class _FileSet:
    """Where a file-based data set lives and how to read it."""

    files: tuple[str, ...]  # relative paths, all in one directory
    extra_dirs: tuple[str, ...]  # layouts other tools use, relative to data_dir
    gzip_ok: bool
    source: str
    read: Callable[[dict[str, Path]], RawImages]


def digits() -> RawImages:
    """Scikit-learn's 8×8 handwritten digits (1,797 images, values 0..16) in a fixed stratified split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    return fixed_split(X, bunch.target.astype(np.int64), 10)


def read_files(key: str, data_dir: str | os.PathLike[str] | None) -> RawImages:
    """Read data set ``key`` from its publisher's files under ``data_dir``; a clear error lists what is missing."""
    spec = FILES[key]
    root = Path(data_dir if data_dir is not None else os.environ.get("DIAGNOSTICS_DATA", "data")).expanduser()
    dirs = [root / key, root] + [root / extra for extra in spec.extra_dirs]
    for directory in dirs:
        found = {}
        for rel in spec.files:
            options = [directory / rel] + ([directory / f"{rel}.gz"] if spec.gzip_ok else [])
            hit = next((p for p in options if p.is_file()), None)
            if hit is None:
                break
            found[rel] = hit
        else:
            return spec.read(found)
    names = ", ".join(spec.files) + (" (each optionally gzipped, '.gz')" if spec.gzip_ok else "")
    raise FileNotFoundError(
        f"dataset {key!r} not found: expected the files {names} together in one of the directories "
        f"{', '.join(str(d) for d in dirs)}. Get them from {spec.source} and put them in one of these "
        "directories (pass data_dir= or set DIAGNOSTICS_DATA); nothing is downloaded at run time."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX array (the MNIST format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise ValueError(f"{path}: header says shape {dims} but holds {body.size} values")
    return body.reshape(dims)


def _idx_pair(files: dict[str, Path], images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = _read_idx(files[images]), _read_idx(files[labels]).astype(np.int64)
    if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{files[images]} and {files[labels]} do not hold matching images and labels")
    return X[:, None], y


def _read_mnist_like(files: dict[str, Path]) -> RawImages:
    X_train, y_train = _idx_pair(files, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    X_test, y_test = _idx_pair(files, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return RawImages(X_train, y_train, X_test, y_test, 10)


def _unpickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path} is not a CIFAR python batch (needs 'data' and {label_key!r})")
    X = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return X, np.asarray(batch[label_key], dtype=np.int64)


def _read_cifar(files: dict[str, Path], train: list[str], test: str, label_key: str, n_classes: int) -> RawImages:
    parts = [_unpickle(files[rel], label_key) for rel in train]
    X_test, y_test = _unpickle(files[test], label_key)
    X_train = np.concatenate([X for X, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return RawImages(X_train, y_train, X_test, y_test, n_classes)


def _read_svhn(files: dict[str, Path]) -> RawImages:
    from scipy.io import loadmat

    def split(rel: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(files[rel])
        X = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)  # (H, W, C, N) -> (N, C, H, W)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
        return np.ascontiguousarray(X), np.where(y == 10, 0, y)

    return RawImages(*split("train_32x32.mat"), *split("test_32x32.mat"), 10)


def _read_semeion(files: dict[str, Path]) -> RawImages:
    path = files["semeion.data"]
    table = np.loadtxt(path, ndmin=2)
    if table.shape[1] != 266:
        raise ValueError(
            f"{path}: expected 266 columns (256 pixels, 10 one-hot labels), got {table.shape[1]}"
        )
    X = np.rint(table[:, :256]).astype(np.uint8).reshape(-1, 1, 16, 16)
    return fixed_split(X, table[:, 256:].argmax(1).astype(np.int64), 10)


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_TRAIN = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
FILES: dict[str, _FileSet] = {
    "mnist": _FileSet(
        _MNIST_FILES,
        ("MNIST/raw",),
        True,
        "the MNIST database of handwritten digits (LeCun, Cortes & Burges), in IDX format "
        "(torchvision.datasets.MNIST stores the same files)",
        _read_mnist_like,
    ),
    "kmnist": _FileSet(
        _MNIST_FILES,
        ("KMNIST/raw",),
        True,
        "Kuzushiji-MNIST (ROIS-DS Center for Open Data in the Humanities, the rois-codh/kmnist "
        "repository), in IDX format (torchvision.datasets.KMNIST stores the same files)",
        _read_mnist_like,
    ),
    "cifar10": _FileSet(
        (*_CIFAR10_TRAIN, "cifar-10-batches-py/test_batch"),
        (),
        False,
        "the CIFAR-10 'python version' archive cifar-10-python.tar.gz (Krizhevsky, University of "
        "Toronto), extracted",
        lambda f: _read_cifar(f, _CIFAR10_TRAIN, "cifar-10-batches-py/test_batch", "labels", 10),
    ),
    "cifar100": _FileSet(
        ("cifar-100-python/train", "cifar-100-python/test"),
        (),
        False,
        "the CIFAR-100 'python version' archive cifar-100-python.tar.gz (Krizhevsky, University of "
        "Toronto), extracted; the 100 fine labels are used",
        lambda f: _read_cifar(f, ["cifar-100-python/train"], "cifar-100-python/test", "fine_labels", 100),
    ),
    "svhn": _FileSet(
        ("train_32x32.mat", "test_32x32.mat"),
        (),
        False,
        "The Street View House Numbers (SVHN) Dataset, format 2 (cropped digits), Stanford "
        "(torchvision.datasets.SVHN stores the same files)",
        _read_svhn,
    ),
    "semeion": _FileSet(
        ("semeion.data",),
        (),
        False,
        "the Semeion Handwritten Digit data set of the UCI Machine Learning Repository",
        _read_semeion,
    ),
}

#: Names accepted by :func:`load_dataset`.
