"""§6: the augmented model that keeps D1 by construction, in continuous and discrete time (application.md)."""

from __future__ import annotations

import math

import numpy as np

from ._arguments import ArrayLike, array, flag, nonneg, real, same_length
from .verdict import Verdict, leq, ratio, rel_tol

__all__ = ["application_bound", "distance_non_increasing", "gd_step_distance_condition", "gd_telescoping_bound"]


def application_bound(loss: float, omega_tau_sq: float, nu_tau_sq: float, elapsed: float,
                      convex: bool = False, target_loss: float = 0.0, rtol: float = 1e-6) -> Verdict:
    r"""(§6) The augmented model's rate: ``L(t) ≤ (‖ω_τ‖² + ‖ν_τ‖²) / (4(t − τ))``.

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

    Returns
    -------
    Verdict
        ``lhs = L`` (``L − L(Q)`` when convex), ``rhs`` = the bound, ``margin = rhs − lhs``.
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
    return leq("APP", "augmented-model rate", lhs, rhs, tolerance, details, "L−L(Q)" if convex else "L",
                label)


def distance_non_increasing(distances: ArrayLike, atol_rel: float = 1e-6) -> Verdict:
    r"""(§6) The recorded distance ``‖(ω_k, u_k − ν)‖`` never increases.

    Gradient flow (squared loss): ``½ d/dt ‖(ω, u − ν)‖² = −2L ≤ 0``. Gradient descent: see
    :func:`gd_step_distance_condition`. Convex losses: non-increasing only while ``L ≥ L(Q)``.

    Parameters
    ----------
    distances
        The sequence ``d_0, d_1, …`` (at least two entries).
    atol_rel
        Tolerance on each increase, relative to ``d_0``: ``d_{k+1} − d_k ≤ atol_rel · d_0``.

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
    return leq("APP.distance", "distance non-increasing", float(inc[k]), 0.0, tolerance, details,
                "max Δd", "0")


def gd_step_distance_condition(step_size: float, grad_norm_sq: float, loss: float,
                               target_loss: float | None = None, rtol: float = 1e-6) -> Verdict:
    r"""(§6, discrete) One gradient-descent step does not increase ``‖(ω, u − ν)‖`` iff ``η‖∇_{ω,u}L‖² ≤ 4L``.

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
    return leq("APP.gd-step", "GD step keeps the distance", lhs, rhs, rel_tol(rtol, lhs, rhs), details,
                "η‖∇_{ω,u}L‖²", "4L" if exact else "2(L−L(Q))")


def gd_telescoping_bound(losses: ArrayLike, grad_norms_sq: ArrayLike, step_size: float, omega_tau_sq: float,
                         nu_tau_sq: float, rtol: float = 1e-6) -> Verdict:
    r"""(§6, discrete) ``Σ_{k<K} η(4L_k − η‖∇_{ω,u}L_k‖²) ≤ ‖ω_τ‖² + ‖ν‖²`` for any step size.

    Summing the exact one-step identity: the left side equals ``‖x_0 − x*‖² − ‖x_K − x*‖²``. If every
    step has ``η‖∇_{ω,u}L_k‖² ≤ 4γL_k`` with ``γ < 1``, then ``min_{k<K} L_k ≤ (1/K)Σ L_k ≤
    (‖ω_τ‖² + ‖ν‖²)/(4(1−γ)ηK)`` — the discrete form of ``t − τ = ηK`` (``theory/application.md``).

    Parameters
    ----------
    losses
        ``L_0, …, L_{K−1}`` at the iterates the steps were taken from (squared loss).
    grad_norms_sq
        ``‖∇_{ω,u} L_k‖²`` at the same iterates.
    step_size
        ``η > 0``.
    omega_tau_sq, nu_tau_sq
        ``‖ω_τ‖²`` and ``‖ν‖²`` (so ``‖x_0 − x*‖² = ‖ω_τ‖² + ‖ν‖²`` since ``u_τ = 0``).
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs`` = the sum, ``rhs = ‖ω_τ‖² + ‖ν‖²``, ``margin = rhs − lhs`` (= ``‖x_K − x*‖²`` exactly);
        ``details``: ``gamma`` ``max_k η‖∇_k‖²/(4L_k)``, ``average_loss``, ``average_loss_bound``
        (``inf`` when ``γ ≥ 1``), ``steps``.
    """
    loss = array("losses", losses, nonneg=True)
    g2 = array("grad_norms_sq", grad_norms_sq, nonneg=True)
    same_length(losses=loss, grad_norms_sq=g2)
    eta = nonneg("step_size", step_size)
    if eta == 0:
        raise ValueError("step_size must be positive")
    b2 = nonneg("omega_tau_sq", omega_tau_sq) + nonneg("nu_tau_sq", nu_tau_sq)
    lhs = float(np.sum(eta * (4 * loss - eta * g2)))
    gamma = max(ratio(eta * gk, 4 * lk) for gk, lk in zip(g2, loss, strict=True))
    steps = int(loss.shape[0])
    avg_bound = b2 / (4 * (1 - gamma) * eta * steps) if gamma < 1 else math.inf
    details = {"gamma": gamma, "average_loss": float(loss.mean()), "average_loss_bound": avg_bound,
               "min_loss": float(loss.min()), "steps": steps}
    return leq("APP.gd-sum", "GD telescoping bound", lhs, b2, rel_tol(rtol, lhs, b2), details,
                "Σ η(4L−η‖∇‖²)", "‖ω_τ‖²+‖ν‖²")
