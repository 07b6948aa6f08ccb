"""APP: the augmented model that keeps D1 by construction, in continuous and discrete time (application.md)."""

from __future__ import annotations

import math

import numpy as np

from ._arguments import ArrayLike, array, flag, nonneg, real, same_length
from .verdict import Premise, Verdict, judge, measured_premise, ratio, rel_tol

__all__ = [
    "application_bound",
    "distance_non_increasing",
    "frozen_d1_premise",
    "gd_distance_identity",
    "gd_step_distance_condition",
    "gd_telescoping_bound",
]


def frozen_d1_premise(aligned: bool | str | None) -> Premise:
    """Return the premise D1 for the frozen block, ``Q ∈ Col Ψ_X``: a bool, its verdict's word, or ``None``."""
    return measured_premise("D1 for the frozen block: Q ∈ Col Ψ_X", "aligned", aligned, "")


def application_bound(loss: float, omega_tau_sq: float, nu_tau_sq: float, elapsed: float,
                      convex: bool = False, target_loss: float = 0.0, rtol: float = 1e-6,
                      aligned: bool | None = None) -> Verdict:
    r"""(APP, theory/application.md) The augmented model's rate: ``L(t) ≤ (‖ω_τ‖² + ‖ν_τ‖²) / (4(t − τ))``.

    For a convex loss and target ``Q = Ψ_X ν_Q``: ``L(t) − L(Q) ≤ (‖ω_τ‖² + ‖ν_Q‖²) / (2(t − τ))``.
    Gradient flow on all parameters of ``f̃ = f + Ψ u`` (``u_τ = 0``), see ``theory/application.md``.

    Parameters
    ----------
    loss
        ``L(t)``.
    omega_tau_sq
        ``‖ω_τ‖²``, output-layer weights and bias at the switch.
    nu_tau_sq
        ``‖ν‖²`` for the ``ν`` with ``Ψ_X ν = Y`` (or ``Q``); least norm is best.
    elapsed
        ``t − τ ≥ 0`` (gradient descent: ``η`` × steps; see ``gd_telescoping_bound`` for the exact
        discrete statement). ``0`` gives an infinite bound.
    convex
        Use the convex-loss form.
    target_loss
        ``L(Q)`` (convex form only; must be 0 for the squared loss).
    rtol
        Relative tolerance.
    aligned
        Whether D1 holds for the frozen block: a bool, the word of its verdict, or ``None`` (assumed).

    Returns
    -------
    Verdict
        ``lhs = L`` (``L − L(Q)`` when convex), ``rhs`` = the bound, ``margin = rhs − lhs``. Its premises:
        D1 for the frozen block, and gradient flow on all parameters (assumed: for gradient descent the
        exact statements are :func:`gd_distance_identity` and :func:`gd_telescoping_bound`).
    """
    loss = real("loss", loss) if convex else nonneg("loss", loss)
    w2 = nonneg("omega_tau_sq", omega_tau_sq)
    v2 = nonneg("nu_tau_sq", nu_tau_sq)
    s = nonneg("elapsed", elapsed)
    convex = flag("convex", convex)
    lq = real("target_loss", target_loss)
    if not convex and lq != 0:
        raise ValueError("target_loss is only used with convex=True (the squared-loss bound is on L itself)")
    lhs = loss - lq
    factor = 2.0 if convex else 4.0
    rhs = (w2 + v2) / (factor * s) if s > 0 else math.inf
    details = {"B_bar_sq": w2 + v2, "elapsed": s, "convex": convex, "target_loss": lq,
               "bound_ratio": ratio(lhs, rhs) if math.isfinite(rhs) else 0.0}
    tolerance = rel_tol(rtol, lhs, rhs) if math.isfinite(rhs) else 0.0
    label = "(‖ω‖²+‖ν‖²)/2(t−τ)" if convex else "(‖ω‖²+‖ν‖²)/4(t−τ)"
    return judge("APP", "augmented-model rate", lhs, rhs, tolerance, details, "L−L(Q)" if convex else "L",
                 label, premises=[frozen_d1_premise(aligned),
                                  Premise("gradient flow on all parameters", None, "continuous time")])


def distance_non_increasing(distances: ArrayLike, atol_rel: float = 1e-6,
                            step_condition: bool | None = None) -> Verdict:
    r"""(APP, theory/application.md) The recorded distance ``‖(ω_k, u_k − ν)‖`` never increases.

    Gradient flow (squared loss): ``½ d/dt ‖(ω, u − ν)‖² = −2L ≤ 0``. Gradient descent: see
    :func:`gd_step_distance_condition`. Convex losses: non-increasing only while ``L ≥ L(Q)``.

    Parameters
    ----------
    distances
        The sequence ``d_0, d_1, …`` (at least two entries).
    atol_rel
        Tolerance on each increase, relative to ``d_0``: ``d_{k+1} − d_k ≤ atol_rel · d_0``.
    step_condition
        Whether every gradient-descent step met ``η‖∇_{ω,u}L‖² ≤ 4L`` (``None``: gradient flow, or assumed);
        when some did not, the monotonicity is not applicable.

    Returns
    -------
    Verdict
        ``lhs`` = the largest increase ``max_k (d_{k+1} − d_k)``, ``rhs = 0``, ``margin = −lhs``;
        ``details``: ``worst_step``, ``n_increases`` (beyond tolerance), ``first``, ``last``.
    """
    d = array("distances", distances, nonneg=True, min_len=2)
    tolerance = rel_tol(nonneg("atol_rel", atol_rel), d[0])
    inc = np.diff(d)
    k = int(np.argmax(inc))
    details = {"worst_step": k, "n_increases": int((inc > tolerance).sum()), "first": float(d[0]),
               "last": float(d[-1])}
    premise = Premise("η‖∇_{ω,u}L‖² ≤ 4L at every step", None if step_condition is None else bool(step_condition))
    return judge("APP.distance", "distance non-increasing", float(inc[k]), 0.0, tolerance, details,
                 "max Δd", "0", premises=[premise])


def gd_step_distance_condition(step_size: float, grad_norm_sq: float, loss: float,
                               target_loss: float | None = None, rtol: float = 1e-6) -> Verdict:
    r"""(APP, discrete) One gradient-descent step does not increase ``‖(ω, u − ν)‖`` iff ``η‖∇_{ω,u}L‖² ≤ 4L``.

    Exact identity for the squared loss (the body parameters may move in the same step):
    ``‖x_{k+1} − x*‖² = ‖x_k − x*‖² − 4ηL_k + η²‖∇_{ω,u}L_k‖²`` with ``x = (ω, u)``, ``x* = (0, ν)``.
    For a convex loss with target ``Q`` (``target_loss = L(Q)``) the condition
    ``η‖∇_{ω,u}L‖² ≤ 2(L − L(Q))`` is sufficient, not necessary.

    Parameters
    ----------
    step_size
        ``η > 0``.
    grad_norm_sq
        ``‖∇_{ω,u} L_k‖²`` — the gradient block of the output layer and ``u`` only, not the body.
    loss
        ``L_k``.
    target_loss
        ``L(Q)`` for the convex-loss form; ``None`` for the squared loss.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = η‖∇‖²``, ``rhs = 4L`` (or ``2(L − L(Q))``), ``margin = rhs − lhs``; ``details``:
        ``max_step`` (the largest ``η`` satisfying the condition), ``squared_distance_change``
        (exact for the squared loss).
    """
    eta = nonneg("step_size", step_size)
    if eta == 0:
        raise ValueError("step_size must be positive")
    g2 = nonneg("grad_norm_sq", grad_norm_sq)
    if target_loss is None:
        loss = nonneg("loss", loss)
        rhs, exact = 4 * loss, True
    else:
        loss = real("loss", loss)
        rhs, exact = 2 * (loss - real("target_loss", target_loss)), False
    lhs = eta * g2
    details = {"exact": exact, "max_step": ratio(rhs, g2) if rhs >= 0 else 0.0}
    if exact:
        details["squared_distance_change"] = -4 * eta * loss + eta**2 * g2
    return judge("APP.gd-step", "GD step keeps the distance", lhs, rhs, rel_tol(rtol, lhs, rhs), details,
                 "η‖∇_{ω,u}L‖²", "4L" if exact else "2(L−L(Q))")


def gd_distance_identity(distances_sq: ArrayLike, losses: ArrayLike, grad_norms_sq: ArrayLike,
                         step_sizes: ArrayLike, target_loss: float | None = None, rtol: float = 1e-9,
                         rounding: float | ArrayLike = 0.0, aligned: bool | None = None) -> Verdict:
    r"""(APP, discrete) Every recorded step against the one-step identity of gradient descent on ``x = (ω, u)``.

    Squared loss (exact): ``‖x_{k+1} − x*‖² − ‖x_k − x*‖² = −4η_kL_k + η_k²‖∇_{ω,u}L_k‖²``. Convex loss with
    target ``Q`` (``target_loss = L(Q)``): ``‖x_{k+1} − x*‖² − ‖x_k − x*‖² ≤ −2η_k(L_k − L(Q)) + η_k²‖∇_{ω,u}L_k‖²``
    (``theory/application.md``). Both hold whatever the body parameters do in the same step, but only when
    the update of ``(ω, u)`` is exactly ``−η_k∇_{ω,u}L_k`` for the recorded loss: clipping, weight decay,
    momentum, gradient scaling or a loss that is not the one recorded break them, and this check, which
    uses the *recorded* distances, says so.

    Parameters
    ----------
    distances_sq
        ``‖x_k − x*‖²`` for ``k = 0..K`` (``K + 1`` entries).
    losses, grad_norms_sq, step_sizes
        ``L_k``, ``‖∇_{ω,u}L_k‖²`` and ``η_k`` of the ``K`` steps.
    target_loss
        ``L(Q)`` for the convex form; ``None`` for the squared loss.
    rtol
        Relative tolerance of the arithmetic, on the scale ``max(‖x_k − x*‖², ‖x_{k+1} − x*‖²)`` of the two
        recorded distances plus that of the predicted change.
    rounding
        Absolute allowance per step (one number or one per step) for the rounding of the parameters,
        losses and gradients that the run stored in a lower precision.
    aligned
        Whether D1 holds for the frozen block: a bool, the word of its verdict, or ``None`` (assumed).

    Returns
    -------
    Verdict
        At the step with the least room: ``lhs`` the recorded change, ``rhs`` the predicted one;
        ``details``: ``worst_step``, ``first_failure`` (``None`` when every step agrees),
        ``n_violations``, ``max_relative_error`` ``max_k |recorded − predicted|/|predicted|``.
    """
    d2 = array("distances_sq", distances_sq, nonneg=True, min_len=2)
    loss = array("losses", losses)
    g2 = array("grad_norms_sq", grad_norms_sq, nonneg=True)
    eta = array("step_sizes", step_sizes, nonneg=True)
    same_length(losses=loss, grad_norms_sq=g2, step_sizes=eta)
    if d2.shape[0] != loss.shape[0] + 1:
        raise ValueError(f"distances_sq needs one more entry than the steps: {d2.shape[0]} for {loss.shape[0]}")
    recorded = np.diff(d2)
    if target_loss is None:
        if (loss < 0).any():
            raise ValueError("losses must be non-negative for the squared loss")
        predicted = -4 * eta * loss + eta**2 * g2
    else:
        predicted = -2 * eta * (loss - real("target_loss", target_loss)) + eta**2 * g2
    rtol = nonneg("rtol", rtol)
    allowance = np.broadcast_to(np.asarray(rounding, dtype=np.float64), predicted.shape)
    if not np.isfinite(allowance).all() or (allowance < 0).any():
        raise ValueError("rounding must be finite and non-negative")
    tol = rtol * (np.maximum(d2[:-1], d2[1:]) + np.abs(predicted)) + allowance
    room = -np.abs(recorded - predicted) if target_loss is None else predicted - recorded
    bad = np.flatnonzero(room < -tol)
    k = int(np.argmin(room + tol))
    scale = np.maximum(np.abs(predicted), np.finfo(np.float64).tiny)
    details = {"worst_step": k, "first_failure": int(bad[0]) if bad.size else None, "n_violations": int(bad.size),
               "max_relative_error": float(np.max(np.abs(recorded - predicted) / scale)), "steps": int(loss.shape[0])}
    exact = target_loss is None
    return judge("APP.gd-identity", "GD one-step distance identity" if exact else "GD one-step distance inequality",
                 float(recorded[k]), float(predicted[k]), float(tol[k]), details, "Δ‖x−x*‖²",
                 "−4ηL+η²‖∇‖²" if exact else "−2η(L−L(Q))+η²‖∇‖²", margin=float(room[k]),
                 relation="=" if exact else "≤", premises=[frozen_d1_premise(aligned)])


def gd_telescoping_bound(losses: ArrayLike, grad_norms_sq: ArrayLike, step_size: float, omega_tau_sq: float,
                         nu_tau_sq: float, final_distance_sq: float, target_loss: float | None = None,
                         rtol: float = 1e-6, aligned: bool | None = None) -> Verdict:
    r"""(APP, discrete) The summed identity, with the recorded final distance, and the average-loss bound it gives.

    Squared loss: ``Σ_{k<K} η(4L_k − η‖∇_{ω,u}L_k‖²) = ‖x_0 − x*‖² − ‖x_K − x*‖²`` with ``‖x_0 − x*‖² =
    ‖ω_τ‖² + ‖ν‖²`` (``u_τ = 0``). Convex loss: ``Σ_{k<K} η(2(L_k − L(Q)) − η‖∇_{ω,u}L_k‖²) ≤ ‖x_0 − x*‖² −
    ‖x_K − x*‖²``. If every step has ``η‖∇_{ω,u}L_k‖² ≤ cγ(L_k − L(Q))`` (``c = 4``, resp. 2) with
    ``γ < 1``, then ``min_{k<K} (L_k − L(Q)) ≤ (1/K)Σ (L_k − L(Q)) ≤ (‖ω_τ‖² + ‖ν‖²)/(c(1−γ)ηK)``, the discrete
    form of ``t − τ = ηK`` (``theory/application.md``). Unlike the bound ``Σ … ≤ ‖ω_τ‖² + ‖ν‖²`` alone,
    which a run can hardly violate, the identity with the recorded ``‖x_K − x*‖²`` fails when the steps
    were not the gradient steps the theorem is about.

    Parameters
    ----------
    losses
        ``L_0, …, L_{K−1}`` at the iterates the steps were taken from.
    grad_norms_sq
        ``‖∇_{ω,u} L_k‖²`` at the same iterates.
    step_size
        ``η > 0``.
    omega_tau_sq, nu_tau_sq
        ``‖ω_τ‖²`` and ``‖ν‖²``.
    final_distance_sq
        The recorded ``‖x_K − x*‖²``.
    target_loss
        ``L(Q)`` for the convex form; ``None`` for the squared loss.
    rtol
        Relative tolerance on the scale ``‖ω_τ‖² + ‖ν‖²``.
    aligned
        Whether D1 holds for the frozen block: a bool, the word of its verdict, or ``None`` (assumed).

    Returns
    -------
    Verdict
        ``lhs`` = the sum, ``rhs = ‖ω_τ‖² + ‖ν‖² − ‖x_K − x*‖²``; ``details``: ``gamma``, ``average_loss``,
        ``average_loss_bound`` (on ``L − L(Q)``; ``inf`` when ``γ ≥ 1``), ``min_loss``, ``steps``.
    """
    loss = array("losses", losses)
    g2 = array("grad_norms_sq", grad_norms_sq, nonneg=True)
    same_length(losses=loss, grad_norms_sq=g2)
    eta = nonneg("step_size", step_size)
    if eta == 0:
        raise ValueError("step_size must be positive")
    b2 = nonneg("omega_tau_sq", omega_tau_sq) + nonneg("nu_tau_sq", nu_tau_sq)
    dk2 = nonneg("final_distance_sq", final_distance_sq)
    exact = target_loss is None
    excess = loss if exact else loss - real("target_loss", target_loss)
    if exact and (loss < 0).any():
        raise ValueError("losses must be non-negative for the squared loss")
    c = 4.0 if exact else 2.0
    lhs = float(np.sum(eta * (c * excess - eta * g2)))
    rhs = b2 - dk2
    gamma = max(ratio(eta * gk, c * lk) for gk, lk in zip(g2, excess, strict=True))
    steps = int(loss.shape[0])
    avg_bound = b2 / (c * (1 - gamma) * eta * steps) if gamma < 1 else math.inf
    details = {"gamma": gamma, "average_loss": float(excess.mean()), "average_loss_bound": avg_bound,
               "min_loss": float(loss.min()), "steps": steps}
    tolerance = rel_tol(rtol, b2, lhs)
    margin = -abs(rhs - lhs) if exact else rhs - lhs
    return judge("APP.gd-sum", "GD telescoping identity" if exact else "GD telescoping inequality", lhs, rhs,
                 tolerance, details, "Σ η(cL−η‖∇‖²)", "‖ω_τ‖²+‖ν‖²−‖x_K−x*‖²", margin=margin,
                 relation="=" if exact else "≤", premises=[frozen_d1_premise(aligned)])
