"""The Jacobian of a whole data set, streamed batch by batch (theory/alignment.md#data-parallel).

:class:`StreamedJacobianOperator` is the :class:`~diagnostics.engine.matrix_free.operator.JacobianOperator` of a
map-style :class:`~torch.utils.data.Dataset` (or a :class:`~torch.utils.data.DataLoader` over one) that
is never held in memory whole: every product reads the samples again, batch by batch, in index order
(with the data set's ``__getitems__`` when it has one, as :class:`~torch.utils.data.DataLoader` does),
so the memory is ``O(d)`` plus one batch's activations, plus the ``n·m``-vectors of the products,
which :class:`VectorStore` keeps as :class:`numpy.memmap` files in a work folder once they exceed their
budget. An index range ``shard=(start, stop)`` gives one process's block of rows of ``J`` in a
data-parallel job (:mod:`~diagnostics.engine.matrix_free.sharded`).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ...errors import DiagnosticsError
from .. import inputs as _inputs
from ..functional import ParamSelector
from .operator import JacobianOperator

__all__ = ["DEFAULT_BATCH", "StreamedJacobianOperator", "VectorStore", "shard_range"]

#: Samples per batch when neither ``batch_size`` nor a DataLoader gives one.
DEFAULT_BATCH = 256


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Return the contiguous index range ``[start, stop)`` of process ``rank`` among ``world`` (sizes differ by ≤ 1)."""
    if not 0 <= rank < world:
        raise DiagnosticsError(f"rank must be in [0, {world}), got {rank}")
    if n < world:
        raise DiagnosticsError(f"{n} samples cannot be shared among {world} processes: each needs at least one")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


class VectorStore:
    """Arrays in memory, or as :class:`numpy.memmap` files in a work folder once they exceed ``budget`` bytes.

    Parameters
    ----------
    budget
        Largest array, in bytes, kept in memory.
    work_dir
        Where the memory-mapped files go (a fresh temporary folder inside it, removed with the store);
        default the system's temporary folder.
    """

    def __init__(self, budget: int, work_dir: str | Path | None = None) -> None:
        if budget < 0:
            raise DiagnosticsError(f"the vector budget must be a non-negative number of bytes, got {budget}")
        self.budget = int(budget)
        self._work_dir = work_dir
        self._folder: Path | None = None
        self.files = 0

    @property
    def folder(self) -> Path:
        """The store's own folder (created on first use, removed when the store is collected)."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="jacobian-vectors-", dir=self._work_dir))
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        return self._folder

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float64) -> np.ndarray:
        """Return a zero array: in memory within the budget, memory-mapped on disk beyond it."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if size <= self.budget:
            return np.zeros(shape, dtype=dtype)
        self.files += 1
        return np.memmap(self.folder / f"vector-{self.files}.bin", dtype=dtype, mode="w+", shape=shape)


class StreamedJacobianOperator(JacobianOperator):
    """``J`` of the samples ``[start, stop)`` of a data set, each product one pass over them in batches.

    Parameters
    ----------
    model
        Any ``nn.Module``; never modified. Measured in eval mode: samples must be independent to be
        streamed (``mode="batch"`` couples them through batch statistics and is refused).
    data
        A map-style ``Dataset`` of ``(x, y)`` pairs, or a ``DataLoader`` over one (its ``batch_size`` and
        ``collate_fn`` are used; its sampler is not: rows follow the index order).
    shard
        ``(start, stop)``: the index range measured (default the whole data set); see :func:`shard_range`.
    batch_size
        Samples per forward pass (default the DataLoader's, else :data:`DEFAULT_BATCH`).
    params, output, dtype, strategy, memory_budget
        As in :class:`~diagnostics.engine.matrix_free.operator.JacobianOperator`.
    work_dir, vector_budget
        Where and beyond what size (bytes; default 1/16 of the memory budget) the ``n·m``-vectors
        (outputs, targets, ``J v``) are memory-mapped files (:class:`VectorStore`).

    Attributes
    ----------
    outputs
        ``f_X(θ)`` of the shard, ``(n, m)`` float64 (memory-mapped when large).
    targets
        The targets ``y`` of the shard, as the data set gives them (class indices or values).
    vectors
        The :class:`VectorStore`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: object,
        *,
        shard: tuple[int, int] | None = None,
        batch_size: int | None = None,
        params: ParamSelector = None,
        mode: str = "eval",
        output: _inputs.OutputSelector = None,
        dtype: torch.dtype | None = None,
        strategy: str = "auto",
        memory_budget: int | None = None,
        work_dir: str | Path | None = None,
        vector_budget: int | None = None,
    ) -> None:
        if mode != "eval":
            raise DiagnosticsError("a streamed Jacobian needs independent samples: mode must be 'eval' "
                                   f"(batch statistics couple the whole data set), got {mode!r}")
        self.dataset, self._collate, loader_batch = _source(data)
        total = len(self.dataset)
        self.start, stop = shard if shard is not None else (0, total)
        if not 0 <= self.start < stop <= total:
            raise DiagnosticsError(f"shard must be a range (start, stop) with 0 ≤ start < stop ≤ {total}, got {shard}")
        batch_size = (loader_batch or DEFAULT_BATCH) if batch_size is None else batch_size
        if batch_size < 1:
            raise DiagnosticsError(f"batch_size must be a positive integer, got {batch_size}")
        self._set_model(model, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                        memory_budget=memory_budget)
        self.n, self.chunk_size = stop - self.start, min(stop - self.start, batch_size)
        self.vectors = VectorStore(self.budget // 16 if vector_budget is None else vector_budget, work_dir)
        self._set_outputs(self._first_pass())

    def _load(self, rows: slice) -> _inputs.Inputs:
        """Read, collate and prepare the samples ``rows`` of the shard."""
        return self._read(rows)[0]

    def _read(self, rows: slice) -> tuple[_inputs.Inputs, torch.Tensor]:
        """Return the prepared inputs and the targets of the samples ``rows`` of the shard."""
        indices = range(self.start + rows.start, self.start + rows.stop)
        many = getattr(self.dataset, "__getitems__", None)  # a batched read, as DataLoader uses it
        batch = self._collate(many(list(indices)) if many is not None else [self.dataset[i] for i in indices])
        x, y = _inputs.split_pair(batch)
        return self.fm.prepare(x)[0], _inputs.as_tensor(y, "targets")

    def _first_pass(self) -> torch.Tensor:
        """Pass once over the shard: return the outputs (float64) and keep the targets, each in a store array."""
        outputs = targets = None
        with self.fm.measuring(), torch.no_grad():
            for start in range(0, self.n, self.chunk_size):
                rows = slice(start, min(self.n, start + self.chunk_size))
                x, y = self._read(rows)
                out = self.fm(self.fm.params, x)
                if not torch.isfinite(out).all():
                    raise DiagnosticsError(f"the model's outputs contain NaN or inf on samples {self._where(rows)}")
                if y.ndim == 0 or y.shape[0] != out.shape[0]:
                    raise DiagnosticsError(f"targets of samples {self._where(rows)} have shape {tuple(y.shape)} "
                                           f"for {out.shape[0]} samples")
                if outputs is None:
                    outputs = self.vectors.zeros((self.n, out.shape[1]))
                    targets = self.vectors.zeros((self.n, *y.shape[1:]), y.cpu().numpy().dtype)
                elif y.shape[1:] != targets.shape[1:]:
                    raise DiagnosticsError(f"targets of samples {self._where(rows)} have per-sample shape "
                                           f"{tuple(y.shape[1:])}, earlier ones {targets.shape[1:]}")
                outputs[rows] = out.to(torch.float64).cpu().numpy()
                targets[rows] = y.cpu().numpy()
        self.targets = torch.from_numpy(targets)
        return torch.from_numpy(outputs)

    def _where(self, rows: slice) -> str:
        return f"[{self.start + rows.start}, {self.start + rows.stop})"

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``J v`` for ``v ∈ R^d``, written chunk by chunk into a store array (float64)."""
        out = self.vectors.zeros((self.shape[0],))
        for rows, part in self.matvec_chunks(v):
            out[rows.start * self.m : rows.stop * self.m] = part.to(torch.float64).cpu().numpy()
        return torch.from_numpy(out)

    def first_batch(self) -> _inputs.Inputs:
        """Return the prepared inputs of the first batch (what the manifest describes and the error estimate uses)."""
        return self._load(slice(0, self.chunk_size))


def _source(data: object) -> tuple[object, Callable[[list], object], int | None]:
    """Return the map-style data set, the collate function and the DataLoader's batch size, if any."""
    collate, batch = default_collate, None
    if isinstance(data, DataLoader) and data.batch_size is not None:  # batch_size=None: no batching to take over
        collate, batch = data.collate_fn, data.batch_size
    data = data.dataset if isinstance(data, DataLoader) else data
    if not _inputs.is_map_style(data):
        raise DiagnosticsError("streaming needs a map-style Dataset (len and indexing), or a DataLoader over one; "
                               f"got {type(data).__name__}")
    if len(data) == 0:
        raise DiagnosticsError("the data set is empty")
    return data, collate, batch
