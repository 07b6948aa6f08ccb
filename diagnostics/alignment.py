"""The data-architecture alignment condition D1 and the results it gives (theory/alignment.md#d1, theory/results.md).

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
from typing import Any

import numpy as np
import torch
from torch import nn

import theory

from .alignment_report import AlignmentReport
from .engine import inputs as _inputs
from .engine import memory, precision
from .engine.accuracy import jacobian_error
from .engine.functional import ParamSelector
from .engine.manifest import MeasurementManifest
from .engine.measurement import Measurement
from .engine.operator import JacobianOperator
from .engine.operator_spectrum import DEFAULT_TOP_K, OperatorSpectrum
from .engine.spectral import Spectrum
from .errors import DiagnosticsError, InsufficientMemoryError, renamed_argument
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
    horizon: tuple[float, int] | None = None,
) -> AlignmentReport:
    """Build the alignment report from outputs ``f_X`` (``(n, m)``), targets and the Gram ``K``.

    Pure linear algebra (no model): used by :func:`check_alignment` and by the tracker. ``‖∇L‖`` is
    ``sqrt(gᵀKg)`` with ``g = ∂L/∂f_X``, so no Jacobian is needed.
    """
    source_dtype = source_dtype or outputs.dtype
    spectrum = Spectrum.of(K, source_dtype=source_dtype, rank_tol=rank_tol)
    return alignment_from_spectrum(outputs, targets, spectrum, n_params=n_params, source_dtype=source_dtype,
                                   residual_tol=residual_tol, horizon=horizon)


def alignment_from_spectrum(
    outputs: torch.Tensor,
    targets: Targets,
    spectrum: Spectrum | OperatorSpectrum,
    *,
    n_params: int,
    source_dtype: torch.dtype | None = None,
    residual_tol: float | None = None,
    horizon: tuple[float, int] | None = None,
) -> AlignmentReport:
    """Build the alignment report from outputs, targets and the spectrum of ``K``.

    ``spectrum`` is a :class:`~diagnostics.engine.spectral.Spectrum` or its matrix-free stand-in
    :class:`~diagnostics.engine.operator_spectrum.OperatorSpectrum` (same methods). Every verdict comes
    from :mod:`theory`: D1 (:func:`theory.alignment_condition`, *not established* when the precision
    cannot decide it), and the statements of ``theory/results.md`` with their premises measured here.
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
    f_sq = float((f**2).sum())
    output_residual = math.sqrt(max(spectrum.outside_norm_sq(f), 0.0) / f_sq) if f_sq > 0 else 0.0
    resolved, note = _resolution(spectrum, residual, residual_tol, source_dtype)
    d1 = theory.alignment_condition(residual, residual_tol, resolved, note)
    aligned = {theory.HOLDS: True, theory.REFUTED: False}.get(d1.status)
    cms = output_residual <= residual_tol
    r_q = f - Q
    decomposition_gap = (float((r_q**2).sum()) - spectrum.inside_norm_sq(r_q) - outside) / (2 * n)
    if targets.loss == "mse":
        certificate = math.sqrt(spectrum.pinv_quadratic(r_q))
        scale, target_loss = 1.0, 0.0
        bound = 0.5 * grad_norm * certificate
        verdicts = (
            d1,
            theory.loss_decomposition(loss, spectrum.inside_norm_sq(r_q), outside, n,
                                      rtol=precision.decomposition_rtol(source_dtype),
                                      uncertainty=_truncation_uncertainty(spectrum, loss, r_q, outside, n)),
            theory.necessity_at_global_minimum(loss, residual, n, q_sq, cms=cms),
            theory.gradient_domination(loss, grad_norm, certificate, aligned,
                                       truncation=spectrum.outside_norm_sq(r_q) / (2 * n), cms=cms),
        )
    else:
        q_losses = targets.scaled_target_losses(CE_SCALES)
        distances = [math.sqrt(spectrum.pinv_quadratic(f - c * targets.Q)) for c in CE_SCALES]
        k = best_scale(q_losses, grad_norm * np.asarray(distances))
        scale, target_loss, certificate = float(CE_SCALES[k]), float(q_losses[k]), distances[k]
        bound = target_loss + grad_norm * certificate
        truncation = abs(spectrum.outside_inner(g, f - scale * targets.Q))
        verdicts = (
            d1,
            theory.convex_loss_bound(loss, target_loss, grad_norm, certificate, True if scale == 0 else aligned,
                                     truncation=truncation, cms=cms),
        )
    excess = bound - target_loss
    bound_ratio = (loss - target_loss) / excess if excess > 0 else (0.0 if loss <= target_loss else math.inf)
    captured = spectrum.captured_fraction(Q)
    top_k = {k: float(captured[min(k, captured.size) - 1]) for k in TOP_K if k <= captured.size}
    horizon_residual = horizon_floor = math.nan
    if horizon is not None:
        lr, steps = _check_horizon(horizon)
        below = spectrum.energy_below(Q, n / (lr * steps))  # ηλT/n < 1
        horizon_residual, horizon_floor = math.sqrt(below / q_sq), below / (2 * n)
    return AlignmentReport(
        verdict=d1,
        residual=residual,
        residual_tol=float(residual_tol),
        verdicts=verdicts,
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
        resolution=n * m * precision.eps(source_dtype),
        eigenvalues=spectrum.eigenvalues,
        alignment_curve=spectrum.residual_curve(Q),
        horizon=None if horizon is None else (float(horizon[0]), int(horizon[1])),
        horizon_residual=horizon_residual,
        horizon_loss_floor=horizon_floor,
        precision_note=note,
        dtype=precision.dtype_name(source_dtype),
    )


#: Below this LSQR condition limit the matrix-free rank rule cuts so much of the spectrum that its
#: residual says little (``sqrt(λ_max/rank_tol)``: 100 keeps eigenvalues down to ``10⁻⁴ λ_max``).
MIN_CONLIM = 100.0


def _resolution(spectrum: Spectrum | OperatorSpectrum, residual: float, residual_tol: float,
                source_dtype: torch.dtype) -> tuple[bool, str]:
    """Whether the precision of the measurement decides D1, and if not, why and what to do."""
    name = precision.dtype_name(source_dtype)
    if spectrum.rank_rule.startswith("user-supplied"):
        return True, ""
    conlim = getattr(spectrum, "conlim", math.inf)
    if conlim < MIN_CONLIM:
        return False, (f"the matrix-free rank rule in {name} is an LSQR condition limit of {conlim:.3g} "
                       f"(every eigenvalue below {1 / conlim**2:.1e}·λ_max is cut), so the residual says little; "
                       "re-run with dtype=torch.float64")
    if getattr(spectrum, "truncated", False) and residual > residual_tol:
        return False, (f"LSQR stopped before its tolerance ({spectrum.solver_summary}): the residual of a truncated "
                       "solve only bounds the least-squares residual from above, so it cannot refute D1; raise "
                       "max_iter or the time budget, or resume from the checkpoint")
    if source_dtype == torch.float64 or residual <= residual_tol:
        return True, ""
    return False, (f"{name} resolves eigenvalues only down to nm·eps·λ_max, and the residual lies in the directions "
                   "below; re-measure with dtype=torch.float64")


def _truncation_uncertainty(spectrum: Spectrum | OperatorSpectrum, loss: float, r: torch.Tensor, outside: float,
                            n: int) -> float:
    """Return the (I2) gap a truncated LSQR solve cannot tell from zero: all of it (``Jν_k`` is no projection)."""
    if not getattr(spectrum, "truncated", False):
        return 0.0
    return loss + (spectrum.inside_norm_sq(r) + outside) / (2 * n)


def _check_horizon(horizon: tuple[float, int]) -> tuple[float, int]:
    """Validate a training horizon ``(η, T)``."""
    try:
        lr, steps = horizon
    except (TypeError, ValueError) as exc:
        raise DiagnosticsError(f"horizon must be a pair (learning rate, steps), got {horizon!r}") from exc
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiagnosticsError(f"the horizon's steps must be a positive integer, got {steps!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise DiagnosticsError(f"the horizon's learning rate must be a positive number, got {lr!r}")
    return float(lr), steps


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
    horizon: tuple[float, int] | None = None,
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
        ``"mse"`` (the squared loss: I2, I3) or ``"ce"`` (cross-entropy on logits: I4).
    rank_tol
        Rank tolerance on the eigenvalues of ``K``; default ``λ_max · nm · eps`` of the Jacobian dtype.
    residual_tol
        Residual below which the condition is declared to hold; default ``sqrt(eps)``.
    params, mode, output, strategy, memory_budget
        As in :func:`diagnostics.jacobian` (on the matrix-free path ``strategy`` goes to the
        :class:`~diagnostics.engine.operator.JacobianOperator`). The manifest says which strategy
        ``"auto"`` chose, why, and the measurement's estimated floating-point error.
    dtype
        Compute dtype. Default: float64 on the CPU, where it costs about 1–2× float32 and gives the
        answer double precision gives; on an accelerator the model's dtype (at least float32), and when
        that cannot decide D1 the dense measurement is repeated in float64 (the report's
        ``precision_note`` says so), falling back to *not established* when float64 would not fit
        ``memory_budget``; on the matrix-free path the report says *not established* and how to re-run.
    probe_size, seed
        Size and seed of the probe subset (``None``: all the data).
    path
        ``"dense"`` (the Gram and its eigen-decomposition), ``"matrix-free"`` (LSQR and Lanczos on
        Jacobian products, memory ``O(nm + d)``,
        :class:`~diagnostics.engine.operator_spectrum.OperatorSpectrum`) or ``"auto"``:
        dense when it fits ``memory_budget``; the report's ``path`` says which was used.
    horizon
        ``(η, T)``: a training horizon, full-batch gradient descent with step ``η`` for ``T`` steps on
        ``(1/2n)‖f − Q‖²``; the report then gives the part of ``Q`` that horizon cannot fit,
        ``horizon_residual``, and its loss floor ``horizon_loss_floor`` (``theory/alignment.md``).
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
    if horizon is not None:
        _check_horizon(horizon)
    X, T = _inputs.probe_data(data, probe_size, seed)
    settings = {"target": target, "loss": loss, "rank_tol": rank_tol, "residual_tol": residual_tol,
                "params": params, "mode": mode, "output": output, "strategy": strategy,
                "memory_budget": memory_budget, "path": path, "horizon": horizon}
    dtype = dtype or precision.verdict_dtype(model)
    report = _measure(model, X, T, dtype=dtype, **settings)
    if (report.verdict.status == theory.NOT_ESTABLISHED and dtype != torch.float64 and rank_tol is None
            and report.path == "dense"):  # matrix-free in float64 can take many LSQR iterations: the user decides
        try:
            again = _measure(model, X, T, dtype=torch.float64, **settings)
        except InsufficientMemoryError:
            report.precision_note += " (a float64 re-measurement would not fit the memory budget)"
        else:
            again.precision_note = (
                f"{report.dtype} could not decide D1 (a = {report.residual:.3e} at its resolution); re-measured "
                f"in float64: a = {again.residual:.3e}" + (f"; {again.precision_note}" if again.precision_note else "")
            )
            report = again
    report.elapsed_s = time.perf_counter() - start
    return report


def _measure(model: nn.Module, X: _inputs.Inputs, T: torch.Tensor, *, dtype: torch.dtype | None, target: object,
             loss: str, rank_tol: float | None, residual_tol: float | None, params: ParamSelector, mode: str,
             output: _inputs.OutputSelector, strategy: str, memory_budget: int | None, path: str,
             horizon: tuple[float, int] | None) -> AlignmentReport:
    """One measurement of :func:`check_alignment` in ``dtype``, on the dense or the matrix-free path."""
    path, op = choose_path(
        path, model, X, params=params, mode=mode, output=output, dtype=dtype, memory_budget=memory_budget,
        strategy=strategy,
    )
    if op is not None:
        report = alignment_from_operator(
            op, T, loss=loss, target=target, rank_tol=rank_tol, residual_tol=residual_tol, horizon=horizon
        )
        report.mode, report.strategy = mode, op.products
        error = jacobian_error(op.fm, op.x, m=op.m, per_sample=False)
        report.manifest = MeasurementManifest.build(op.fm, op.x, strategy=op.products, n_outputs=op.m,
                                                    choice=op.choice, error=error)
        return report
    with Measurement(model, X, params=params, mode=mode, output=output, dtype=dtype, strategy=strategy,
                     memory_budget=memory_budget) as job:
        targets = Targets.build(T, job.n, job.m, loss, target)
        with torch.no_grad():
            outputs = job.fm(job.fm.params, job.x)
        K = job.gram()
        error = job.error(K)
    report = alignment_from_gram(
        outputs, targets, K, n_params=job.fm.n_params, source_dtype=job.fm.dtype, rank_tol=rank_tol,
        residual_tol=residual_tol, horizon=horizon,
    )
    report.mode, report.strategy = mode, job.strategy
    report.manifest = MeasurementManifest.of(job, error)
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
    strategy: str = "auto",
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
        model, inputs, params=params, mode=mode, output=output, dtype=dtype, chunk_size=chunk_size,
        strategy=strategy, memory_budget=memory_budget,
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
    horizon: tuple[float, int] | None = None,
    **solver: Any,
) -> AlignmentReport:
    """Compute the report of :func:`~diagnostics.check_alignment` matrix-free.

    Parameters
    ----------
    op
        Jacobian operator on the probe inputs (or the whole data set: a
        :class:`~diagnostics.engine.sharded.ShardedJacobian` of streamed shards).
    targets
        Targets of the probe samples (class indices, one-hot rows or values).
    loss, target, rank_tol, residual_tol, horizon
        As in :func:`~diagnostics.check_alignment`.
    top_k, rtol, max_iter, **solver
        As in :class:`OperatorSpectrum` (``solver``: ``time_budget``, ``checkpoints``, ``checkpoint_every``,
        ``progress``, ``workspace``). The report's ``rank_rule`` states why each LSQR solve stopped.
    """
    built = Targets.build(targets, op.n, op.m, loss, target)
    spectrum = OperatorSpectrum(op, rank_tol=rank_tol, top_k=top_k, rtol=rtol, max_iter=max_iter, **solver)
    report = alignment_from_spectrum(
        op.outputs, built, spectrum, n_params=op.fm.n_params, source_dtype=op.dtype, residual_tol=residual_tol,
        horizon=horizon,
    )
    report.rank_rule = f"{spectrum.rank_rule}; {spectrum.solver_summary}"
    report.path = "matrix-free"
    return report
