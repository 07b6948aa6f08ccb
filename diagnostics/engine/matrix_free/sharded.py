"""``J`` split by rows over the processes of a ``torch.distributed`` group (theory/alignment.md#data-parallel).

Each process ``r`` of ``R`` holds a model replica and a contiguous block of samples, hence the block
``J_r`` of rows of ``J = [J_0; …; J_{R−1}]``, as a local operator (usually a
:class:`~diagnostics.engine.matrix_free.streamed.StreamedJacobianOperator` on its shard). Then

- ``J v = [J_0 v; …; J_{R−1} v]``: each block is computed locally, and the blocks are gathered so that
  every process holds the whole ``n·m``-vector;
- ``Jᵀ u = Σ_r J_rᵀ u_r``: each process applies its block to its slice of ``u``, and the ``d``-vectors
  are summed in float64, whatever the compute dtype: reduced onto process 0 and broadcast from it (the
  traffic of an ``all_reduce``, which, though, need not give every process the same bits).

So :class:`ShardedJacobian` is, on every process, the same linear operator as ``J`` of the whole data
set, and the solvers (LSQR for ``ν``, Lanczos for the top spectrum) run unchanged and identically on
every process: their inputs are the same bits everywhere (gathered blocks, and sums broadcast from
process 0), and so are their decisions, so no process waits in a collective the others skipped. This
holds when the processes run the same libraries with the same thread counts (``torchrun`` and
:func:`torch.multiprocessing.spawn` on one kind of machine do). The report's own arithmetic after the
solves (``torch.linalg.lstsq`` combining solutions, dot products in MKL, whose sums depend on memory
alignment) may differ between processes in the last bits; process 0's report is the one written. Each process holds
``O(n·m + d)``: the gathered vectors, which are small beside ``d`` at the paper's scale
(``n·m = 5·10⁵`` doubles are 4 MB), and one replica.

The backend decides where the messages live: gloo on the CPU, NCCL on CUDA tensors of the current
device. :class:`RankZeroStore` keeps solver checkpoints: process 0 reads and writes them, and hands
what it read to every process, so all resume at the same iteration whether or not the folder is shared.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ...errors import DiagnosticsError
from ...store import RunStore
from .operator import JacobianOperator, LinearOperatorMixin

__all__ = ["Processes", "RankZeroStore", "ShardedJacobian", "local_block", "process_group_size"]


def process_group_size(group: Any = None) -> tuple[int, int]:
    """Return ``(rank, world size)`` in ``group``; ``(0, 1)`` when ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class Processes:
    """The processes that share ``J``, as the solvers see them.

    Sums and broadcasts give every process the same bits (reduced onto process 0 and broadcast from it), on
    the device the backend needs.

    Parameters
    ----------
    group
        The process group (default the world); without an initialised ``torch.distributed``, one process.
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank, self.world = process_group_size(group)
        backend = dist.get_backend(group) if self.world > 1 else "gloo"
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``Σ_r tensor_r`` in float64, the same bits on every process (CPU)."""
        total = tensor.detach().to(torch.float64)
        if self.world == 1:
            return total.cpu()
        total = total.to(self.device).contiguous()
        dist.reduce(total, dst=_root(self.group), op=dist.ReduceOp.SUM, group=self.group)
        dist.broadcast(total, src=_root(self.group), group=self.group)
        return total.cpu()

    def sum_rows(self, tensor: torch.Tensor) -> slice:
        """Sum ``tensor`` over the processes one block of rows at a time; return the rows this process holds summed.

        The rows are cut into ``world`` contiguous blocks and block ``r`` is reduced onto process ``r``, in place:
        the traffic of one ``reduce`` of the whole tensor, with the sum spread over the processes (the sketch of
        :mod:`~diagnostics.engine.matrix_free.sketch` is squared that way, each process its own block).
        """
        bounds = [tensor.shape[0] * r // self.world for r in range(self.world + 1)]
        for r in range(self.world if self.world > 1 else 0):
            part = tensor[bounds[r] : bounds[r + 1]]
            shared = part.to(self.device)
            dist.reduce(shared, dst=r if self.group is None else dist.get_global_rank(self.group, r), group=self.group)
            if r == self.rank and shared.data_ptr() != part.data_ptr():
                part.copy_(shared)
        return slice(bounds[self.rank], bounds[self.rank + 1])

    def share(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``compute`` on process 0 only and give its float64 result to every process (CPU).

        For what one process should decide for all (an eigen-decomposition, a factorisation, a choice of how many
        vectors): the others wait instead of repeating the work, and cannot decide otherwise. Process 0 computes
        with the intra-op threads of all the processes on its machine (up to its CPUs), since they wait.
        """
        if self.world == 1:
            return compute().to(torch.float64).cpu()
        result = None
        if self.rank == 0:
            threads = torch.get_num_threads()
            torch.set_num_threads(max(threads, min(threads * self.world, os.cpu_count() or 1)))
            try:
                result = compute().to(torch.float64)
            finally:
                torch.set_num_threads(threads)
        shape = [None if result is None else tuple(result.shape)]
        dist.broadcast_object_list(shape, src=_root(self.group), group=self.group)
        if result is None:
            result = torch.empty(shape[0], dtype=torch.float64)
        return self.broadcast(result)

    def decide(self, value: int) -> int:
        """Process 0's ``value`` on every process: a decision that each process's clock or round-off must not split."""
        if self.world == 1:
            return value
        return int(self.broadcast(torch.tensor([float(value)], dtype=torch.float64))[0])

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Process 0's ``tensor`` on every process (CPU): what one process computed, shared bit for bit."""
        if self.world == 1:
            return tensor
        shared = tensor.detach().to(self.device).contiguous()
        dist.broadcast(shared, src=_root(self.group), group=self.group)
        return shared.cpu()


def local_block(op: JacobianOperator | ShardedJacobian) -> tuple[JacobianOperator, Processes, int]:
    """Return this process's block of rows of ``op``, the processes sharing it, and the block's first row."""
    if isinstance(op, ShardedJacobian):
        return op.local, op.processes, op.offset * op.m
    return op, Processes(), 0


class ShardedJacobian(LinearOperatorMixin):
    """The Jacobian of the whole data set, from each process's block of rows.

    Parameters
    ----------
    local
        This process's block ``J_r`` (rows of its samples, in order of rank).
    group
        The process group (default the world); without an initialised ``torch.distributed``, ``local``
        is the whole operator.

    Attributes
    ----------
    shape, n, m, dtype, fm
        Those of the whole operator (``fm`` is the local replica's functional model).
    outputs
        ``f_X(θ)`` of the whole data set, ``(n, m)`` float64, on every process.
    counts
        Samples of each process.
    """

    def __init__(self, local: JacobianOperator, group: Any = None) -> None:
        self.local, self.group = local, group
        self.processes = Processes(group)
        self.rank, self.world, self.device = self.processes.rank, self.processes.world, self.processes.device
        sizes = self._all_gather(torch.tensor([[local.n, local.m, local.shape[1]]]), [1] * self.world)
        if len({(int(m), int(d)) for _, m, d in sizes.tolist()}) != 1:
            raise DiagnosticsError(f"the processes disagree on the outputs m or the parameters d: {sizes.tolist()}")
        self.counts = [int(c) for c in sizes[:, 0].tolist()]
        self.offset = sum(self.counts[: self.rank])
        self.n, self.m, self.fm, self.dtype = sum(self.counts), local.m, local.fm, local.dtype
        self.shape = (self.n * self.m, local.shape[1])
        self.outputs = self.gather_rows(local.outputs)

    def gather_rows(self, block: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``(n_r, …)`` block, in order of rank, on every process."""
        if tuple(block.shape[:1]) != (self.counts[self.rank],):
            raise DiagnosticsError(f"the block has {block.shape[0]} rows, this process holds {self.counts[self.rank]}")
        return self._all_gather(block, self.counts)

    def _all_gather(self, block: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """All-gather blocks of ``counts`` rows each (padded to the largest, then trimmed), on the CPU."""
        if self.world == 1:
            return block.detach().cpu().clone()
        padded = torch.zeros((max(counts), *block.shape[1:]), dtype=block.dtype, device=self.device)
        padded[: block.shape[0]] = block.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu()

    def matvec(self, v: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``J v``: each process its block, gathered (float64, CPU, the whole ``n·m``-vector)."""
        block = self.local.matvec(v).to(torch.float64).reshape(-1, self.m)
        return self.gather_rows(block).reshape(-1)

    def rmatvec(self, u: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``Jᵀ u = Σ_r J_rᵀ u_r``: each process its slice of ``u``, summed in float64 on process 0 and broadcast."""
        u = torch.as_tensor(u).reshape(-1)
        if u.shape[0] != self.shape[0]:
            raise DiagnosticsError(f"u must have length {self.shape[0]}, got {u.shape[0]}")
        start = self.offset * self.m
        return self.processes.sum(self.local.rmatvec(u[start : start + self.local.shape[0]]))


class RankZeroStore(RunStore):
    """A :class:`~diagnostics.store.RunStore` that process 0 reads and writes for the whole group.

    What process 0 reads is broadcast to every process, so all resume from the same state; the other
    processes never touch the folder.
    """

    def __init__(self, folder: Any, group: Any = None) -> None:
        super().__init__(folder)
        self.group = group
        self.rank, self.world = process_group_size(group)

    def read_state(self, name: str, fingerprint: str) -> Any | None:
        """Return the state process 0 finds for ``name`` (``None`` if missing, torn or stale), on every process."""
        found = [super().read_state(name, fingerprint) if self.rank == 0 else None]
        if self.world > 1:
            dist.broadcast_object_list(found, src=_root(self.group), group=self.group)
        return found[0]

    def write_state(self, name: str, fingerprint: str, state: Any) -> None:
        """Store ``state`` for ``name`` from process 0 only (atomically)."""
        if self.rank == 0:
            super().write_state(name, fingerprint, state)


def _root(group: Any) -> int:
    """Return the global rank of the group's process 0."""
    return 0 if group is None else dist.get_global_rank(group, 0)
