"""D1 for a frozen block ``Ψ_X``: least-norm solutions from the smaller Gram, one absolute rank rule.

``Ψ_X ν = Q`` is solved for the frozen block ``Ψ_X = [J, I_m ⊗ Φ]`` of theory/application.md (the
tangent features ``J`` at ``τ`` and the feature matrix ``Φ``); the residual ``‖Q − Ψ_X ν‖/‖Q‖`` is measured in
float64, and the bounds on the exact residual that decide D1 (``theory/alignment.md#resolution``,
``theory/application.md#d1-for-the-frozen-block``) are those of the block as training recomputes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

import theory

from ..engine.spectral import Spectrum
from ..errors import DiagnosticsError

__all__ = ["AlignmentSolution", "Block", "solve_alignment", "solve_blocks"]


class Block:
    """A float64 matrix ``A`` with the eigen-decomposition of its smaller Gram (``AAᵀ`` or ``AᵀA``)."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.primal = A.shape[0] <= A.shape[1]
        self.spectrum = Spectrum.of(A @ A.T if self.primal else A.T @ A, source_dtype=torch.float64)

    @property
    def lam_max(self) -> float:
        """``λ_max`` of the smaller Gram (``σ_max(A)²``), clipped at 0."""
        return max(float(self.spectrum.eigenvalues[0]), 0.0)

    def set_tol(self, tol: float, rule: str) -> None:
        """Use the absolute rank tolerance ``tol`` (described by ``rule``) for the kept directions."""
        self.spectrum = replace(self.spectrum, rank_tol=tol, rank_rule=rule)

    def _kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.spectrum.rank
        vecs = self.spectrum.eigenvectors[:, :r]
        lam = torch.as_tensor(self.spectrum.eigenvalues[:r], dtype=vecs.dtype, device=vecs.device)
        return vecs, lam

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """Least-norm ``X`` with ``AX = P_A B`` (columns of ``B`` solved at once)."""
        vecs, lam = self._kept()
        if self.primal:
            return self.A.T @ (vecs @ ((vecs.T @ B) / lam[:, None]))
        return vecs @ ((vecs.T @ (self.A.T @ B)) / lam[:, None])

    def bounds(self, B: torch.Tensor, resolution: float, copies: int) -> theory.ResidualBounds:
        """Bounds on the exact residual of ``B``'s columns in ``Col(I_copies ⊗ A)`` at ``resolution`` (absolute).

        :func:`theory.residual_bounds` on the eigenvalues of the smaller Gram cut at ``resolution`` (a dual Gram
        ``AᵀA`` has the same non-zero eigenvalues as ``AAᵀ``, whose others are 0); ``copies`` blocks ``A`` side by
        side act on the ``copies`` columns of ``B`` (``I_m ⊗ Φ`` on the ``m`` columns of ``Q``).
        """
        lam = torch.as_tensor(self.spectrum.eigenvalues, dtype=B.dtype, device=B.device)
        r = int((lam > resolution).sum())
        vecs = self.spectrum.eigenvectors[:, :r]
        left = vecs if self.primal else (self.A @ vecs) / lam[:r].sqrt()  # orthonormal basis of the kept span
        c = left.T @ B
        b_norm = float(B.norm())
        rest = lam[r:].abs()
        return theory.residual_bounds(
            float((B - left @ c).norm()) / b_norm, rows=copies * self.A.shape[0], n_params=copies * self.A.shape[1],
            kept_rank=copies * r, resolution=resolution, smallest_kept=float(lam[r - 1]) if r else math.nan,
            largest_discarded=float(rest.max()) if rest.numel() else 0.0,
            pinv_norm=float((c / lam[:r, None]).norm()) / b_norm)

    def complement(self) -> torch.Tensor:
        """Orthonormal basis of the orthogonal complement of the kept column space of ``A``."""
        r = self.spectrum.rank
        if self.primal:  # the eigenvectors of AAᵀ span the whole row space
            return self.spectrum.eigenvectors[:, r:]
        vecs, lam = self._kept()
        basis = (self.A @ vecs) / lam.sqrt()
        return torch.linalg.qr(basis, mode="complete").Q[:, r:]


@dataclass(frozen=True)
class AlignmentSolution:
    """``Ψ_X ν ≈ Q`` for the frozen block ``Ψ_X = [J, I_m ⊗ Φ]`` (see :func:`solve_alignment`).

    Attributes
    ----------
    nu_tangent, nu_features
        ``ν_J`` (``d``) and ``ν_Φ`` (``m × p``, so that ``Ψ(x)ν_Φ = ν_Φ φ(x)``), float64, or ``None``.
    residual
        ``‖Q − Ψ_X ν‖/‖Q‖`` in float64, computed directly.
    rounding
        ``eps(source) · σ_max(Ψ_X) · ‖ν‖/‖Q‖``: how much the residual of ``ν`` may grow when training recomputes
        ``Ψ_X`` in the model's dtype (rounding of the features, relative size ``eps``).
    rank
        Rank of ``Ψ_X`` (rank rule ``λ > λ̄ · nm · eps(float64)``, ``λ̄ = λ_max(JJᵀ) + λ_max(ΦΦᵀ)``).
    sigma_max_sq
        ``λ̄ ≥ λ_max(Ψ_XΨ_Xᵀ)``.
    bounds
        Where the exact residual of ``Q`` in ``Col Ψ_X`` lies for every block within the resolution
        ``λ̄ (nm · eps(float64) + 2 eps(source) + eps(source)²)`` of the measured one (the recomputation in the
        model's dtype included): D1 for the frozen block is decided on them.
    """

    nu_tangent: torch.Tensor | None
    nu_features: torch.Tensor | None
    residual: float
    rounding: float
    rank: int
    sigma_max_sq: float
    bounds: theory.ResidualBounds

    @property
    def nu_norm_sq(self) -> float:
        """``‖ν‖²``."""
        return sum(float((v**2).sum()) for v in (self.nu_tangent, self.nu_features) if v is not None)

    @property
    def effective_residual(self) -> float:
        """``residual + rounding``: what D1 is decided on."""
        return self.residual + self.rounding


def solve_alignment(
    Q: torch.Tensor,
    *,
    features: torch.Tensor | None = None,
    tangent: torch.Tensor | None = None,
    source_dtype: torch.dtype = torch.float32,
) -> AlignmentSolution:
    r"""Solve ``Ψ_X ν = Q`` for the frozen block ``Ψ_X = [J, I_m ⊗ Φ]`` and measure the D1 residual.

    Parameters
    ----------
    Q
        Target ``(n, m)``.
    features
        ``Φ`` of shape ``(n, p)``: the block ``Ψ(x)u = U φ(x)`` (penultimate and random features).
    tangent
        ``J`` of shape ``(n·m, d)`` (sample-major rows, theory/setup.md): the block ``Ψ(x)u = J_x u``.
    source_dtype
        Dtype the blocks were computed in (for the rounding allowance).

    Returns
    -------
    AlignmentSolution
        ``ν`` (float64), the residual ``‖Q − Ψ_X ν‖/‖Q‖``, its rounding allowance and the rank.

    Notes
    -----
    The features are computed once in the model's dtype and are then exact numbers for the frozen map,
    so the linear algebra is float64 with the float64 rank rule (``λ > λ̄ · nm · eps``), applied
    with one absolute threshold to every sub-problem. The engine's rule for measured Jacobians,
    ``eps`` of the source dtype, would call ``Ψ_X`` rank-deficient at a relative eigenvalue of
    ``nm · eps(float32) ≈ 1.5·10⁻³`` for ``nm ≈ 13 000``; what the source dtype does matter for is the
    recomputation of ``Ψ_X`` during training, accounted for by ``rounding``.

    With one block, ``ν = Ψ_X⁺Q`` is the least-norm solution, from the eigen-decomposition of the smaller
    of the two Grams (``d × d`` instead of ``nm × nm`` when the model has fewer parameters than rows).
    With both blocks, ``ν_J = J'⁺Q'`` with ``J' = (I − P_Φ)J`` and ``Q' = (I − P_Φ)Q`` (``P_Φ`` acting on the
    sample index), then ``ν_Φ = Φ⁺(Q − Jν_J)``: an exact solution whenever ``Q ∈ Col(Ψ_X)``, since
    ``Q − Jν_J = P_Φ(Q − Jν_J)`` then, though not always the least-norm one (when ``Φ`` has full row rank,
    ``J' = 0`` and ``ν = (0, Φ⁺Q)``; on the digits the joint least-norm ``‖ν‖²`` is about 30 % smaller).
    Every ``ν`` with ``Ψ_Xν = Q`` gives the guarantee; its norm enters the constant and is reported.
    """
    if features is None and tangent is None:
        raise DiagnosticsError("the frozen block is empty: pass features, tangent or both")
    Q = Q.to(torch.float64)
    return solve_blocks(Q, None if features is None else Block(features.to(Q)),
                  None if tangent is None else Block(tangent.to(Q)), source_dtype)


def solve_blocks(Q: torch.Tensor, features: Block | None, tangent: Block | None,
           source_dtype: torch.dtype) -> AlignmentSolution:
    """:func:`solve_alignment` on decomposed blocks (the tangent block is reused across enlargements)."""
    n, m = Q.shape
    blocks = {k: b for k, b in (("features", features), ("tangent", tangent)) if b is not None}
    lam_bar = sum(b.lam_max for b in blocks.values())
    tol = lam_bar * n * m * torch.finfo(torch.float64).eps
    rule = "(λ_max(JJᵀ) + λ_max(ΦΦᵀ)) · nm · eps(float64)"
    for b in blocks.values():
        b.set_tol(tol, rule)
    nu_t = nu_f = None
    rest = Q
    rank = 0
    full_features = "features" in blocks and blocks["features"].spectrum.rank == n
    if "tangent" in blocks and full_features:  # P_Φ = I: J' = 0, so ν_J = 0 and Φ carries Q alone
        nu_t = torch.zeros(blocks["tangent"].A.shape[1], dtype=Q.dtype, device=Q.device)
    elif "tangent" in blocks:
        J = blocks["tangent"]
        target = Q
        if "features" in blocks:
            # J'⁺Q' through the complement C of Col Φ (n × (n − r)): J' = (C ⊗ I)J'' with
            # J'' = (Cᵀ ⊗ I)J, so J'⁺Q' = J''⁺(Cᵀ ⊗ I)Q, a Gram of (n − r)m rows instead of nm
            C = blocks["features"].complement()
            J = Block(torch.einsum("ik,icd->kcd", C, J.A.reshape(n, m, -1)).reshape(-1, J.A.shape[1]))
            J.set_tol(tol, rule)
            target = C.T @ Q
        nu_t = J.solve(target.reshape(-1, 1)).reshape(-1)
        rest = Q - (blocks["tangent"].A @ nu_t).reshape(n, m)
        rank += J.spectrum.rank
    if "features" in blocks:
        Phi = blocks["features"]
        nu_f = Phi.solve(rest).T.contiguous()
        rest = rest - Phi.A @ nu_f.T
        rank += m * Phi.spectrum.rank  # I_m ⊗ Φ
    q_norm = float(Q.norm())
    nu_norm = math.sqrt(sum(float((v**2).sum()) for v in (nu_t, nu_f) if v is not None))
    eps = torch.finfo(source_dtype).eps
    rounding = eps * math.sqrt(lam_bar) * nu_norm / q_norm
    residual = float(rest.norm()) / q_norm
    resolution = tol + (2 * eps + eps**2) * lam_bar
    return AlignmentSolution(nu_t, nu_f, residual, rounding, rank, lam_bar,
                             _bounds(Q, blocks, residual + rounding, resolution))


def _bounds(Q: torch.Tensor, blocks: dict[str, Block], witness: float, resolution: float) -> theory.ResidualBounds:
    """Where the exact residual of ``Q`` in ``Col Ψ_X`` lies (``theory/application.md#d1-for-the-frozen-block``).

    Each block is a sub-block of ``Ψ_X``, so its upper bound is one for ``Ψ_X``, and so is the residual of ``ν``
    with its rounding (a witness). A lower bound needs the spectrum of ``Ψ_XΨ_Xᵀ`` itself: with one block it is
    that block's; with two, their joint spectrum is not computed and no lower bound is given.
    """
    found = {"features": blocks["features"].bounds(Q, resolution, Q.shape[1])} if "features" in blocks else {}
    if "tangent" in blocks:
        found["tangent"] = blocks["tangent"].bounds(Q.reshape(-1, 1), resolution, 1)
    upper = min([witness] + [b.upper for b in found.values()])
    if len(found) == 1:
        (only,) = found.values()
        return theory.ResidualBounds(min(only.lower, upper), upper, only.reason)
    return theory.ResidualBounds(0.0, upper, (
        "two frozen blocks (tangent and random features) are solved one after the other: the residual of ν and "
        "each block's own bounds bound the exact residual from above, but their joint spectrum, which a lower "
        "bound needs, is not computed; features of full row rank decide it (raise max_random_features)"))
