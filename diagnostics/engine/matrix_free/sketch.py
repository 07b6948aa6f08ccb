r"""The Gram of ``J`` in parameter space, exact or sketched, in one streamed pass (theory/alignment.md#preconditioned).

For a tall ``J ∈ R^{nm×d}`` (``nm ≥ d``) the ``d × d`` matrix

.. math::

    G = JᵀJ = Σ_b J_bᵀ J_b \quad\text{(exact)}, \qquad G̃ = (SJ)ᵀ(SJ) \quad\text{(sketched)}

is what the preconditioned solver (:mod:`~diagnostics.engine.matrix_free.preconditioned`) factors. Both come
from one pass over the per-sample Jacobian blocks ``J_b`` (rows of ``J`` for a chunk of samples, formed by
the dense engine, :meth:`~diagnostics.engine.matrix_free.operator.JacobianOperator.row_blocks`), each process
over its own shard, and the same pass gives the projections ``Jᵀq`` (or ``(SJ)ᵀ(Sq)``) of the right-hand sides
known in advance. ``JᵀJ`` has the non-zero eigenvalues of ``K = JJᵀ``, so its spectrum is ``K``'s; it costs
``nm·d²`` flops (the panels on and above the diagonal, mirrored). The sketch costs ``nm·d·ζ`` additions and
``s·d²`` flops for its Gram.

``S ∈ R^{s×nm}`` is a sparse sign embedding: row ``j`` of ``J`` is added, with sign ``±1/√ζ``, to one row in
each of ``ζ`` blocks of ``s/ζ`` rows (``ζ = 1``: CountSketch). The bucket and sign of a row are a hash of
its global index and a seed, so the sketch is the same whatever the chunking and the number of processes;
each process adds its rows into the whole ``s × d`` sketch, and the sum over processes is formed block of
rows by block of rows, each process keeping and squaring its own block.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import DiagnosticsError
from .. import memory
from .operator import JacobianOperator
from .sharded import ShardedJacobian, local_block

__all__ = ["BLOCK_BYTES", "ParameterGram", "parameter_gram", "sketch_hash"]

#: Bytes of the Jacobian blocks the passes form (a third of it for the block itself, the rest for working copies).
BLOCK_BYTES = 512 * 2**20

_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def sketch_hash(rows: torch.Tensor, size: int, nonzeros: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets ``(ζ, len)`` and signs ``±1/√ζ`` of the global row indices ``rows`` in a sketch of ``size`` rows.

    Copy ``k`` of a row falls in block ``k`` (rows ``[k·size/ζ, (k+1)·size/ζ)``), at a position and with a
    sign given by a 64-bit mix (MurmurHash3's finaliser) of ``(row, k, seed)``.
    """
    if not (1 <= nonzeros <= size):
        raise DiagnosticsError(f"the sketch needs 1 ≤ nonzeros ≤ rows, got {nonzeros} and {size}")
    block = size // nonzeros
    with np.errstate(over="ignore"):  # 64-bit arithmetic modulo 2⁶⁴ is the hash
        x = (rows.cpu().numpy().astype(np.uint64)[None, :] * np.uint64(nonzeros)
             + np.arange(nonzeros, dtype=np.uint64)[:, None] + np.uint64(seed) * _GOLDEN)
        for mix in _MIX:
            x ^= x >> np.uint64(33)
            x *= mix
        x ^= x >> np.uint64(33)
    buckets = (x % np.uint64(block)).astype(np.int64) + block * np.arange(nonzeros, dtype=np.int64)[:, None]
    signs = 1.0 - 2.0 * (x >> np.uint64(63)).astype(np.float64)
    return torch.from_numpy(buckets), torch.from_numpy(signs / math.sqrt(nonzeros))


@dataclass
class ParameterGram:
    """``JᵀJ`` or ``(SJ)ᵀ(SJ)``, and the projections of the right-hand sides, the same on every process.

    Attributes
    ----------
    matrix
        The ``d × d`` Gram (float64, CPU).
    projections
        ``Jᵀq_j`` (exact) or ``(SJ)ᵀ(Sq_j)`` (sketched) as the columns of a ``d × k`` matrix.
    sketch_rows
        ``s``; 0 for the exact Gram.
    nonzeros
        ``ζ``, non-zeros per column of ``S``.
    seconds
        Wall time of the pass over the data, and of the sums over processes and the sketch's product ``(SJ)ᵀ(SJ)``.
    """

    matrix: torch.Tensor
    projections: torch.Tensor
    sketch_rows: int
    nonzeros: int
    seconds: tuple[float, float]

    @property
    def exact(self) -> bool:
        """Whether this is ``JᵀJ`` itself."""
        return self.sketch_rows == 0


def gram_of(rows: torch.Tensor, panels: int = 8) -> torch.Tensor:
    """``AᵀA`` from the panels of columns on and above the diagonal, mirrored: about half a full product's flops."""
    d = rows.shape[1]
    out = torch.empty(d, d, dtype=rows.dtype, device=rows.device)
    bounds = [d * k // panels for k in range(panels + 1)]
    for i in range(panels):
        a, b = bounds[i], bounds[i + 1]
        out[a:b, a:] = rows[:, a:b].T @ rows[:, a:]
        out[a:, a:b] = out[a:b, a:].T
    return out


def gram_bytes(d: int, sketch_rows: int) -> int:
    """Peak memory of :func:`parameter_gram` beyond one Jacobian block: the sketch and two ``d × d`` matrices."""
    return 8 * (sketch_rows * d + 2 * d * d)


def parameter_gram(
    op: JacobianOperator | ShardedJacobian,
    vectors: torch.Tensor,
    *,
    sketch_rows: int = 0,
    nonzeros: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> ParameterGram:
    """One pass over ``J``'s per-sample blocks: ``JᵀJ`` (``sketch_rows=0``) or ``(SJ)ᵀ(SJ)``, and projections.

    Parameters
    ----------
    op
        The Jacobian of the whole data set: a :class:`~diagnostics.engine.matrix_free.operator.JacobianOperator`
        or, in a data-parallel job, the :class:`~diagnostics.engine.matrix_free.sharded.ShardedJacobian` (each
        process reads its own shard; call it on every process).
    vectors
        ``(nm, k)`` right-hand sides ``q_j`` to project (float64, the whole ``nm`` rows on every process).
    sketch_rows, nonzeros, seed
        ``s``, ``ζ`` and the seed of the sparse sign embedding; ``sketch_rows=0`` forms ``JᵀJ``.
    progress
        Show a progress bar over the samples (on process 0).
    """
    start = time.perf_counter()
    local, processes, first_row = local_block(op)
    d, device = op.shape[1], local.fm.device  # accumulated where the blocks are formed (a GPU's memory, say)
    vectors = vectors.to(torch.float64).reshape(op.shape[0], -1).to(device)
    memory.require(gram_bytes(d, sketch_rows), local.budget, f"the parameter-space Gram (d = {d:,}"
                   + (f", a sketch of {sketch_rows:,} rows)" if sketch_rows else ")"),
                   "Use fewer sketch rows, raise memory_budget, or solver={'method': 'lsqr'}.")
    if sketch_rows:
        total = torch.zeros(sketch_rows, d, dtype=torch.float64, device=device)
        sketched = torch.zeros(sketch_rows, vectors.shape[1], dtype=torch.float64, device=device)
    else:
        total = torch.zeros(d, d, dtype=torch.float64, device=device)
        projections = torch.zeros(d, vectors.shape[1], dtype=torch.float64, device=device)
    with tqdm(total=local.n, desc="Jacobian pass (Gram)" + (" [sketch]" if sketch_rows else ""), unit="sample",
              disable=not (progress and processes.rank == 0), leave=False, mininterval=2.0) as bar:
        for samples, block in local.row_blocks(BLOCK_BYTES):
            block = block.to(torch.float64)
            rows = slice(first_row + samples.start * local.m, first_row + samples.stop * local.m)
            q = vectors[rows]
            if sketch_rows:
                buckets, signs = (t.to(device) for t in sketch_hash(torch.arange(rows.start, rows.stop),
                                                                    sketch_rows, nonzeros, seed))
                for k in range(nonzeros):
                    total.index_add_(0, buckets[k], block * signs[k, :, None])
                    sketched.index_add_(0, buckets[k], q * signs[k, :, None])
            else:
                total += gram_of(block)
                projections.addmm_(block.T, q)
            bar.update(samples.stop - samples.start)
    passed = time.perf_counter()
    if progress and processes.rank == 0:
        tqdm.write(f"Jacobian pass done in {passed - start:.0f} s; " + (
            f"summing the {sketch_rows:,} × {d:,} sketch over the processes and squaring it" if sketch_rows
            else f"summing the {d:,} × {d:,} Gram over the processes"))
    if sketch_rows:
        sketched = processes.sum(sketched).to(device)
        mine = processes.sum_rows(total)  # this process's block of rows of SJ, summed over the processes
        block = total[mine]
        matrix, projections = gram_of(block), block.T @ sketched[mine]
        del block, total
        matrix, projections = processes.sum(matrix), processes.sum(projections)
    else:
        matrix, projections = processes.sum(total), processes.sum(projections)
    return ParameterGram(matrix, projections, sketch_rows, nonzeros, (passed - start, time.perf_counter() - passed))
