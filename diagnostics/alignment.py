"""The data-architecture alignment condition D1 and the results it gives (THEORY §3–§4).

``check_alignment(model, data)`` measures, at the current parameters ``θ`` and on a probe set:

- whether the target lies in the column space of the Jacobian, ``Q ∈ Col(J(θ))``, through the
  alignment residual ``a(θ) = ‖(I − P)Q‖/‖Q‖`` and the spectrum of ``K = J Jᵀ``;
- the certificate ``B(θ) = ‖J⁺r‖`` and the least-norm coefficients ``‖ν‖ = ‖J⁺Q‖``;
- the gradient-domination bound (I3) ``L ≤ ½‖∇L‖B`` (squared loss) or (I4)
  ``L − L(Q) ≤ ‖∇L‖‖J⁺(f_X − Q)‖`` (cross-entropy, best scale of ``Q``), as a ratio that must be
  ``≤ 1`` for a model satisfying the common model structure assumption A1;
- the loss decomposition (I2) ``L = (1/2n)‖Pr‖² + (1/2n)‖(I−P)Y‖²`` and its measured gap.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import _inputs
from ._model import ParamSelector
from .jacobian import _Measurement
from .manifest import MeasurementManifest
from .spectral import Spectrum
from .targets import Targets

__all__ = ["AlignmentReport", "check_alignment", "alignment_from_gram", "alignment_from_spectrum"]

#: Scales ``c`` of the centred one-hot target tried for the cross-entropy bound (I4).
CE_SCALES = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 61)])
TOP_K = (1, 10, 100)


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
        (:class:`~diagnostics.manifest.MeasurementManifest`); ``None`` for reports built from a Gram.
    path
        ``"dense"`` (eigen-decomposition of ``K``) or ``"matrix-free"`` (LSQR and Lanczos on ``J``,
        :mod:`diagnostics.matrix_free`; there ``rank`` is ``-1`` and ``λ_min``, the effective rank
        and the kernel-target alignment are ``nan``).
    """

    aligned: bool
    residual: float
    residual_tol: float
    rank: int
    n_samples: int
    n_outputs: int
    n_params: int
    tol: float
    tol_rule: str
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
            f"  rank J = {self.rank} / {self.n_outputs}  (tol {self.tol:.3g} = {self.tol_rule})"
            if self.rank >= 0
            else f"  rank J not computed (matrix-free; tol {self.tol:.3g} = {self.tol_rule})",
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


def alignment_from_gram(
    outputs: torch.Tensor,
    targets: Targets,
    K: torch.Tensor,
    *,
    n_params: int,
    source_dtype: torch.dtype | None = None,
    tol: float | None = None,
    residual_tol: float | None = None,
) -> AlignmentReport:
    """Build the alignment report from outputs ``f_X`` (``(n, m)``), targets and the Gram ``K``.

    Pure linear algebra (no model): used by :func:`check_alignment` and by the tracker. ``‖∇L‖`` is
    ``sqrt(gᵀKg)`` with ``g = ∂L/∂f_X``, so no Jacobian is needed.
    """
    source_dtype = source_dtype or outputs.dtype
    spectrum = Spectrum.of(K, source_dtype=source_dtype, tol=tol)
    return alignment_from_spectrum(
        outputs, targets, spectrum, n_params=n_params, source_dtype=source_dtype, residual_tol=residual_tol
    )


def alignment_from_spectrum(
    outputs: torch.Tensor,
    targets: Targets,
    spectrum: Spectrum,
    *,
    n_params: int,
    source_dtype: torch.dtype | None = None,
    residual_tol: float | None = None,
) -> AlignmentReport:
    """Build the alignment report from outputs, targets and the spectrum of ``K``.

    ``spectrum`` is a :class:`~diagnostics.spectral.Spectrum` or its matrix-free stand-in
    :class:`~diagnostics.matrix_free.OperatorSpectrum` (same methods).
    """
    n, m = outputs.shape
    source_dtype = source_dtype or outputs.dtype
    if residual_tol is None:
        residual_tol = math.sqrt(torch.finfo(source_dtype).eps)
    f = outputs.detach().to(torch.float64).cpu()
    Q = targets.Q.cpu()
    g = targets.loss_gradient(f)
    loss = targets.loss_value(f)
    grad_norm = math.sqrt(max(spectrum.quadratic(g), 0.0))
    q_sq = float((Q**2).sum())
    outside = spectrum.outside_norm_sq(Q)
    residual = math.sqrt(outside / q_sq)
    nu_norm = math.sqrt(spectrum.pinv_quadratic(Q))

    if targets.loss == "mse":
        r = f - Q
        certificate = math.sqrt(spectrum.pinv_quadratic(r))
        scale, target_loss = 1.0, 0.0
        bound = 0.5 * grad_norm * certificate
    else:
        best = None
        for c in CE_SCALES:
            q_loss = float(F.cross_entropy(c * targets.Q, targets.labels))
            dist = math.sqrt(spectrum.pinv_quadratic(f - c * targets.Q))
            candidate = (q_loss + grad_norm * dist, c, q_loss, dist)
            best = candidate if best is None or candidate[0] < best[0] else best
        bound, scale, target_loss, certificate = best
    excess = bound - target_loss
    bound_ratio = (loss - target_loss) / excess if excess > 0 else (0.0 if loss <= target_loss else math.inf)

    r_q = f - Q
    decomposition_gap = (float((r_q**2).sum()) - spectrum.inside_norm_sq(r_q) - outside) / (2 * n)
    f_sq = float((f**2).sum())
    output_residual = math.sqrt(max(spectrum.outside_norm_sq(f), 0.0) / f_sq) if f_sq > 0 else 0.0
    curve = spectrum.alignment_curve(Q)
    top_k = {k: float(curve[min(k, curve.size) - 1]) for k in TOP_K if k <= curve.size}
    return AlignmentReport(
        aligned=residual <= residual_tol,
        residual=residual,
        residual_tol=float(residual_tol),
        rank=spectrum.rank,
        n_samples=n,
        n_outputs=n * m,
        n_params=int(n_params),
        tol=spectrum.tol,
        tol_rule=spectrum.tol_rule,
        loss_name=targets.loss,
        loss=loss,
        grad_norm=grad_norm,
        certificate=certificate,
        nu_norm=nu_norm,
        bound=bound,
        bound_ratio=bound_ratio,
        target_scale=float(scale),
        target_loss=target_loss,
        decomposition_gap=decomposition_gap,
        loss_lower_bound=outside / (2 * n),
        output_residual=output_residual,
        kernel_target_alignment=spectrum.kernel_target_alignment(Q),
        top_k_capture=top_k,
        min_eigenvalue=spectrum.min_eigenvalue,
        smallest_kept_eigenvalue=spectrum.smallest_kept,
        effective_rank=spectrum.effective_rank,
        eigenvalues=spectrum.eigenvalues,
        alignment_curve=curve,
        dtype=str(source_dtype).replace("torch.", ""),
    )


def check_alignment(
    model: nn.Module,
    data: object,
    *,
    target: object = None,
    loss: str = "mse",
    tol: float | None = None,
    residual_tol: float | None = None,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    probe_size: int | None = 256,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
    path: str = "auto",
) -> AlignmentReport:
    """Test the data-architecture alignment condition D1 at the model's current parameters.

    Parameters
    ----------
    model
        Any ``nn.Module`` with ``m`` outputs (logits for classification); never modified.
    data
        ``(X, Y)`` tensors or arrays, a map-style ``Dataset`` of ``(x, y)`` or a ``DataLoader``.
        Targets may be class indices, one-hot rows or real values of the output's shape.
    target
        Alignment target ``Q`` of shape ``(n, m)`` overriding the default (``Y`` for mse, centred
        one-hot for ce); it must match the probe subset, so use it with ``probe_size=None``.
    loss
        ``"mse"`` (THEORY I2, I3) or ``"ce"`` (cross-entropy on logits, I4).
    tol
        Rank tolerance on the eigenvalues of ``K``; default ``λ_max · nm · eps`` of the Jacobian dtype.
    residual_tol
        Residual below which the condition is declared to hold; default ``sqrt(eps)``.
    params, mode, output, dtype, strategy, memory_budget
        As in :func:`diagnostics.jacobian`.
    probe_size, seed
        Size and seed of the probe subset (``None``: all the data).
    path
        ``"dense"`` (the Gram and its eigen-decomposition), ``"matrix-free"`` (LSQR and Lanczos on
        Jacobian products, memory ``O(nm + d)``, :mod:`diagnostics.matrix_free`) or ``"auto"``:
        dense when it fits ``memory_budget``; the report's ``path`` says which was used.

    Returns
    -------
    AlignmentReport
        Print it for a readable verdict; ``to_dict()`` for the numbers.

    Examples
    --------
    >>> report = check_alignment(model, (X, y), loss="ce")   # doctest: +SKIP
    >>> print(report)                                        # doctest: +SKIP
    """
    start = time.perf_counter()
    X, T = _inputs.probe_data(data, probe_size, seed)
    from . import matrix_free  # imports this module

    path, op = matrix_free.choose_path(
        path, model, X, params=params, mode=mode, output=output, dtype=dtype, memory_budget=memory_budget
    )
    if op is not None:
        report = matrix_free.alignment_from_operator(
            op, T, loss=loss, target=target, tol=tol, residual_tol=residual_tol
        )
        report.mode, report.strategy = mode, "jvp/vjp"
        report.manifest = MeasurementManifest.build(op.fm, op.x, strategy="jvp/vjp", n_outputs=op.m)
        report.elapsed_s = time.perf_counter() - start
        return report
    with _Measurement(model, X, params, mode, output, dtype, strategy, memory_budget) as job:
        targets = Targets.build(T, job.n, job.m, loss, target)
        with torch.no_grad():
            outputs = job.fm(job.fm.params, job.x)
        K = job.gram()
    report = alignment_from_gram(
        outputs, targets, K, n_params=job.fm.n_params, source_dtype=job.fm.dtype, tol=tol,
        residual_tol=residual_tol,
    )
    report.mode, report.strategy = mode, job.strategy
    report.manifest = MeasurementManifest.build(
        job.fm, job.x, strategy=job.strategy, structured=job.structured
    )
    report.elapsed_s = time.perf_counter() - start
    return report
