"""The spectrum of the NTK Gram and the quantities of the alignment condition (theory/alignment.md#d1).

Everything here works on a Gram ``K = U Λ Uᵀ`` decomposed once in float64, whatever the dtype of
the Jacobian it came from, and on vectors in ``R^{nm}``:

- rank tolerance ``rank_tol = λ_max · nm · eps(dtype of J)`` (numpy's ``matrix_rank`` rule applied to
  ``K``), unless the caller gives one;
- projector ``P = U₊U₊ᵀ`` onto ``Col(J) = Col(K)`` over eigenvalues ``> rank_tol``;
- ``‖(I−P)q‖``, the quadratic form ``qᵀK⁺q = ‖J⁺q‖²``, ``qᵀKq = ‖Jᵀq‖²``, and ``‖K⁺q‖`` and the largest
  discarded eigenvalue, which bound what the rank rule's cut can hide (``theory/alignment.md#resolution``);
- the spectral alignment curve: the fraction of ``‖q‖²`` carried by the eigen-directions with
  eigenvalue ``≥ λ``, for every eigenvalue ``λ`` (descending), and top-``k`` capture;
- kernel-target alignment ``qᵀKq / (‖K‖_F ‖q‖²)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import precision

__all__ = ["Spectrum"]


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of a PSD Gram matrix with the rank rule that decides ``Col(K)``.

    Attributes
    ----------
    eigenvalues
        Descending, float64 (numpy).
    eigenvectors
        Columns matching ``eigenvalues`` (float64 tensor on the Gram's device).
    rank_tol
        Eigenvalues ``> rank_tol`` span the column space.
    rank_rule
        How ``rank_tol`` was chosen, in words.
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    rank_tol: float
    rank_rule: str

    @classmethod
    def of(
        cls, K: torch.Tensor, *, source_dtype: torch.dtype | None = None, rank_tol: float | None = None
    ) -> Spectrum:
        """Decompose ``K`` (symmetrised) in float64.

        Parameters
        ----------
        K
            Symmetric PSD ``(N, N)`` Gram.
        source_dtype
            Dtype of the Jacobian ``K`` came from; sets the machine epsilon of the default rule.
        rank_tol
            Explicit rank tolerance (overrides the rule).
        """
        if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
            raise ValueError(f"K must be a non-empty square matrix, got shape {tuple(K.shape)}")
        if not torch.isfinite(K).all():
            raise ValueError("the Gram matrix contains NaN or inf")
        K64 = K.detach().to(torch.float64)
        K64 = (K64 + K64.T) / 2
        vals, vecs = torch.linalg.eigh(K64)
        vals, vecs = vals.flip(0), vecs.flip(1)
        eigenvalues = vals.cpu().numpy()
        tol, rule = precision.rank_rule(rank_tol, float(eigenvalues[0]), K.shape[0], source_dtype or K.dtype)
        spectrum = cls(eigenvalues, vecs, float(tol), rule)
        if spectrum.min_eigenvalue < -max(tol, 1e-300):
            warnings.warn(
                f"the Gram matrix is not positive semi-definite beyond round-off: smallest eigenvalue "
                f"{spectrum.min_eigenvalue:.3e} < -tol = {-tol:.3e}. The Jacobian may be inaccurate "
                "(float32/TF32 arithmetic); consider dtype=torch.float64.",
                RuntimeWarning,
                stacklevel=2,
            )
        return spectrum

    # -- derived scalars -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """``nm``, the side of the Gram."""
        return int(self.eigenvalues.shape[0])

    @property
    def rank(self) -> int:
        """Number of eigenvalues above ``rank_tol``."""
        return int((self.eigenvalues > self.rank_tol).sum())

    @property
    def min_eigenvalue(self) -> float:
        """Smallest eigenvalue (negative values beyond round-off mean ``K`` is not PSD)."""
        return float(self.eigenvalues[-1])

    @property
    def smallest_kept(self) -> float:
        """Smallest eigenvalue counted in the rank (``nan`` when the rank is 0)."""
        r = self.rank
        return float(self.eigenvalues[r - 1]) if r else float("nan")

    @property
    def largest_discarded(self) -> float:
        """``max |λ_k|`` over the eigenvalues at or below ``rank_tol`` (0 when none is discarded)."""
        rest = self.eigenvalues[self.rank :]
        return float(np.abs(rest).max()) if rest.size else 0.0

    @property
    def effective_rank(self) -> float:
        """``exp(entropy)`` of the normalised positive spectrum (Roy & Vetterli)."""
        lam = np.clip(self.eigenvalues, 0, None)
        total = lam.sum()
        if total <= 0:
            return 0.0
        p = lam[lam > 0] / total
        return float(np.exp(-(p * np.log(p)).sum()))

    @property
    def frobenius_norm(self) -> float:
        """``‖K‖_F``."""
        return float(np.sqrt((self.eigenvalues**2).sum()))

    # -- vectors ---------------------------------------------------------------------------------
    def coefficients(self, q: torch.Tensor) -> torch.Tensor:
        """``Uᵀq`` (float64) for a vector of length ``nm``."""
        q = q.detach().reshape(-1).to(self.eigenvectors)
        if q.shape[0] != self.size:
            raise ValueError(f"vector has length {q.shape[0]}, the Gram has side {self.size}")
        return self.eigenvectors.T @ q

    def outside_norm_sq(self, q: torch.Tensor) -> float:
        """``‖(I − P)q‖² = Σ_{λ_k ≤ rank_tol} (u_kᵀq)²``, the energy of ``q`` outside ``Col(J)``.

        Summed over the discarded coefficients rather than computed as ``‖q‖² − ‖Pq‖²``, which
        cannot resolve a relative residual below ``sqrt(eps)``.
        """
        outside = self.coefficients(q)[self.rank :]
        return float(outside @ outside)

    def inside_norm_sq(self, q: torch.Tensor) -> float:
        """``‖Pq‖²``."""
        c = self.coefficients(q)[: self.rank]
        return float(c @ c)

    def pinv_quadratic(self, q: torch.Tensor) -> float:
        """``qᵀK⁺q = ‖J⁺q‖²``."""
        c = self.coefficients(q)[: self.rank]
        lam = torch.as_tensor(self.eigenvalues[: self.rank], dtype=c.dtype, device=c.device)
        return float((c**2 / lam).sum())

    def pinv_norm(self, q: torch.Tensor) -> float:
        """``‖K⁺q‖`` over the kept directions (``rank_tol`` times it is the leak, theory/alignment.md#resolution)."""
        c = self.coefficients(q)[: self.rank]
        lam = torch.as_tensor(self.eigenvalues[: self.rank], dtype=c.dtype, device=c.device)
        return float((c / lam).norm())

    def pinv_apply(self, q: torch.Tensor) -> torch.Tensor:
        """``K⁺q`` (float64)."""
        c = self.coefficients(q)[: self.rank]
        lam = torch.as_tensor(self.eigenvalues[: self.rank], dtype=c.dtype, device=c.device)
        return self.eigenvectors[:, : self.rank] @ (c / lam)

    def quadratic(self, q: torch.Tensor) -> float:
        """``qᵀKq = ‖Jᵀq‖²``."""
        c = self.coefficients(q)
        lam = torch.as_tensor(np.clip(self.eigenvalues, 0, None), dtype=c.dtype, device=c.device)
        return float((c**2 * lam).sum())

    def captured_fraction(self, q: torch.Tensor) -> np.ndarray:
        """Cumulative fraction of ``‖q‖²`` carried by the top-``k`` eigen-directions, ``k = 1..nm``.

        Entry ``k-1`` is the fraction carried by the directions with eigenvalue ``≥ λ_k``.
        """
        c = self.coefficients(q)
        total = float(c @ c)
        if total == 0:
            raise ValueError("the target vector is zero")
        return (torch.cumsum(c**2, 0) / total).cpu().numpy()

    def residual_curve(self, q: torch.Tensor) -> np.ndarray:
        """``a(λ_k) = ‖(I − P_{≥λ_k})q‖/‖q‖`` for ``k = 1..nm``: the residual keeping the top-``k`` directions.

        Summed over the discarded coefficients (not ``1 −`` the captured fraction), so residuals far below
        ``sqrt(eps)`` are resolved; the last entry is 0.
        """
        c2 = self.coefficients(q) ** 2
        total = float(c2.sum())
        if total == 0:
            raise ValueError("the target vector is zero")
        tail = torch.flip(torch.cumsum(torch.flip(c2, (0,)), 0), (0,))  # tail[k] = Σ_{j ≥ k} c_j²
        return torch.sqrt(torch.cat([tail[1:], tail.new_zeros(1)]) / total).cpu().numpy()

    def energy_below(self, q: torch.Tensor, threshold: float) -> float:
        """``Σ_{λ_k < threshold} (u_kᵀq)²``: the energy of ``q`` in the directions with eigenvalues below ``threshold``.

        Summed over those coefficients, so tiny energies are resolved.
        """
        c = self.coefficients(q)
        below = torch.as_tensor(self.eigenvalues < threshold, device=c.device)
        return float((c[below] ** 2).sum())

    def outside_inner(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """``⟨(I − P)a, (I − P)b⟩``: the inner product of the parts of ``a`` and ``b`` outside ``Col J``."""
        r = self.rank
        return float(self.coefficients(a)[r:] @ self.coefficients(b)[r:])

    def kernel_target_alignment(self, q: torch.Tensor) -> float:
        """``qᵀKq / (‖K‖_F ‖q‖²)`` (Cristianini et al.), in ``[0, 1]`` for PSD ``K``."""
        q64 = q.detach().reshape(-1).to(self.eigenvectors)
        denom = self.frobenius_norm * float(q64 @ q64)
        return self.quadratic(q) / denom if denom > 0 else 0.0
