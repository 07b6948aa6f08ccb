"""A data set's training and test split as tensors, and the seeded subsets and standardisation behind it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DataSplit", "RawImages", "fixed_split", "probe_subset", "standardised_split", "subset_indices"]

_HELD_OUT = 500  # test-set size of the fixed splits (at most a third of the data)


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
class RawImages:
    """Unnormalised ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels of both splits."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


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
    idx = subset_indices(y, size, torch.Generator().manual_seed(seed))
    return X[idx], y[idx]


def subset_indices(y: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
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


def standardised_split(
    key: str, raw: RawImages, n_train: int | None, n_test: int | None, seed: int, flatten: bool, dtype: torch.dtype
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
            idx = subset_indices(labels, size, torch.Generator().manual_seed(seed))
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


def fixed_split(X: np.ndarray, y: np.ndarray, n_classes: int) -> RawImages:
    """Seed-independent stratified split holding out ``min(500, n // 3)`` samples."""
    size = min(_HELD_OUT, len(y) // 3)
    held_out = subset_indices(torch.from_numpy(y), size, torch.Generator().manual_seed(0))
    test = np.zeros(len(y), dtype=bool)
    test[held_out.numpy()] = True
    return RawImages(X[~test], y[~test], X[test], y[test], n_classes)
