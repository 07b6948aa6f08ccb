"""From a measured spectrum of ``K`` to the alignment report: dense Gram, spectrum, or matrix-free operator.

Pure linear algebra on what the engine measured (no model): :func:`alignment_from_gram` (used by
:func:`~diagnostics.check_alignment` and the tracker), :func:`alignment_from_spectrum` (the one place where the
report's quantities and verdicts are computed, ``theory/alignment.md#numerics``) and
:func:`alignment_from_operator` (the same matrix-free, by LSQR and Lanczos, ``theory/alignment.md#matrix-free``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

import theory

from .alignment_report import AlignmentReport
from .engine import precision
from .engine.matrix_free.operator import JacobianOperator
from .engine.matrix_free.preconditioned import EXACT_GRAM_MAX_D, PreconditionedSpectrum, choose_method
from .engine.matrix_free.spectrum import DEFAULT_TOP_K, OperatorSpectrum
from .engine.spectral import Spectrum
from .errors import DiagnosticsError
from .targets import CE_SCALES, Targets, best_scale

__all__ = ["alignment_from_gram", "alignment_from_operator", "alignment_from_spectrum", "horizon_energy",
           "measured_bounds", "unstable_directions"]

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
    spectrum: Spectrum | OperatorSpectrum | PreconditionedSpectrum,
    *,
    n_params: int,
    source_dtype: torch.dtype | None = None,
    residual_tol: float | None = None,
    horizon: tuple[float, int] | None = None,
    horizon_optimizer: Sequence[Mapping[str, Any]] | None = None,
) -> AlignmentReport:
    """Build the alignment report from outputs, targets and the spectrum of ``K``.

    ``spectrum`` is a :class:`~diagnostics.engine.spectral.Spectrum` or a matrix-free stand-in
    (:class:`~diagnostics.engine.matrix_free.spectrum.OperatorSpectrum`,
    :class:`~diagnostics.engine.matrix_free.preconditioned.PreconditionedSpectrum`; same methods). Every verdict
    comes from :mod:`theory`: D1 (:func:`theory.alignment_condition`) and the data-level condition
    (:func:`theory.data_level_condition`) decided on the bounds of the exact residuals that the measurement
    gives (:func:`theory.residual_bounds`, ``theory/alignment.md#resolution``: *not established* where the
    resolution cannot decide; for a preconditioned solve its certified bounds,
    ``theory/alignment.md#preconditioned``), and the statements of ``theory/results.md`` with those two as
    premises. The horizon's premises come from :func:`theory.gradient_descent_premises` (``horizon_optimizer``:
    the optimiser's parameter groups as ``{"name", **hyper-parameters}``, when known).
    """
    n, m = outputs.shape
    source_dtype = source_dtype or outputs.dtype
    residual_tol = precision.RESIDUAL_TOL if residual_tol is None else residual_tol
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
    if isinstance(spectrum, PreconditionedSpectrum):  # the best witness, with its rounding, is the measured residual
        residual = spectrum.residual_bounds(Q)[1]
        output_residual = spectrum.residual_bounds(f)[1] if f_sq > 0 else 0.0
    d1_bounds = measured_bounds(spectrum, Q, residual, n_params, source_dtype)
    d1 = theory.alignment_condition(residual, residual_tol, bounds=d1_bounds)
    data_level = theory.data_level_condition(
        output_residual, residual_tol, bounds=measured_bounds(spectrum, f, output_residual, n_params, source_dtype)
        if f_sq > 0 else None)
    aligned, cms = d1.status, data_level.status  # premises: not established leaves them undecided
    note = "" if d1.status != theory.NOT_ESTABLISHED or source_dtype == torch.float64 else (
        f"{precision.dtype_name(source_dtype)} knows the exact residual only within [{d1.details['lower']:.2e}, "
        f"{d1.details['upper']:.2e}] (its resolution, nm·eps·λ_max, is {precision.eps(source_dtype) * n * m:.1e}·λ_max"
        + (f"; {d1_bounds.reason}" if isinstance(spectrum, OperatorSpectrum | PreconditionedSpectrum) else "")
        + "); re-measure with dtype=torch.float64")
    r_q = f - Q
    decomposition_gap = (float((r_q**2).sum()) - spectrum.inside_norm_sq(r_q) - outside) / (2 * n)
    if targets.loss == "mse":
        certificate = math.sqrt(spectrum.pinv_quadratic(r_q))
        scale, target_loss = 1.0, 0.0
        bound = 0.5 * grad_norm * certificate
        unattributed = abs(decomposition_gap) if data_level.status == theory.NOT_ESTABLISHED else 0.0
        verdicts = (
            d1,
            theory.loss_decomposition(loss, spectrum.inside_norm_sq(r_q), outside, n,
                                      rtol=precision.decomposition_rtol(source_dtype),
                                      uncertainty=max(_truncation_uncertainty(spectrum, loss, r_q, outside, n),
                                                      unattributed) + _projection_defect(spectrum, r_q) / (2 * n)),
            theory.necessity_at_global_minimum(loss, residual, n, q_sq, cms=cms,
                                               uncertainty=residual - d1.details["lower"]),
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
    horizon_premises: tuple[theory.Premise, ...] = ()
    unstable = None
    if horizon is not None:
        lr, steps = validate_horizon(horizon)
        horizon_premises = theory.gradient_descent_premises(
            "horizon", horizon_optimizer, squared_loss=False if targets.loss != "mse" else None)
        if all(p.met is not False for p in horizon_premises):
            below = horizon_energy(spectrum, Q, n / (lr * steps), outside)
            horizon_residual, horizon_floor = math.sqrt(below / q_sq), below / (2 * n)
            unstable = unstable_directions(spectrum, Q, lr, n)
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
        horizon_premises=horizon_premises,
        horizon_unstable=unstable,
        precision_note=note,
        target_norm_sq=q_sq,
        dtype=precision.dtype_name(source_dtype),
        data_level=data_level,
    )


#: Below this LSQR condition limit the matrix-free rank rule cuts so much of the spectrum that its
#: residual says little (``sqrt(λ_max/rank_tol)``: 100 keeps eigenvalues down to ``10⁻⁴ λ_max``).
MIN_CONLIM = 100.0


def measured_bounds(spectrum: Spectrum | OperatorSpectrum | PreconditionedSpectrum, q: torch.Tensor, residual: float,
                    n_params: int, source_dtype: torch.dtype) -> theory.ResidualBounds | None:
    """Where the exact residual of ``q`` lies, given this measurement (``theory/alignment.md#resolution``).

    ``None`` under a user-supplied rank rule (it states its own question); on the matrix-free path the LSQR
    residual ``‖q − Jν‖`` is a witness (an upper bound, with the rounding of ``Jν``) and no rank is counted;
    a preconditioned solve certifies both sides (:func:`_preconditioned_bounds`).
    """
    if spectrum.rank_rule.startswith("user-supplied"):
        return None
    q = q.detach().reshape(-1).to(torch.float64).cpu()
    q_norm = float(q.norm())
    lam_max = max(float(spectrum.eigenvalues[0]), 0.0)
    rows = q.shape[0]
    if isinstance(spectrum, PreconditionedSpectrum):
        return _preconditioned_bounds(spectrum, q, n_params)
    if isinstance(spectrum, OperatorSpectrum):
        nu, _ = spectrum.least_norm_solution(q)
        rounding = rows * precision.eps(source_dtype) * math.sqrt(lam_max) * float(nu.norm()) / q_norm
        return theory.witness_bounds(residual, rounding, _witness_reason(spectrum, precision.dtype_name(source_dtype)))
    return theory.residual_bounds(
        residual, rows=rows, n_params=n_params, kept_rank=spectrum.rank, resolution=spectrum.rank_tol,
        smallest_kept=spectrum.smallest_kept, largest_discarded=spectrum.largest_discarded,
        pinv_norm=spectrum.pinv_norm(q) / q_norm)


def _witness_reason(spectrum: OperatorSpectrum, dtype: str) -> str:
    """Why a matrix-free residual only bounds the exact one from above, and what to do about a large one."""
    reason = ("the matrix-free path measures ‖q − Jν‖ for the LSQR solution ν, an upper bound on the residual, and "
              "counts no rank, so it can show membership in Col J but not its failure; the dense path can decide a "
              "failure when its kept rank reaches min(nm, d)")
    if spectrum.conlim < MIN_CONLIM:
        reason += (f"; its rank rule in {dtype} is an LSQR condition limit of {spectrum.conlim:.3g} (every eigenvalue "
                   f"below {1 / spectrum.conlim**2:.1e}·λ_max is cut): re-run with dtype=torch.float64")
    if spectrum.truncated:
        reason += (f"; LSQR stopped before its tolerance ({spectrum.solver_summary}): raise max_iter or the time "
                   "budget, or resume from the checkpoint")
    return reason


def _preconditioned_bounds(spectrum: PreconditionedSpectrum, q: torch.Tensor, n_params: int) -> theory.ResidualBounds:
    """Where the exact residual of ``q`` lies after a preconditioned solve (``theory/alignment.md#preconditioned``).

    Above: the better witness, with its rounding. Below: the certified bound on the rank rule's residual, which
    bounds the exact one only when no direction of ``Col J`` can hide below the threshold, i.e. when the kept
    rank reaches ``min(nm, d)`` (``theory/alignment.md#resolution``): counted on the exact ``JᵀJ`` by the dense
    path's argument; with a sketch, from its smallest eigenvalue, within the sketch's distortion (a premise).
    """
    lower, upper = spectrum.residual_bounds(q)
    rows = q.numel()
    if spectrum.method == "gram":  # the dense path's argument on JᵀJ, from both of the solve's bounds
        settings = {"rows": rows, "n_params": n_params, "kept_rank": spectrum.rank, "resolution": spectrum.resolution,
                    "smallest_kept": spectrum.smallest_kept, "largest_discarded": spectrum.largest_discarded,
                    "pinv_norm": spectrum.pinv_norm(q) / float(q.detach().reshape(-1).to(torch.float64).norm())}
        above, below = theory.residual_bounds(upper, **settings), theory.residual_bounds(lower, **settings)
        return theory.ResidualBounds(min(below.lower, above.upper), above.upper, below.reason or above.reason)
    certified = (f"the preconditioned solve certifies ‖(I − P_>)q‖/‖q‖ ≥ {lower:.3e} for the directions the rank rule "
                 f"keeps (eigenvalues of K above {spectrum.rank_tol:.2e}), and ≤ {upper:.3e} for all of Col J")
    if spectrum.truncated:
        certified += ("; a solve stopped before its tolerance, so the bounds are not yet tight: raise max_iter or the "
                      "time budget, or resume from the checkpoint")
    if spectrum.rank_resolved:
        return theory.ResidualBounds(min(lower, upper), upper, certified + (
            f"; the sketch's smallest eigenvalue puts every singular value of J above the threshold (assuming the "
            f"sketch distorts norms by at most a factor {spectrum.distortion:g}), so that is the exact residual"))
    return theory.ResidualBounds(0.0, upper, certified + (
        f"; J may have directions below the threshold (a sketch does not count the rank, and its smallest "
        f"eigenvalue does not exclude them: J is rank-deficient, or nearly), which a residual can hide in, so "
        f"the exact residual is bounded below only by 0; the exact Gram (solver={{'method': 'gram'}}, d ≤ "
        f"{EXACT_GRAM_MAX_D:,}) counts the rank"))


def _projection_defect(spectrum: Spectrum | OperatorSpectrum | PreconditionedSpectrum, r: torch.Tensor) -> float:
    """Return ``|‖r‖² − ‖Jν‖² − ‖r − Jν‖²|`` of a damped fit (0 for a projection): what (I2) cannot attribute.

    The damped solution's fit is not an orthogonal projection: ``⟨Jν, r − Jν⟩ = μ‖ν‖²`` at its minimum
    (``theory/alignment.md#preconditioned``).
    """
    if not isinstance(spectrum, PreconditionedSpectrum):
        return 0.0
    r = r.detach().reshape(-1).to(torch.float64).cpu()
    _, fitted = spectrum.least_norm_solution(r)
    return abs(float(r @ r) - float(fitted @ fitted) - float((r - fitted) @ (r - fitted)))


def _truncation_uncertainty(spectrum: Spectrum | OperatorSpectrum, loss: float, r: torch.Tensor, outside: float,
                            n: int) -> float:
    """Return the (I2) gap a truncated LSQR solve cannot tell from zero: all of it (``Jν_k`` is no projection)."""
    if not getattr(spectrum, "truncated", False):
        return 0.0
    return loss + (spectrum.inside_norm_sq(r) + outside) / (2 * n)


def horizon_energy(spectrum: Spectrum | OperatorSpectrum, q: torch.Tensor, threshold: float,
                   outside: float | None = None) -> float:
    """``‖(I − P_T)q‖²``: the energy of ``q`` in the directions a horizon does not fit (``theory/alignment.md``).

    Those are the eigen-directions with ``λ < threshold = n/(ηT)`` and, under the same rank rule as the exact
    floor, those at or below ``rank_tol``: the result is never below ``‖(I − P)q‖²`` (``outside``, computed when
    not given) and equals it once ``threshold ≤ rank_tol``. ``nan`` on the matrix-free path when the threshold
    lies below the computed eigenpairs.
    """
    outside = spectrum.outside_norm_sq(q) if outside is None else outside
    if threshold <= spectrum.rank_tol:
        return outside
    below = spectrum.energy_below(q, threshold)
    return below if math.isnan(below) else max(below, outside)


def unstable_directions(spectrum: Spectrum | OperatorSpectrum, q: torch.Tensor, lr: float,
                        n: int) -> theory.UnstablePart:
    """Return the eigen-directions of ``K`` with ``ηλ/n > 2`` and their share of ``‖q‖²`` (``theory.unstable_part``).

    On the matrix-free path from the top eigenpairs (lower bounds when all of them are unstable).
    """
    captured = spectrum.captured_fraction(q)
    shares = np.diff(captured, prepend=0.0)
    return theory.unstable_part(lr, n, spectrum.eigenvalues[:shares.size], np.clip(shares, 0.0, None),
                                rank_tol=spectrum.rank_tol, complete=not isinstance(spectrum, OperatorSpectrum))


def validate_horizon(horizon: tuple[float, int]) -> tuple[float, int]:
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
    method: str = "auto",
    **solver: Any,
) -> AlignmentReport:
    """Compute the report of :func:`~diagnostics.check_alignment` matrix-free.

    Parameters
    ----------
    op
        Jacobian operator on the probe inputs (or the whole data set: a
        :class:`~diagnostics.engine.matrix_free.sharded.ShardedJacobian` of streamed shards).
    targets
        Targets of the probe samples (class indices, one-hot rows or values).
    loss, target, rank_tol, residual_tol, horizon
        As in :func:`~diagnostics.check_alignment`.
    top_k, rtol, max_iter, **solver
        As in :class:`OperatorSpectrum` (``solver``: ``time_budget``, ``checkpoints``, ``checkpoint_every``,
        ``progress``, ``workspace``). The report's ``rank_rule`` states why each LSQR solve stopped.
    method
        The solver (:data:`~diagnostics.engine.matrix_free.preconditioned.METHODS`): ``"lsqr"`` (LSQR and
        Lanczos on ``J``, :class:`OperatorSpectrum`), ``"gram"`` or ``"sketch"`` (preconditioned by the exact or
        sketched ``JᵀJ``, :class:`~diagnostics.engine.matrix_free.preconditioned.PreconditionedSpectrum`, for a
        tall ``J``), or ``"auto"``: chosen from the shape of ``J``
        (:func:`~diagnostics.engine.matrix_free.preconditioned.choose_method`).
    """
    built = Targets.build(targets, op.n, op.m, loss, target)
    method = choose_method(method, op.shape)
    if method == "lsqr":
        spectrum = OperatorSpectrum(op, rank_tol=rank_tol, top_k=top_k, rtol=rtol, max_iter=max_iter, **solver)
    else:
        floor = None if horizon is None else op.n / (horizon[0] * horizon[1])  # the horizon's eigenvalue threshold
        spectrum = PreconditionedSpectrum(
            op, [built.Q, op.outputs], method=method, rank_tol=rank_tol, top_k=top_k, eigen_floor=floor, rtol=rtol,
            max_iter=max_iter, witness_tol=residual_tol, **solver)
    report = alignment_from_spectrum(
        op.outputs, built, spectrum, n_params=op.fm.n_params, source_dtype=op.dtype, residual_tol=residual_tol,
        horizon=horizon,
    )
    report.rank_rule = f"{spectrum.rank_rule}; {spectrum.solver_summary}"
    report.path, report.solver = "matrix-free", method
    return report
