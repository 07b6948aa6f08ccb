"""Data sets as tensors: the paper's image benchmarks, scikit-learn's digits and a synthetic task.

:func:`load_dataset` returns a :class:`DataSplit` of standardised inputs and labels. The image
sets of THEORY §6 (MNIST, KMNIST, CIFAR-10, CIFAR-100, SVHN, Semeion) are read from the files
their publishers distribute, which must already be on disk: nothing is ever downloaded. The
digits (8×8, 1,797 images) ship with scikit-learn, and ``"teacher-student"`` is a synthetic
regression task whose targets a random teacher network produces, so both work anywhere.

Conventions
-----------
- Images are ``(C, H, W)`` (``flatten=True`` gives ``(C·H·W,)``), standardised per channel with the
  mean and (population) standard deviation of the *whole* training split, so the test inputs do not
  depend on ``n_train``.
- Labels are ``int64`` class indices; regression targets are float ``(n, m)``.
- Data sets without an official test set (digits, Semeion) get a fixed stratified split holding out
  ``min(500, n // 3)`` samples; it does not depend on ``seed``.
- ``n_train``/``n_test`` take seeded, stratified random subsets (see :func:`probe_subset`); full
  splits keep the order of the files.
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
from typing import Any

import numpy as np
import torch

__all__ = ["DATASETS", "DataSplit", "load_dataset", "probe_subset"]

_HELD_OUT = 500  # test-set size of the fixed splits (at most a third of the data)
_TEACHER_DEFAULTS: dict[str, Any] = {
    "d_in": 8,
    "m": 3,
    "teacher_width": 16,
    "teacher_depth": 1,
    "activation": "tanh",
    "noise": 0.0,
}


@dataclass(frozen=True, eq=False)
class DataSplit:
    """A training and a test split of one data set, as tensors.

    Attributes
    ----------
    name : str
        Canonical data-set name (a key of :data:`DATASETS`).
    X_train, X_test : torch.Tensor
        Float inputs of shape ``(n, *input_shape)``.
    y_train, y_test : torch.Tensor
        ``int64`` class indices of shape ``(n,)`` for classification, float targets of shape
        ``(n, m)`` for regression.
    n_classes : int or None
        Number of classes (``None`` for regression).
    input_shape : tuple of int
        Shape of one input: ``(C, H, W)`` for images, ``(d,)`` when flat.
    task : str
        ``"classification"`` or ``"regression"``.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None
    input_shape: tuple[int, ...]
    task: str

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        for split, X, y in (("train", self.X_train, self.y_train), ("test", self.X_test, self.y_test)):
            if X.shape[0] != y.shape[0] or tuple(X.shape[1:]) != tuple(self.input_shape):
                raise ValueError(
                    f"{split} split: inputs {tuple(X.shape)} and targets {tuple(y.shape)} do not match "
                    f"input_shape {self.input_shape}"
                )

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.X_test.shape[0])

    @property
    def n_outputs(self) -> int:
        """Outputs ``m`` a model needs: the number of classes, or the target dimension."""
        return int(self.n_classes) if self.n_classes is not None else int(self.y_train.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """Metadata only (no tensors): name, task, sizes, shapes and dtype."""
        return {
            "name": self.name,
            "task": self.task,
            "n_classes": self.n_classes,
            "n_outputs": self.n_outputs,
            "input_shape": list(self.input_shape),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "dtype": str(self.X_train.dtype).removeprefix("torch."),
        }

    def __str__(self) -> str:
        kind = f"{self.n_classes} classes" if self.n_classes is not None else f"{self.n_outputs} targets"
        dtype = str(self.X_train.dtype).removeprefix("torch.")
        return (
            f"{self.name}: {self.task}, {kind}, inputs {self.input_shape} {dtype}, "
            f"{self.n_train} train / {self.n_test} test"
        )


@dataclass(frozen=True)
class _Raw:
    """Unnormalised ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels of both splits."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


@dataclass(frozen=True)
class _FileSet:
    """Where a file-based data set lives and how to read it."""

    files: tuple[str, ...]  # relative paths, all in one directory
    extra_dirs: tuple[str, ...]  # layouts other tools use, relative to data_dir
    gzip_ok: bool
    source: str
    read: Callable[[dict[str, Path]], _Raw]


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    flatten: bool = False,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> DataSplit:
    """Load a data set as standardised tensors, from local files only.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``"digits"``, ``"mnist"``, ``"kmnist"``, ``"cifar10"``,
        ``"cifar100"``, ``"svhn"``, ``"semeion"``, ``"teacher-student"`` (case-insensitive,
        ``_`` accepted for ``-``).
    data_dir : str or path-like, optional
        Root folder of the data files; each data set is looked for in ``data_dir/<name>/``, in
        ``data_dir/`` itself and in torchvision's layout (``MNIST/raw``, ``KMNIST/raw``). Defaults to
        the environment variable ``DIAGNOSTICS_DATA``, else ``./data``. Unused by digits and
        teacher-student.
    n_train, n_test : int, optional
        Sizes of seeded, stratified random subsets of the splits (default: the whole split). For
        teacher-student they are the generated sizes (default 256 each).
    seed : int
        Seed of the subsets and of the teacher-student task.
    flatten : bool
        Return images as vectors of length ``C·H·W``.
    dtype : torch.dtype
        Floating dtype of the inputs (and of regression targets).
    **options
        Teacher-student only: ``d_in`` (8), ``m`` (3), ``teacher_width`` (16), ``teacher_depth``
        (1 hidden layer), ``activation`` (``"tanh"``), ``noise`` (0.0, standard deviation of
        Gaussian noise added to the targets).

    Returns
    -------
    DataSplit

    Raises
    ------
    FileNotFoundError
        When the files of a file-based data set are missing; the message lists the expected file
        names, the directories searched and where the files are published.
    ValueError
        For an unknown name, options that do not apply, a non-floating ``dtype`` or subset sizes
        that are not positive or exceed the split.

    Notes
    -----
    The CIFAR files are Python pickles; only load files you trust.
    """
    key = _canonical(name)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    for arg, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{arg} must be a positive integer or None, got {value!r}")
    if key == "teacher-student":
        return _teacher_student(n_train or 256, n_test or 256, seed, dtype, options)
    if options:
        raise ValueError(f"options {sorted(options)} apply only to 'teacher-student', not to {key!r}")
    raw = _digits() if key == "digits" else _read_files(key, data_dir)
    return _finish(key, raw, n_train, n_test, seed, flatten, dtype)


def probe_subset(
    X: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a seeded random subset ``(X[idx], y[idx])`` of ``size`` samples.

    When ``y`` holds class indices (a 1-D integer tensor) the subset is stratified: class ``c``
    with ``n_c`` of the ``n`` samples gets ``⌊size·n_c/n⌋`` of them, and the remaining places go
    to the classes with the largest remainders (ties to the smaller class index). Otherwise the
    samples are drawn uniformly without replacement. The subset comes in a random order, so any
    prefix (for example the fit/fresh halves of :func:`~diagnostics.check_cms`) is itself a
    random sample. The same arguments always give the same subset; the global RNG is not used.

    Parameters
    ----------
    X : torch.Tensor
        Inputs, batched along dimension 0.
    y : torch.Tensor
        Labels or targets, batched along dimension 0.
    size : int
        Number of samples, ``1 ≤ size ≤ n``.
    seed : int
        Seed of the draw.

    Returns
    -------
    tuple of torch.Tensor
        The inputs and the labels of the subset.
    """
    n = int(X.shape[0])
    if y.shape[0] != n:
        raise ValueError(f"X holds {n} samples but y holds {y.shape[0]}")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
        raise ValueError(f"size must be an integer between 1 and {n} (the number of samples), got {size!r}")
    idx = _subset_indices(y, size, torch.Generator().manual_seed(seed))
    return X[idx], y[idx]


def _subset_indices(y: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Return the indices of a random subset (stratified for class indices) in random order."""
    n = int(y.shape[0])
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return torch.randperm(n, generator=generator)[:size]
    classes, inverse, counts = torch.unique(y.cpu(), return_inverse=True, return_counts=True)
    take = counts * size // n
    remainder = counts * size % n
    order = torch.sort(remainder, descending=True, stable=True).indices
    take[order[: size - int(take.sum())]] += 1
    chosen = []
    for c in range(len(classes)):
        members = (inverse == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: int(take[c])]])
    picked = torch.cat(chosen)
    return picked[torch.randperm(len(picked), generator=generator)]


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def _finish(
    key: str, raw: _Raw, n_train: int | None, n_test: int | None, seed: int, flatten: bool, dtype: torch.dtype
) -> DataSplit:
    """Subsets, per-channel standardisation with training statistics, tensors."""
    mean, std = _channel_stats(raw.X_train)
    tensors = []
    for split, X, y, size in (
        ("n_train", raw.X_train, raw.y_train, n_train),
        ("n_test", raw.X_test, raw.y_test, n_test),
    ):
        labels = torch.from_numpy(y)
        if size is not None:
            if size > len(labels):
                raise ValueError(f"{split}={size} but {key} has only {len(labels)} samples in that split")
            idx = _subset_indices(labels, size, torch.Generator().manual_seed(seed))
            X, labels = X[idx.numpy()], labels[idx]
        tensors += [_standardise(X, mean, std, dtype, flatten), labels]
    shape = tuple(raw.X_train.shape[1:])
    return DataSplit(
        name=key,
        X_train=tensors[0],
        y_train=tensors[1],
        X_test=tensors[2],
        y_test=tensors[3],
        n_classes=raw.n_classes,
        input_shape=(math.prod(shape),) if flatten else shape,
        task="classification",
    )


def _channel_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and population std of ``uint8`` images, from value histograms."""
    values = np.arange(256, dtype=np.float64)
    mean, std = np.empty(X.shape[1]), np.empty(X.shape[1])
    for c in range(X.shape[1]):
        counts = np.bincount(X[:, c].ravel(), minlength=256).astype(np.float64)
        mean[c] = counts @ values / counts.sum()
        std[c] = math.sqrt(counts @ (values - mean[c]) ** 2 / counts.sum())
    std[std == 0] = 1.0  # a constant channel is only centred
    return mean, std


def _standardise(
    X: np.ndarray, mean: np.ndarray, std: np.ndarray, dtype: torch.dtype, flatten: bool
) -> torch.Tensor:
    work = torch.promote_types(dtype, torch.float32)
    t = torch.from_numpy(np.ascontiguousarray(X)).to(work)
    shape = (1, -1) + (1,) * (X.ndim - 2)
    t = (t - torch.from_numpy(mean).to(work).view(shape)) / torch.from_numpy(std).to(work).view(shape)
    return (t.flatten(1) if flatten else t).to(dtype)


def _fixed_split(X: np.ndarray, y: np.ndarray, n_classes: int) -> _Raw:
    """Seed-independent stratified split holding out ``min(500, n // 3)`` samples."""
    size = min(_HELD_OUT, len(y) // 3)
    held_out = _subset_indices(torch.from_numpy(y), size, torch.Generator().manual_seed(0))
    test = np.zeros(len(y), dtype=bool)
    test[held_out.numpy()] = True
    return _Raw(X[~test], y[~test], X[test], y[test], n_classes)


def _digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    return _fixed_split(X, bunch.target.astype(np.int64), 10)


def _teacher_student(n_train: int, n_test: int, seed: int, dtype: torch.dtype, options: dict) -> DataSplit:
    """``y = teacher(x) + noise·ε`` with ``x ~ N(0, I)`` and a seeded NTK-parameterised teacher MLP."""
    from .models import build_model

    unknown = set(options) - set(_TEACHER_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown teacher-student options {sorted(unknown)}; known: {', '.join(_TEACHER_DEFAULTS)}"
        )
    opt = {**_TEACHER_DEFAULTS, **options}
    for k in ("d_in", "m", "teacher_width"):
        if isinstance(opt[k], bool) or not isinstance(opt[k], int) or opt[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {opt[k]!r}")
    if opt["noise"] < 0:
        raise ValueError(f"noise must be non-negative, got {opt['noise']!r}")
    teacher = build_model(
        "mlp",
        opt["teacher_width"],
        input_shape=(opt["d_in"],),
        n_out=opt["m"],
        parameterization="ntk",
        seed=seed,
        depth=opt["teacher_depth"],
        activation=opt["activation"],
    ).double()
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n_train + n_test, opt["d_in"], generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(X)
    y = y + opt["noise"] * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    X, y = X.to(dtype), y.to(dtype)
    return DataSplit(
        name="teacher-student",
        X_train=X[:n_train],
        y_train=y[:n_train],
        X_test=X[n_train:],
        y_test=y[n_train:],
        n_classes=None,
        input_shape=(opt["d_in"],),
        task="regression",
    )


# ---------------------------------------------------------------------------------------------
# File formats


def _read_files(key: str, data_dir: str | os.PathLike[str] | None) -> _Raw:
    spec = _FILES[key]
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


def _read_mnist_like(files: dict[str, Path]) -> _Raw:
    X_train, y_train = _idx_pair(files, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    X_test, y_test = _idx_pair(files, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return _Raw(X_train, y_train, X_test, y_test, 10)


def _unpickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path} is not a CIFAR python batch (needs 'data' and {label_key!r})")
    X = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return X, np.asarray(batch[label_key], dtype=np.int64)


def _read_cifar(files: dict[str, Path], train: list[str], test: str, label_key: str, n_classes: int) -> _Raw:
    parts = [_unpickle(files[rel], label_key) for rel in train]
    X_test, y_test = _unpickle(files[test], label_key)
    X_train = np.concatenate([X for X, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return _Raw(X_train, y_train, X_test, y_test, n_classes)


def _read_svhn(files: dict[str, Path]) -> _Raw:
    from scipy.io import loadmat

    def split(rel: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(files[rel])
        X = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)  # (H, W, C, N) -> (N, C, H, W)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
        return np.ascontiguousarray(X), np.where(y == 10, 0, y)

    return _Raw(*split("train_32x32.mat"), *split("test_32x32.mat"), 10)


def _read_semeion(files: dict[str, Path]) -> _Raw:
    path = files["semeion.data"]
    table = np.loadtxt(path, ndmin=2)
    if table.shape[1] != 266:
        raise ValueError(
            f"{path}: expected 266 columns (256 pixels, 10 one-hot labels), got {table.shape[1]}"
        )
    X = np.rint(table[:, :256]).astype(np.uint8).reshape(-1, 1, 16, 16)
    return _fixed_split(X, table[:, 256:].argmax(1).astype(np.int64), 10)


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_TRAIN = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
_FILES: dict[str, _FileSet] = {
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
DATASETS: tuple[str, ...] = ("digits", *_FILES, "teacher-student")
