"""The report of :func:`~diagnostics.alignment.check_alignment`: the numbers of D1 and what they say.

See ``theory/alignment.md`` for the quantities and ``theory/results.md`` for the bounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .engine.manifest import MeasurementManifest

__all__ = ["AlignmentReport"]


@dataclass
class AlignmentReport:
    """Result of :func:`check_alignment`. Scalars are floats; arrays are numpy.

    Attributes
    ----------
    aligned
        ``residual <= residual_tol``: the target lies in ``Col(J)`` (D1).
    residual
        ``‖(I−P)Q‖/‖Q‖`` (THEORY §3).
    rank, n_outputs, n_params
        ``rank J``, ``nm`` and ``d``.
    certificate
        ``B = ‖J⁺(f_X − Q*)‖`` (``Q* = Y`` for mse; the best-scaled target for ce).
    nu_norm
        ``‖ν‖ = ‖J⁺Q‖`` for the target ``Q`` (its scale as given, or 1 for ce).
    bound, bound_ratio
        The (I3)/(I4) right-hand side and ``(L − L(Q*)) / (bound − L(Q*))``; must be ``≤ 1`` under A1
        when aligned.
    decomposition_gap
        ``(1/2n)‖f−Q‖² − (1/2n)‖P(f−Q)‖² − (1/2n)‖(I−P)Q‖²`` (I2); zero under A1 when ``f_X`` lies in the kept
        eigen-directions. It equals ``(1/2n)(‖(I−P)f‖² − 2⟨(I−P)f, (I−P)Q⟩)``: a CMS model has ``f_X ∈ Col J``
        exactly, but the rank tolerance may drop directions that carry part of ``f_X`` (float32), so read it
        with ``output_residual``.
    output_residual
        ``‖(I−P)f_X‖/‖f_X‖``, the data-level A1 condition ``f_X ∈ Col J`` (THEORY §2, test 2) under the same
        rank tolerance; ``|decomposition_gap| ≤ (1/2n)(‖(I−P)f‖² + 2‖(I−P)f‖‖(I−P)Q‖)``.
    loss_lower_bound
        ``(1/2n)‖(I−P)Q‖²``: under A1 the squared loss is never below it (I2).
    manifest
        What was measured: parameters, mode, layers coupling samples, dropout, precision policy
        (:class:`~diagnostics.engine.manifest.MeasurementManifest`); ``None`` for reports built from a Gram.
    path
        ``"dense"`` (eigen-decomposition of ``K``) or ``"matrix-free"`` (LSQR and Lanczos on ``J``,
        :class:`~diagnostics.engine.operator_spectrum.OperatorSpectrum`; there ``rank`` is ``-1`` and ``λ_min``, the
        effective rank
        and the kernel-target alignment are ``nan``).
    """

    aligned: bool
    residual: float
    residual_tol: float
    rank: int
    n_samples: int
    n_outputs: int
    n_params: int
    rank_tol: float
    rank_rule: str
    loss_name: str
    loss: float
    grad_norm: float
    certificate: float
    nu_norm: float
    bound: float
    bound_ratio: float
    target_scale: float
    target_loss: float
    decomposition_gap: float
    loss_lower_bound: float
    output_residual: float
    kernel_target_alignment: float
    top_k_capture: dict[int, float]
    min_eigenvalue: float
    smallest_kept_eigenvalue: float
    effective_rank: float
    eigenvalues: np.ndarray = field(repr=False)
    alignment_curve: np.ndarray = field(repr=False)
    manifest: MeasurementManifest | None = field(default=None, repr=False)
    mode: str = "eval"
    dtype: str = "float32"
    strategy: str = "auto"
    elapsed_s: float = float("nan")
    path: str = "dense"

    @property
    def full_rank(self) -> bool:
        """``rank J = nm``: every target is in ``Col(J)``; read the spectral curve instead."""
        return self.rank == self.n_outputs

    def to_dict(self) -> dict:
        """Plain-Python dictionary (arrays as lists), ready for JSON or a DataFrame row."""
        out = asdict(self)
        out["eigenvalues"] = self.eigenvalues.tolist()
        out["alignment_curve"] = self.alignment_curve.tolist()
        out["top_k_capture"] = {int(k): float(v) for k, v in self.top_k_capture.items()}
        out["manifest"] = self.manifest.to_dict() if self.manifest is not None else None
        return out

    def __str__(self) -> str:
        verdict = "ALIGNED" if self.aligned else "NOT ALIGNED"
        note = "  (J has full row rank: every target is in Col(J))" if self.full_rank else ""
        m = self.n_outputs // self.n_samples
        cap = ", ".join(f"top-{k}: {100 * v:.1f}%" for k, v in self.top_k_capture.items())
        bound_name = "(I3) L ≤ ½‖∇L‖·B" if self.loss_name == "mse" else "(I4) L − L(Q) ≤ ‖∇L‖·B"
        return "\n".join([
            f"Alignment condition D1 (Q ∈ Col J): {verdict}{note}",
            f"  probe: n={self.n_samples} samples × m={m} outputs = {self.n_outputs} rows; "
            f"d={self.n_params:,} parameters; mode={self.mode}, {self.dtype}",
            f"  rank J = {self.rank} / {self.n_outputs}  (rank_tol {self.rank_tol:.3g} = {self.rank_rule})"
            if self.rank >= 0
            else f"  rank J not computed (matrix-free; rank_tol {self.rank_tol:.3g} = {self.rank_rule})",
            f"  alignment residual ‖(I−P)Q‖/‖Q‖ = {self.residual:.3e}  (aligned if ≤ {self.residual_tol:.1e})",
            f"  loss ({self.loss_name}) = {self.loss:.6g}   ‖∇L‖ = {self.grad_norm:.4g}   "
            f"B = {self.certificate:.4g}   ‖ν‖ = ‖J⁺Q‖ = {self.nu_norm:.4g}",
            f"  {bound_name}: {self.loss:.4g} ≤ {self.bound:.4g}   ratio {self.bound_ratio:.3f} "
            f"({'within' if self.bound_ratio <= 1 + 1e-6 else 'ABOVE'} the bound)",
            f"  (I2) decomposition gap {self.decomposition_gap:.2e} (f_X outside the kept directions: "
            f"‖(I−P)f‖/‖f‖ = {self.output_residual:.2e}); "
            f"loss lower bound (1/2n)‖(I−P)Q‖² = {self.loss_lower_bound:.4g}",
            f"  spectrum: λ_max {self.eigenvalues[0]:.4g}, smallest kept {self.smallest_kept_eigenvalue:.3g}, "
            f"λ_min {self.min_eigenvalue:.3g}, effective rank {self.effective_rank:.1f}",
            f"  Q carried by {cap}; kernel-target alignment {self.kernel_target_alignment:.3f}",
            f"  measured in {self.elapsed_s:.2f} s (strategy {self.strategy}, {self.path} path)",
        ] + ([str(self.manifest)] if self.manifest is not None else []))
