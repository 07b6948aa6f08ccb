"""What a width study trains on and measures on: the training batches in a seeded order, the probe, the test split.

The *probe* is a fixed set of samples ``(X, Y)`` on which every record of every run is measured (the Gram
``K = JJᵀ`` of its ``n·m`` outputs, D1, the certificate, ...); ``n·m`` is the counting threshold of S1
(``theory/width.md#s1-counting``). Given as ``probe=``, or drawn from the training data (a seeded subset of
``probe_size`` samples, the whole set when ``probe_size`` is ``None`` or larger).

Batches (:meth:`StudyData.batches`). ``batch_size=None``: every step uses the whole training set (full batch).
Otherwise each epoch visits the training samples in an order drawn from a generator seeded by the run's seed,
in batches of ``batch_size`` (a last incomplete batch is dropped), so every width of one seed sees the same
batches. A ``DataLoader`` brings its own batches: the global generator is reseeded from the run's seed at the
start of every epoch, which fixes its shuffling and its workers' seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data import DataSplit
from ..engine import inputs as _inputs
from ..errors import DiagnosticsError
from ..tracking.reference import fingerprint

__all__ = ["StudyData", "study_data"]

Pair = tuple[_inputs.Inputs, torch.Tensor]


@dataclass(frozen=True, eq=False)
class StudyData:
    """The training data, the probe and the test split of a study.

    Attributes
    ----------
    name
        The data set's name (in titles).
    train
        ``(X, Y)`` tensors, a map-style ``Dataset`` of ``(x, y)`` pairs or a ``DataLoader``.
    probe
        ``(X, Y)`` of the measurements.
    test
        ``(X, Y)`` of the test metrics, or ``None``.
    probe_is_train
        Whether the probe is the whole training set (full-batch training then descends the probe's loss).
    """

    name: str
    train: Pair | Dataset | DataLoader
    probe: Pair
    test: Pair | None
    probe_is_train: bool

    @property
    def n_train(self) -> int | None:
        """Training samples (``None`` for an iterable ``DataLoader``)."""
        return _size(self.train)

    @property
    def n_probe(self) -> int:
        """Probe samples ``n``."""
        return int(self.probe[1].shape[0])

    def full_batch(self, batch_size: int | None) -> bool:
        """Whether every step uses the whole training set, and that set is the probe."""
        return batch_size is None and not isinstance(self.train, DataLoader) and self.probe_is_train

    def batches_text(self, batch_size: int | None) -> str:
        """How the steps draw their batches, in words (why they are not the full batch of the probe)."""
        if isinstance(self.train, DataLoader):
            return f"minibatches of the DataLoader (batch size {self.train.batch_size})"
        if batch_size is not None:
            return f"minibatches of {batch_size} of {self.n_train} samples"
        if not self.probe_is_train:
            return f"the whole training set of {self.n_train} samples, but the probe is {self.n_probe} of them"
        return "the whole training set, which is the probe"

    def batches(self, batch_size: int | None, seed: int, device: torch.device) -> Iterator[Pair]:
        """Yield training batches ``(x, y)`` on ``device`` without end, in the order of ``seed``."""
        if isinstance(self.train, DataLoader):
            yield from _epochs_of_loader(self.train, seed, device)
            return
        pair = self.train if isinstance(self.train, tuple) else None
        if batch_size is None:
            whole = _on(pair if pair is not None else _collate(self.train, range(len(self.train))), device)
            while True:
                yield whole
        generator = torch.Generator().manual_seed(seed)
        n = self.n_train
        while True:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                index = order[start:start + batch_size]
                batch = (_inputs.take(pair[0], index), pair[1][index]) if pair is not None else _collate(
                    self.train, index.tolist())
                yield _on(batch, device)

    def key(self) -> dict[str, Any]:
        """Return what identifies the data in run fingerprints: its name, hashes of the tensors, sizes of the rest."""
        return {"name": self.name, "probe": fingerprint(*self.probe, None),
                "test": fingerprint(*self.test, None) if self.test is not None else None,
                "train": fingerprint(*self.train, None) if isinstance(self.train, tuple) else
                f"{type(self.train).__name__} of {self.n_train} samples"}

    def to_dict(self) -> dict[str, Any]:
        """Metadata only: name, sizes, the probe's input structure."""
        return {"name": self.name, "n_train": self.n_train, "n_probe": self.n_probe,
                "n_test": None if self.test is None else int(self.test[1].shape[0]),
                "probe_inputs": _inputs.describe(self.probe[0]), "probe_is_train": self.probe_is_train}


def study_data(data: Any, *, probe: Any = None, probe_size: int | None = 128, test: Any = None,
               name: str | None = None) -> StudyData:
    """Normalise the data a study is given.

    Parameters
    ----------
    data
        A :class:`~diagnostics.data.DataSplit` (its test split becomes ``test``), a pair ``(X, Y)`` of
        tensors/arrays (``X`` may be a tuple or dict of tensors), a map-style ``Dataset`` of ``(x, y)`` pairs or
        a ``DataLoader``.
    probe
        The probe data, in any form :func:`diagnostics.check_alignment` accepts (default: from ``data``).
    probe_size
        Samples of the probe drawn from ``data`` (seed 0) when ``probe`` is not given; ``None``: all.
    test
        Test data for the test metrics (default: a ``DataSplit``'s test split, else none).
    name
        The data's name (default: the ``DataSplit``'s, else ``"data"``).

    Raises
    ------
    DiagnosticsError
        For data in no accepted form, inputs and targets of different lengths, or empty data.
    """
    if isinstance(data, DataSplit):
        name = name or data.name
        test = test if test is not None else (data.X_test, data.y_test)
        data = (data.X_train, data.y_train)
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise DiagnosticsError(f"data as a sequence must be a pair (X, Y), got {len(data)} items")
        data = _inputs.probe_data(tuple(data), None, 0)
    elif not isinstance(data, DataLoader | Dataset):
        raise DiagnosticsError("data must be a DataSplit, a pair (X, Y), a map-style Dataset of (x, y) pairs or a "
                               f"DataLoader; got {type(data).__name__}")
    if probe is not None:
        probe_pair = _inputs.probe_data(probe, None, 0)
    else:
        probe_pair = _inputs.probe_data(data, probe_size, 0)
    n = _size(data)
    probe_is_train = probe is None and n is not None and (probe_size is None or probe_size >= n)
    return StudyData(name or "data", data, probe_pair,
                     _inputs.probe_data(test, None, 0) if test is not None else None, probe_is_train)


def _size(train: Pair | Dataset | DataLoader) -> int | None:
    if isinstance(train, tuple):
        return _inputs.batch_size(train[0])
    source = train.dataset if isinstance(train, DataLoader) else train
    return len(source) if _inputs.is_map_style(source) else None


def _on(batch: Pair, device: torch.device) -> Pair:
    x, y = batch
    return _inputs.map_inputs(lambda t: t.to(device), x), y.to(device)


def _collate(dataset: Dataset, indices: Any) -> Pair:
    x, y = _inputs.split_pair(default_collate([dataset[int(i)] for i in indices]))
    return _inputs.normalise_inputs(x), _inputs.as_tensor(y, "targets")


def _epochs_of_loader(loader: DataLoader, seed: int, device: torch.device) -> Iterator[Pair]:
    epoch = 0
    while True:
        torch.manual_seed(seed * 1_000_003 + epoch)  # the loader's shuffling and worker seeds come from here
        count = 0
        for batch in loader:
            x, y = _inputs.split_pair(batch)
            count += 1
            yield _on((_inputs.normalise_inputs(x), _inputs.as_tensor(y, "targets")), device)
        if count == 0:
            raise DiagnosticsError("the DataLoader yielded no batch")
        epoch += 1
