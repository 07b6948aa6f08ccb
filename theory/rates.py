"""The rates D1 gives to training: gradient flow and gradient descent on the squared loss (results.md).

Both follow from (I3), ``‖∇L‖² ≥ 4L²/B̄²`` while D1 holds with certificate at most ``B̄``
(``theory/results.md#gradient-flow-rate``, ``theory/results.md#gradient-descent-rate``); D1 at every record is
their premise, and a rate whose premise fails is *not applicable*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._arguments import ArrayLike, array, nonneg, same_length
from .results import d1_premise, data_level_premise
from .verdict import TINY, Premise, Verdict, ratio, rel_tol, worst_point

__all__ = ["convergence_rate_check", "gradient_descent_rate", "gradient_flow_rate"]


def gradient_flow_rate(loss_T: float, certificate_bar: float, elapsed: float) -> float:
    r"""Return the gradient-flow bound ``L(T + s) ≤ L_T / (1 + 4 L_T s / B̄²)`` (theory/results.md#gradient-flow-rate).

    Valid when D1 holds on ``[T, T+s]`` with ``B(θ_t) ≤ B̄``: then ``dL/dt = −‖∇L‖² ≤ −4L²/B̄²``.
    It is at most ``B̄²/(4s)``.

    Parameters
    ----------
    loss_T
        ``L(θ_T) ≥ 0``.
    certificate_bar
        ``B̄ ≥ sup_{[T, T+s]} B(θ_t)``. ``B̄ = 0`` is only consistent with ``L_T = 0``.
    elapsed
        ``s = t − T ≥ 0``.

    Returns
    -------
    float
        The bound on ``L(T + s)``.
    """
    lt = nonneg("loss_T", loss_T)
    b = nonneg("certificate_bar", certificate_bar)
    s = nonneg("elapsed", elapsed)
    if lt == 0:
        return 0.0
    if b == 0:
        raise ValueError("certificate_bar = 0 with loss_T > 0 is impossible under D1 (B = 0 forces r = 0)")
    return lt / (1 + 4 * lt * s / b**2)


def convergence_rate_check(times: ArrayLike, losses: ArrayLike, certificate_bar: float | ArrayLike,
                           aligned: bool | str | ArrayLike | None = None, rtol: float = 1e-6) -> Verdict:
    r"""(I3) A measured gradient-flow trajectory against ``L(t) ≤ L(t₀)/(1 + 4 L(t₀)(t − t₀)/B̄²)``.

    The rate needs D1 and ``f_X ∈ Col J`` at *every* time of the interval and ``B̄ ≥ sup B(θ_t)``
    (``theory/results.md``); sampled records can only approximate both, which ``details`` records.

    Parameters
    ----------
    times
        Non-decreasing times ``t₀ ≤ t₁ ≤ …`` (for gradient descent: ``η`` × step index).
    losses
        ``L(θ_{t_k})``.
    certificate_bar
        ``B̄``: a float, or the measured ``B(θ_{t_k})`` along the trajectory (their maximum is used;
        the theorem needs a bound over the whole interval, so sample densely).
    aligned
        D1 at each record (or one flag for all, or the word of a verdict over all of them: *not established*
        leaves it undecided): when it fails at any record the rate is not applicable.
    rtol
        Relative tolerance per point.

    Returns
    -------
    Verdict
        Reported at the point with the least room: ``lhs = L(t_k)``, ``rhs`` = the bound there,
        ``margin = rhs − lhs``. ``details``: ``bounds``, ``max_ratio`` ``max_k L_k/bound_k``,
        ``worst_index``, ``monotone`` (whether the measured loss is non-increasing within tolerance),
        ``certificate_bar``.
    """
    t = array("times", times)
    loss = array("losses", losses, nonneg=True)
    same_length(times=t, losses=loss)
    if (np.diff(t) < 0).any():
        raise ValueError("times must be non-decreasing")
    b_arr = array("certificate_bar", np.atleast_1d(np.asarray(certificate_bar, dtype=np.float64)),
                  nonneg=True)
    b = float(b_arr.max())
    d1 = _over_records(aligned)
    bounds = np.array([gradient_flow_rate(loss[0], b, s) for s in t - t[0]])
    tol = np.array([rel_tol(rtol, bk, lk) for bk, lk in zip(bounds, loss, strict=True)])
    ratios = np.array([ratio(lk, bk) for bk, lk in zip(bounds, loss, strict=True)])
    details = {"bounds": bounds, "max_ratio": float(ratios.max()), "certificate_bar": b,
               "monotone": bool((np.diff(loss) <= tol[1:]).all())}
    return worst_point("I3.rate", "gradient-flow rate", loss, bounds, tol, details, "L(t)",
                       "L_T/(1+4L_T(t−T)/B̄²)", premises=[d1_premise(d1, "at every record")])


def gradient_descent_rate(step_sizes: float | ArrayLike, losses: ArrayLike, grad_norms_sq: ArrayLike,
                          certificate_bar: float | ArrayLike, aligned: bool | str | ArrayLike | None = None,
                          cms: bool | str | None = None, rtol: float = 1e-6, recipe: Sequence[Premise] = ()) -> Verdict:
    r"""(I3) Gradient-descent rate: ``1/L_k ≥ 1/L_0 + 4τ_k/B̄² − ρ_k`` at every step of a measured run.

    ``τ_k = Σ_{j<k, δ_j>0} δ_j/‖∇L_j‖²`` is the effective time of the steps that lower the loss and
    ``ρ_k = Σ_{j<k, δ_j<0} (1/L_j − 1/L_{j+1})`` the rise of those that raise it (``δ_j = L_j − L_{j+1}``;
    ``theory/results.md``). Without rises the bound is ``L_k ≤ L_0/(1 + 4L_0τ_k/B̄²)``, and ``τ_k ≥ cΣ_{j<k}η_j``
    when every step lowers the loss by at least ``cη_j‖∇L_j‖²``. The statement needs D1 and the data-level
    condition at every step, with ``B ≤ B̄``, and no particular update rule: ``L_k`` and ``‖∇L(θ_k)‖²`` must be the
    squared loss and its gradient on the whole training set at the iterates (``theory/recipe.md``).

    Parameters
    ----------
    step_sizes
        ``η_k`` of the ``K`` steps (one number for a constant step).
    losses
        ``L_0, …, L_K``.
    grad_norms_sq
        ``‖∇L(θ_k)‖²`` for ``k < K``.
    certificate_bar
        ``B̄``: a float, or the measured certificates ``B(θ)`` along the run (their maximum is used).
    aligned
        D1 at each measured point (or one flag, or a verdict word over all): when it fails anywhere the bound is
        not applicable; *not established* leaves it undecided.
    cms
        Whether ``f_X ∈ Col J`` was measured to hold: a bool or a verdict word (``None``: assumed).
    rtol
        Relative tolerance per point.
    recipe
        Premises on the training recipe, ``theory.gradient_descent_premises("rate", ...)``; one not met makes the
        bound not applicable.

    Returns
    -------
    Verdict
        At the step with the least room: ``lhs = L_k``, ``rhs`` = the bound there (``inf`` where
        ``1/L_0 + 4τ_k/B̄² − ρ_k ≤ 0``). ``details``: ``bounds`` (every step), ``effective_time`` ``τ_k``, ``rise``
        ``ρ_k``, ``rising_steps``, ``largest_rise`` (``max_k (L_{k+1} − L_k)/L_k``), ``c`` ``min_k δ_k/(η_k g_k)``,
        ``c_bounds`` (``L_0/(1 + 4cL_0Σ_{j<k}η_j/B̄²)``, ``None`` unless ``c > 0``), ``certificate_bar``,
        ``max_ratio``.
    """
    loss = array("losses", losses, nonneg=True, min_len=2)
    g = array("grad_norms_sq", grad_norms_sq, nonneg=True)
    eta = np.broadcast_to(array("step_sizes", np.atleast_1d(np.asarray(step_sizes, dtype=np.float64)),
                                nonneg=True), g.shape)
    if g.shape[0] != loss.shape[0] - 1:
        raise ValueError(f"grad_norms_sq needs one value per step ({loss.shape[0] - 1}), got {g.shape[0]}")
    b = float(array("certificate_bar", np.atleast_1d(np.asarray(certificate_bar, dtype=np.float64)),
                    nonneg=True).max())
    rtol = nonneg("rtol", rtol)
    if b == 0 and loss[0] > 0:
        raise ValueError("certificate_bar = 0 with a positive loss is impossible under D1 (B = 0 forces r = 0)")
    drop = loss[:-1] - loss[1:]
    lowers, rises = (drop > 0) & (g > 0), drop < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / loss
        tau = np.concatenate([[0.0], np.cumsum(np.where(lowers, drop / np.where(g > 0, g, 1.0), 0.0))])
        rho = np.concatenate([[0.0], np.cumsum(np.where(rises, inverse[:-1] - inverse[1:], 0.0))])
        bound_inverse = inverse[0] + (4 * tau / b**2 if b > 0 else 0.0) - rho
        bounds = np.where(loss[0] == 0, 0.0, np.where(bound_inverse > 0, 1.0 / bound_inverse, math.inf))
    steps = (g > 0) & (eta > 0)
    c = float(np.min(drop[steps] / (eta[steps] * g[steps]))) if steps.any() else math.nan
    c_bounds = None
    if c > 0:
        c_bounds = loss[0] / (1 + 4 * c * loss[0] * np.concatenate([[0.0], np.cumsum(eta)]) / b**2)
    details = {"bounds": bounds, "effective_time": tau, "rise": rho, "rising_steps": int(rises.sum()),
               "largest_rise": float(np.max(-drop / np.maximum(loss[:-1], TINY))), "c": c, "c_bounds": c_bounds,
               "certificate_bar": b,
               "max_ratio": float(max(ratio(lk, bk) for lk, bk in zip(loss, bounds, strict=True)))}
    tol = np.array([rel_tol(rtol, lk, bk if math.isfinite(bk) else 0.0) for bk, lk in zip(bounds, loss, strict=True)])
    d1 = _over_records(aligned)
    return worst_point("I3.gd", "gradient-descent rate", loss, bounds, tol, details, "L_k",
                       "L_0/(1+4L_0τ_k/B̄²−L_0ρ_k)",
                       premises=[d1_premise(d1, "at every record"), data_level_premise(cms),
                                 Premise("B(θ_k) ≤ B̄ at every step", None, "B̄ is the largest measured B"),
                                 *recipe])


def _over_records(aligned: bool | str | ArrayLike | None) -> bool | str | None:
    """Return D1 over a trajectory: ``None`` (assumed), a verdict word for all records, or whether every flag holds."""
    if aligned is None or isinstance(aligned, str):
        return aligned
    return bool(np.all(np.asarray(aligned, dtype=bool)))
