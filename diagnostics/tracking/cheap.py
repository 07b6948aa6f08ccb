"""The cheap tier of the tracker: a record from a few products with ``J``, warm-started (``theory/alignment.md``).

A full record forms the Gram ``K = JJᵀ`` (``nm × nm``) and decomposes it, which costs hundreds of training
steps on a small network. A cheap record uses a handful of Jacobian products instead
(:meth:`~diagnostics.engine.matrix_free.operator.JacobianOperator.rmatmat` and ``matmat``: one reverse and one forward
pass over the probe per iteration, every column at once):

- the loss and ``‖∇L‖ = ‖Jᵀg‖`` (``g = ∂L/∂f_X``), exactly as in the full record;
- a **witness** ``ν`` for the target ``Q`` and the outputs ``f``: the least-squares fit of ``[Q, f]`` by
  ``J`` over the span of ``JᵀQ``, ``Jᵀg``, the previous record's ``ν_Q, ν_f`` (the warm start) and the
  sketch directions ``JᵀS``; each further iteration adds ``Jᵀ`` of the current residuals (a block Krylov
  step). For *any* ``ν``::

      ‖Q − Jν‖ ≥ ‖(I − P)Q‖,    P the projector onto Col J,

  so the **witness residual** ``‖Q − Jν_Q‖/‖Q‖`` is an upper bound of the D1 residual
  (``theory/alignment.md#witness-bounds``). D1 *holds* when the bound, plus a rounding allowance
  ``nm · eps · σ_max(Jν-basis) ‖ν_Q‖ / ‖Q‖``, is below ``residual_tol``; otherwise it is *not
  established*: a truncated solve never refutes D1, the full record decides.
- the **witness certificate** ``‖ν_r‖``, ``ν_r = ν_f − cν_Q`` the fit of ``r = f − cQ`` (``c = 1`` for the
  squared loss; for cross-entropy the scale with the smallest bound below). With ``e = r − Jν_r``,
  ``2nL = ⟨Jᵀr, ν_r⟩ + ⟨r, e⟩`` gives ``L ≤ ½‖∇L‖‖ν_r‖ + |⟨r, e⟩|/(2n)``, the (I3) bound with ``‖ν_r‖`` in
  place of ``B = ‖J⁺r‖`` (for cross-entropy, by convexity, ``L − L(cQ) ≤ ‖∇L‖‖ν_r‖ + |⟨g, e⟩|``, I4).
  When the fit is exact (``e = 0``), ``‖ν_r‖ ≥ B``; otherwise it is the norm of a partial fit and can be
  smaller than ``B``: read it as a trend, not as ``B``;
- a fixed Gaussian **sketch** ``S ∈ R^{nm×s}`` (drawn once per run): ``KS = J(JᵀS)``, and since
  ``E‖Kz‖² = ‖K‖_F²`` for ``z ~ N(0, I)`` (Hutchinson)::

      KTA ≈ QᵀKQ / (‖Q‖² sqrt(‖KS‖_F² / s)),    Δ_K ≈ ‖K_t S − K_t' S‖_F / ‖K_t' S‖_F;

  ``QᵀKQ = ‖JᵀQ‖²`` is exact, the norms are estimates whose relative spread is at most ``sqrt(2/s)`` (when
  one eigenvalue dominates ``K``); the same ``S`` at every record makes them comparable along the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import theory

from ..engine import inputs as _inputs
from ..engine import precision
from ..engine.matrix_free.operator import JacobianOperator
from ..errors import DiagnosticsError
from ..targets import CE_SCALES, Targets, best_scale

__all__ = ["CheapMeasurement", "CheapTier", "sketch_distance"]


@dataclass(frozen=True)
class CheapMeasurement:
    """What one cheap pass measured (everything float64 on the CPU, except ``theta``).

    Attributes
    ----------
    loss, grad_norm
        ``L`` and ``‖∇L‖`` on the probe set.
    verdict
        D1 judged on the witness residual (*holds* or *not established*).
    witness_residual, witness_certificate
        ``‖Q − Jν_Q‖/‖Q‖`` (an upper bound of the D1 residual) and ``‖ν_r‖``.
    sketch
        ``KS``, ``(nm, s)``; ``None`` when ``s = 0``.
    kernel_alignment
        The sketched kernel-target alignment (``nan`` when ``s = 0``).
    theta
        The measured parameters, flattened (for the parameter movement).
    n, m, n_params, target_norm_sq, dtype
        Probe size, outputs per sample, measured parameters, ``‖Q‖²`` and the compute dtype.
    """

    loss: float
    grad_norm: float
    verdict: theory.Verdict
    witness_residual: float
    witness_certificate: float
    sketch: torch.Tensor | None
    kernel_alignment: float
    theta: torch.Tensor
    n: int
    m: int
    n_params: int
    target_norm_sq: float
    dtype: torch.dtype


class CheapTier:
    """The warm-started matrix-free measurement and its state between records.

    Parameters
    ----------
    sketch_size
        Columns ``s`` of the Gaussian sketch (0: no kernel estimates).
    iterations
        Reverse/forward pass pairs per record (at least 1); each adds the residuals' directions.
    seed
        Seed of the sketch.
    """

    def __init__(self, *, sketch_size: int = 2, iterations: int = 1, seed: int = 0) -> None:
        for name, value, low in (("sketch_size", sketch_size, 0), ("iterations", iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DiagnosticsError(f"{name} must be an integer ≥ {low}, got {value!r}")
        self.sketch_size = sketch_size
        self.iterations = iterations
        self.seed = seed
        #: ``[ν_Q, ν_f]`` of the last record, ``(d, 2)`` on the model's device; ``None`` before the first.
        self.nu: torch.Tensor | None = None
        self._sketch: torch.Tensor | None = None
        self._targets: Targets | None = None
        self._target_losses: np.ndarray | None = None

    def measure(self, model: nn.Module, x: _inputs.Inputs, y: torch.Tensor, *, loss: str, target: object,
                residual_tol: float | None, **measure_args: object) -> CheapMeasurement:
        """One cheap pass at the model's current parameters; updates the warm start.

        ``measure_args`` are those of :class:`~diagnostics.engine.matrix_free.operator.JacobianOperator` (``params``,
        ``mode``, ``output``, ``dtype``).
        """
        op = JacobianOperator(model, x, **measure_args)
        n, m = op.n, op.m
        if self._targets is None or self._targets.Q.shape != (n, m):  # the probe is fixed: built once
            self._targets = Targets.build(y, n, m, loss, target)
        targets = self._targets
        f = op.outputs.detach().to(torch.float64).cpu()
        Q, g = targets.Q.cpu(), targets.loss_gradient(f)
        S = self._sketch_matrix(n * m)
        rhs = torch.stack([Q.reshape(-1), f.reshape(-1)], dim=1)
        pulled = op.rmatmat(torch.cat([g.reshape(-1, 1), Q.reshape(-1, 1), S], dim=1))  # Jᵀ[g, Q, S]
        grad_norm = float(pulled[:, 0].to(torch.float64).norm())
        qkq = float(pulled[:, 1].to(torch.float64).norm()) ** 2
        warm = [self.nu] if self.nu is not None and self.nu.shape[0] == op.shape[1] else []
        V, scale = _unit_columns(torch.cat([pulled[:, 1:2], pulled[:, :1], *warm, pulled[:, 2:]], dim=1))
        JV = op.matmat(V).to(torch.float64).cpu()
        s = S.shape[1]
        sketch = JV[:, JV.shape[1] - s:] * scale[scale.shape[0] - s:] if s else None
        for iteration in range(self.iterations):
            coef, residuals, allowance = _fit(V, JV, rhs, op.dtype)
            if iteration + 1 == self.iterations:
                break
            more, _ = _unit_columns(op.rmatmat(residuals))
            V, JV = torch.cat([V, more], dim=1), torch.cat([JV, op.matmat(more).to(torch.float64).cpu()], dim=1)
        self.nu = (V @ coef.to(V)).detach()
        gram = (self.nu.T @ self.nu).to(torch.float64).cpu()  # [[ν_Q·ν_Q, ν_Q·ν_f], [ν_f·ν_Q, ν_f·ν_f]]
        q_norm = float(Q.norm())
        witness = float(residuals[:, 0].norm()) / q_norm
        return CheapMeasurement(
            loss=targets.loss_value(f),
            grad_norm=grad_norm,
            verdict=self._verdict(witness, allowance / q_norm, residual_tol),
            witness_residual=witness,
            witness_certificate=self._certificate(targets, g, grad_norm, gram, residuals),
            sketch=sketch,
            kernel_alignment=_sketched_alignment(qkq, q_norm**2, sketch),
            theta=op.fm.flatten(op.fm.params).detach().clone(),
            n=n, m=m, n_params=op.shape[1], target_norm_sq=q_norm**2, dtype=op.dtype,
        )

    def adopt(self, nu: torch.Tensor) -> None:
        """Warm-start the next record from ``[ν_Q, ν_f]`` (``(d, 2)``), e.g. the least-norm ``ν`` of a full record."""
        self.nu = nu.detach()

    # ------------------------------------------------------------------------------------------
    def _sketch_matrix(self, rows: int) -> torch.Tensor:
        if self._sketch is None or self._sketch.shape[0] != rows:
            gen = torch.Generator().manual_seed(self.seed + 1)
            self._sketch = torch.randn(rows, self.sketch_size, generator=gen, dtype=torch.float64)
        return self._sketch

    def _verdict(self, witness: float, allowance: float, residual_tol: float | None) -> theory.Verdict:
        """D1 from the witness: it holds when the upper bound is below the tolerance; never refuted."""
        tol = precision.RESIDUAL_TOL if residual_tol is None else residual_tol
        reason = (f"{self.iterations} warm-started iteration(s) bound the residual from above by {witness:.3e} "
                  f"(rounding allowance {allowance:.1e}); a bound above the tolerance does not refute D1: the full "
                  "record decides")
        return theory.alignment_condition(witness, tol, bounds=theory.witness_bounds(witness, allowance, reason))

    def _certificate(self, targets: Targets, g: torch.Tensor, grad_norm: float, gram: torch.Tensor,
                     residuals: torch.Tensor) -> float:
        """``‖ν_f − cν_Q‖`` at ``c = 1`` (mse) or at the scale with the smallest bound (ce).

        ``gram`` is the ``2 × 2`` Gram of ``[ν_Q, ν_f]``, so ``‖ν_f − cν_Q‖² = ν_f·ν_f − 2c ν_f·ν_Q + c² ν_Q·ν_Q``.
        For cross-entropy the bound at scale ``c`` is ``L(cQ) + ‖∇L‖‖ν_c‖ + |⟨g, e_c⟩|`` with ``e_c`` the
        fit's residual for ``f − cQ`` (convexity: ``L − L(cQ) ≤ ⟨g, f − cQ⟩ = ⟨Jᵀg, ν_c⟩ + ⟨g, e_c⟩``).
        """
        scales = torch.as_tensor([1.0] if targets.loss == "mse" else CE_SCALES, dtype=torch.float64)
        distances = (gram[1, 1] - 2 * scales * gram[0, 1] + scales**2 * gram[0, 0]).clamp_min(0).sqrt()
        if targets.loss == "mse":
            return float(distances[0])
        if self._target_losses is None:  # the probe is fixed: L(cQ) is computed once
            self._target_losses = targets.scaled_target_losses(CE_SCALES)
        inner = (g.reshape(-1) @ residuals[:, 1]) - scales * (g.reshape(-1) @ residuals[:, 0])
        k = best_scale(self._target_losses, (grad_norm * distances + inner.abs()).numpy())
        return float(distances[k])


def _unit_columns(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``M`` with unit columns (zero columns stay zero) and the columns' norms (float64, CPU)."""
    norms = M.norm(dim=0)
    return M / torch.where(norms > 0, norms, torch.ones_like(norms)), norms.to(torch.float64).cpu()


def _fit(V: torch.Tensor, JV: torch.Tensor, rhs: torch.Tensor,
         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Least-squares fit of ``rhs`` by ``J`` over ``span V``, least norm in ``ν``.

    ``B = V T`` is orthonormal (``T`` from the eigen-decomposition of ``VᵀV``, dropping the directions
    with eigenvalues below ``sqrt(eps)`` of the largest), so ``ν = B c`` has ``‖ν‖ = ‖c‖``; ``JB = (JV) T``
    is solved by SVD, cutting singular values below ``σ_max sqrt(nm · eps)`` (the rank rule of the full
    record, ``λ = σ²``).

    Returns
    -------
    coef
        ``(p, 2)``: ``ν = V @ coef``.
    residuals
        ``rhs − Jν``, ``(nm, 2)``.
    allowance
        Rounding allowance of ``‖Q − Jν_Q‖``: ``nm · eps · σ_max ‖ν_Q‖``.
    """
    G = (V.T @ V).to(torch.float64).cpu()
    lam, P = torch.linalg.eigh((G + G.T) / 2)
    keep = lam > max(float(lam[-1]), 0.0) * math.sqrt(precision.eps(dtype))  # drop near-dependent directions
    T = P[:, keep] / lam[keep].sqrt()
    JB = JV @ T
    U, sv, Vh = torch.linalg.svd(JB, full_matrices=False)
    N = rhs.shape[0]
    cut = sv > sv[0] * math.sqrt(N * precision.eps(dtype)) if sv.numel() else sv.bool()
    c = Vh[cut].T @ ((U[:, cut].T @ rhs) / sv[cut, None])
    allowance = N * precision.eps(dtype) * float(sv[0] if sv.numel() else 0.0) * float(c[:, 0].norm())
    return T @ c, rhs - JB @ c, allowance


def _sketched_alignment(qkq: float, q_sq: float, sketch: torch.Tensor | None) -> float:
    """``QᵀKQ / (‖Q‖² ‖K‖_F)`` with ``‖K‖_F² ≈ ‖KS‖_F²/s``; ``nan`` without a sketch."""
    if sketch is None:
        return math.nan
    frobenius = math.sqrt(float((sketch**2).sum()) / sketch.shape[1])
    return qkq / (q_sq * frobenius) if frobenius > 0 else math.nan


def sketch_distance(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """Return ``‖a − b‖_F / ‖b‖_F`` of two sketches ``KS``; ``nan`` when either is missing or ``b = 0``."""
    if a is None or b is None or a.shape != b.shape:
        return math.nan
    denom = float(b.norm())
    return float((a - b).norm()) / denom if denom > 0 else math.nan
