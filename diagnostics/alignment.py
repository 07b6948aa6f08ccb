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

import numpy as np
import torch
from torch import nn

from .alignment_report import AlignmentReport
from .engine import inputs as _inputs
from .engine import memory, precision
from .engine.functional import ParamSelector
from .engine.manifest import MeasurementManifest
from .engine.measurement import Measurement
from .engine.operator import JacobianOperator
from .engine.operator_spectrum import DEFAULT_TOP_K, OperatorSpectrum
from .engine.spectral import Spectrum
from .errors import DiagnosticsError, renamed_argument
from .targets import CE_SCALES, Targets, best_scale

__all__ = [
    "PATHS",
    "AlignmentReport",
    "alignment_from_gram",
    "alignment_from_operator",
    "alignment_from_spectrum",
    "check_alignment",
    "choose_path",
    "dense_alignment_bytes",
]

PATHS = ("auto", "dense", "matrix-free")
TOP_K = (1, 10, 100)


def alignment_from_gram(
    outputs: torch.Tensor,
    targets: Targets,
    K: torch.Tensor,
    *,
    n_params: int,
    source_dtype: torch.dtype | None = None,
    rank_tol: float | None = None,
    residual_tol: float | None = None,
) -> AlignmentReport:
    """Build the alignment report from outputs ``f_X`` (``(n, m)``), targets and the Gram ``K``.

    Pure linear algebra (no model): used by :func:`check_alignment` and by the tracker. ``‖∇L‖`` is
    ``sqrt(gᵀKg)`` with ``g = ∂L/∂f_X``, so no Jacobian is needed.
    """
    source_dtype = source_dtype or outputs.dtype
    spectrum = Spectrum.of(K, source_dtype=source_dtype, rank_tol=rank_tol)
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
    :class:`~diagnostics.engine.operator_spectrum.OperatorSpectrum` (same methods).
    """
    n, m = outputs.shape
    source_dtype = source_dtype or outputs.dtype
    if residual_tol is None:
        residual_tol = precision.default_residual_tol(source_dtype)
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
        q_losses = targets.scaled_target_losses(CE_SCALES)
        distances = [math.sqrt(spectrum.pinv_quadratic(f - c * targets.Q)) for c in CE_SCALES]
        k = best_scale(q_losses, grad_norm * np.asarray(distances))
        scale, target_loss, certificate = float(CE_SCALES[k]), float(q_losses[k]), distances[k]
        bound = target_loss + grad_norm * certificate
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
        rank_tol=spectrum.rank_tol,
        rank_rule=spectrum.rank_rule,
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
        dtype=precision.dtype_name(source_dtype),
    )


def check_alignment(
    model: nn.Module,
    data: object,
    *,
    target: object = None,
    loss: str = "mse",
    rank_tol: float | None = None,
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
    tol: float | None = None,
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
    rank_tol
        Rank tolerance on the eigenvalues of ``K``; default ``λ_max · nm · eps`` of the Jacobian dtype.
    residual_tol
        Residual below which the condition is declared to hold; default ``sqrt(eps)``.
    params, mode, output, dtype, strategy, memory_budget
        As in :func:`diagnostics.jacobian`.
    probe_size, seed
        Size and seed of the probe subset (``None``: all the data).
    path
        ``"dense"`` (the Gram and its eigen-decomposition), ``"matrix-free"`` (LSQR and Lanczos on
        Jacobian products, memory ``O(nm + d)``,
        :class:`~diagnostics.engine.operator_spectrum.OperatorSpectrum`) or ``"auto"``:
        dense when it fits ``memory_budget``; the report's ``path`` says which was used.
    tol
        Former name of ``rank_tol`` (deprecated).

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
    rank_tol = renamed_argument(rank_tol, tol, "tol", "rank_tol")
    X, T = _inputs.probe_data(data, probe_size, seed)
    path, op = choose_path(
        path, model, X, params=params, mode=mode, output=output, dtype=dtype, memory_budget=memory_budget
    )
    if op is not None:
        report = alignment_from_operator(
            op, T, loss=loss, target=target, rank_tol=rank_tol, residual_tol=residual_tol
        )
        report.mode, report.strategy = mode, "jvp/vjp"
        report.manifest = MeasurementManifest.build(op.fm, op.x, strategy="jvp/vjp", n_outputs=op.m)
        report.elapsed_s = time.perf_counter() - start
        return report
    with Measurement(model, X, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                     memory_budget=memory_budget) as job:
        targets = Targets.build(T, job.n, job.m, loss, target)
        with torch.no_grad():
            outputs = job.fm(job.fm.params, job.x)
        K = job.gram()
    report = alignment_from_gram(
        outputs, targets, K, n_params=job.fm.n_params, source_dtype=job.fm.dtype, rank_tol=rank_tol,
        residual_tol=residual_tol,
    )
    report.mode, report.strategy = mode, job.strategy
    report.manifest = MeasurementManifest.build(
        job.fm, job.x, strategy=job.strategy, structured=job.structured
    )
    report.elapsed_s = time.perf_counter() - start
    return report


def dense_alignment_bytes(rows: int, dtype: torch.dtype) -> int:
    """Peak memory of the dense path: the Gram and its working copy, plus a float64 ``eigh``.

    ``eigh`` holds the float64 Gram, its eigenvectors and a workspace of about ``2N²`` doubles.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return rows * rows * (2 * itemsize + 4 * 8)


def choose_path(
    path: str,
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
) -> tuple[str, JacobianOperator | None]:
    """Resolve ``path`` (one of :data:`PATHS`); the operator is returned when the path is matrix-free.

    ``"auto"`` is dense when :func:`dense_alignment_bytes` fits the memory budget, matrix-free
    otherwise.
    """
    if path not in PATHS:
        raise DiagnosticsError(f"path must be one of {PATHS}, got {path!r}")
    if path == "dense":
        return path, None
    op = JacobianOperator(
        model, inputs, params=params, mode=mode, output=output, dtype=dtype, chunk_size=chunk_size
    )
    budget = memory.resolve_budget(memory_budget, op.fm.device)
    if path == "auto" and dense_alignment_bytes(op.shape[0], op.dtype) <= budget:
        return "dense", None
    return "matrix-free", op


def alignment_from_operator(
    op: JacobianOperator,
    targets: object,
    *,
    loss: str = "mse",
    target: object = None,
    rank_tol: float | None = None,
    residual_tol: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    rtol: float | None = None,
    max_iter: int | None = None,
) -> AlignmentReport:
    """Compute the report of :func:`~diagnostics.check_alignment` matrix-free.

    Parameters
    ----------
    op
        Jacobian operator on the probe inputs.
    targets
        Targets of the probe samples (class indices, one-hot rows or values).
    loss, target, rank_tol, residual_tol
        As in :func:`~diagnostics.check_alignment`.
    top_k, rtol, max_iter
        As in :class:`OperatorSpectrum`.
    """
    built = Targets.build(targets, op.n, op.m, loss, target)
    spectrum = OperatorSpectrum(op, rank_tol=rank_tol, top_k=top_k, rtol=rtol, max_iter=max_iter)
    report = alignment_from_spectrum(
        op.outputs, built, spectrum, n_params=op.fm.n_params, source_dtype=op.dtype, residual_tol=residual_tol
    )
    report.rank_rule = f"{spectrum.rank_rule}; {spectrum.solver_summary}"
    report.path = "matrix-free"
    return report
