r"""The top eigenpairs of ``K`` by Rayleigh–Ritz on a parameter-space subspace, in one streamed pass.

``K = JJᵀ`` and ``JᵀJ`` share their non-zero eigenvalues: if ``JᵀJ x = θ x`` with ``‖x‖ = 1``, then
``u = Jx/√θ`` is a unit eigenvector of ``K`` with eigenvalue ``θ``. Given an orthonormal basis ``V ∈ R^{d×p}``
(the top eigenvectors of a sketched Gram, :mod:`~diagnostics.engine.matrix_free.sketch`), one pass over the
per-sample Jacobian blocks ``J_b`` accumulates, with two matrix products per block,

.. math::

    H = Σ_b (J_bV)ᵀ(J_bV) = VᵀJᵀJV, \qquad Y = Σ_b J_bᵀ(J_bV) = JᵀJV, \qquad C = Σ_b (J_bV)ᵀ q_b = (JV)ᵀq,

and ``H = ZΘZᵀ`` gives the Ritz pairs of ``JᵀJ`` on ``span V`` (``x_i = Vz_i``, ``θ_i``), their residuals
``‖JᵀJx_i − θ_ix_i‖ = ‖Yz_i − θ_iVz_i‖``, and the coefficients ``u_iᵀq = z_iᵀC/√θ_i`` of the right-hand sides on
the Ritz vectors of ``K``, which are exactly orthonormal (``(JVZ)ᵀ(JVZ) = Θ``). The Ritz values are lower
bounds on the top eigenvalues, interlaced with them (theory/alignment.md#matrix-free); ``Y``'s orthonormal
basis is one step of subspace iteration, for another pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .operator import JacobianOperator
from .sharded import ShardedJacobian, local_block
from .sketch import BLOCK_BYTES

__all__ = ["RitzPairs", "ritz_pairs"]


@dataclass
class RitzPairs:
    """Ritz pairs of ``JᵀJ`` (eigenpairs of ``K``) on a subspace, the same on every process.

    Attributes
    ----------
    values
        ``θ_1 ≥ … ≥ θ_p`` (float64).
    vectors
        ``x_i`` as the columns of a ``d × p`` matrix.
    coefficients
        ``u_iᵀq_j`` as a ``p × k`` matrix (0 where ``θ_i ≤ 0``).
    residuals
        ``‖JᵀJx_i − θ_ix_i‖``.
    next_basis
        An orthonormal basis of ``span JᵀJV`` (one step of subspace iteration).
    """

    values: np.ndarray
    vectors: torch.Tensor
    coefficients: torch.Tensor
    residuals: np.ndarray
    next_basis: torch.Tensor


def ritz_pairs(op: JacobianOperator | ShardedJacobian, basis: torch.Tensor, vectors: torch.Tensor, *,
               progress: bool = False) -> RitzPairs:
    """One pass over ``J``'s blocks: the Rayleigh–Ritz pairs of ``JᵀJ`` on ``span basis`` (call on every process).

    Parameters
    ----------
    op
        The Jacobian of the whole data set (see :func:`~diagnostics.engine.matrix_free.sketch.parameter_gram`).
    basis
        ``V``, ``d × p`` with orthonormal columns.
    vectors
        ``(nm, k)`` right-hand sides whose coefficients on the Ritz vectors of ``K`` are wanted.
    progress
        Show a progress bar over the samples (on process 0).
    """
    local, processes, first_row = local_block(op)
    device = local.fm.device  # accumulated where the blocks are formed
    basis = basis.to(torch.float64).to(device)
    vectors = vectors.to(torch.float64).reshape(op.shape[0], -1).to(device)
    p = basis.shape[1]
    H = torch.zeros(p, p, dtype=torch.float64, device=device)
    Y = torch.zeros_like(basis)
    C = torch.zeros(p, vectors.shape[1], dtype=torch.float64, device=device)
    with tqdm(total=local.n, desc=f"Jacobian pass (Rayleigh–Ritz, {p} vectors)", unit="sample",
              disable=not (progress and processes.rank == 0), leave=False, mininterval=2.0) as bar:
        for samples, block in local.row_blocks(BLOCK_BYTES):
            block = block.to(torch.float64)
            rows = slice(first_row + samples.start * local.m, first_row + samples.stop * local.m)
            W = block @ basis
            H.addmm_(W.T, W)
            Y.addmm_(block.T, W)
            C.addmm_(W.T, vectors[rows])
            bar.update(samples.stop - samples.start)
    H, Y, C = processes.sum(H), processes.sum(Y), processes.sum(C)
    basis = basis.cpu()
    theta, Z = torch.linalg.eigh((H + H.T) / 2)
    theta, Z = processes.broadcast(theta.flip(0)), processes.broadcast(Z.flip(1))  # one decomposition for all
    scale = torch.where(theta > 0, theta.clamp_min(1e-300).rsqrt(), torch.zeros_like(theta))
    residuals = torch.linalg.vector_norm(Y @ Z - (basis @ Z) * theta, dim=0)
    next_basis = processes.broadcast(torch.linalg.qr(Y @ Z).Q)
    return RitzPairs(theta.numpy(), basis @ Z, (Z.T @ C) * scale[:, None], residuals.numpy(), next_basis)
