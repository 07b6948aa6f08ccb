"""(I2)–(I4): the loss decomposition, gradient domination, the gradient-flow rate and convex losses (results.md)."""

from __future__ import annotations

import math

import numpy as np

from ._arguments import ArrayLike, array, count, flag, nonneg, real, same_length
from .verdict import TINY, Verdict, leq, ratio, rel_tol, vacuous, worst_point

__all__ = [
    "alignment_lower_bound",
    "best_convex_bound",
    "convergence_rate_check",
    "convex_loss_bound",
    "excess_gradient_domination",
    "gradient_domination",
    "gradient_flow_rate",
    "loss_decomposition",
    "necessity_at_global_minimum",
]


def loss_decomposition(loss: float, projected_residual_sq: float, unexplained_target_sq: float, n: int,
                       rtol: float = 1e-8) -> Verdict:
    r"""(I2) Loss decomposition: ``L = (1/2n)‖P r‖² + (1/2n)‖(I − P) Y‖²`` (THEORY §4).

    Exact under A1 (in fact under the data-level condition ``f_X ∈ Col J`` alone): ``(I−P) r =
    −(I−P) Y`` and Pythagoras. A gap between the two sides measures a violation of ``f_X ∈ Col J``:
    ``gap = (1/2n)(‖(I−P)(f_X−Y)‖² − ‖(I−P)Y‖²)``.

    Parameters
    ----------
    loss
        ``L = (1/2n)‖f_X − Y‖²``.
    projected_residual_sq
        ``‖P r‖²``.
    unexplained_target_sq
        ``‖(I − P) Y‖²``.
    n
        Number of samples (``≥ 1``).
    rtol
        Relative tolerance on the gap.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs`` = the decomposition, ``margin = −|gap|``, ``tolerance = rtol·max(L, tiny)``;
        holds iff ``|gap| ≤ tolerance``. ``details``: ``gap``, ``relative_gap``, ``fitted_part``
        ``(1/2n)‖Pr‖²``, ``floor`` ``(1/2n)‖(I−P)Y‖²``.
    """
    loss = nonneg("loss", loss)
    p = nonneg("projected_residual_sq", projected_residual_sq)
    u = nonneg("unexplained_target_sq", unexplained_target_sq)
    n = count("n", n, 1)
    rhs = (p + u) / (2 * n)
    gap = loss - rhs
    tolerance = rel_tol(rtol, loss)
    details = {"gap": gap, "relative_gap": gap / max(loss, TINY), "fitted_part": p / (2 * n),
               "floor": u / (2 * n), "n": n}
    return Verdict("I2", "loss decomposition", abs(gap) <= tolerance, loss, rhs, 0.0 - abs(gap), tolerance,
                   details, "L", "‖Pr‖²/2n+‖(I−P)Y‖²/2n", "=")


def alignment_lower_bound(loss: float, unexplained_target_sq: float, n: int, rtol: float = 1e-8) -> Verdict:
    r"""(I2, consequence) The alignment residual lower-bounds the loss: ``L ≥ (1/2n)‖(I − P) Y‖²``.

    THEORY §4. Equivalently ``a(θ) ≤ sqrt(2nL)/‖Y‖`` for the alignment residual ``a``.

    Parameters
    ----------
    loss
        ``L(θ)``.
    unexplained_target_sq
        ``‖(I − P_{J(θ)}) Y‖²``.
    n
        Number of samples.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = (1/2n)‖(I−P)Y‖²``, ``rhs = L``, ``margin = L − lhs``; ``details['floor_fraction']`` is
        ``lhs / L`` (the share of the loss no training of the coefficients can remove at this ``J``).
    """
    loss = nonneg("loss", loss)
    u = nonneg("unexplained_target_sq", unexplained_target_sq)
    n = count("n", n, 1)
    floor = u / (2 * n)
    details = {"floor_fraction": ratio(floor, loss), "n": n}
    return leq("I2.lower", "alignment lower bound", floor, loss, rel_tol(rtol, loss, floor), details,
                "‖(I−P)Y‖²/2n", "L")


def necessity_at_global_minimum(loss: float, alignment_residual: float, loss_tol: float = 1e-10,
                                residual_tol: float = 1e-6, *, n: int | None = None,
                                target_norm_sq: float | None = None) -> Verdict:
    r"""(I2, consequence) Necessity of D1 for global optimality: ``L(θ*) = 0 ⇒ Y ∈ Col J(θ*)``.

    THEORY §4. Numerically: if ``L ≤ loss_tol`` then the alignment residual ``a = ‖(I−P)Y‖/‖Y‖`` must be
    ``≤ residual_tol``. When ``L > loss_tol`` the premise fails and the verdict is vacuous. The
    quantitative form ``a ≤ sqrt(2nL)/‖Y‖`` (from I2) is reported in ``details`` when ``n`` and
    ``target_norm_sq = ‖Y‖²`` are given.

    Parameters
    ----------
    loss
        ``L(θ)``.
    alignment_residual
        ``a(θ) = ‖(I − P) Y‖ / ‖Y‖``.
    loss_tol
        ``L ≤ loss_tol`` counts as a global minimum.
    residual_tol
        ``a ≤ residual_tol`` counts as aligned.
    n, target_norm_sq
        Optional, for the quantitative bound ``a ≤ sqrt(2nL/‖Y‖²)``.

    Returns
    -------
    Verdict
        ``lhs = a``, ``rhs = residual_tol``, ``margin = residual_tol − a`` (``+inf`` when vacuous).
    """
    loss = nonneg("loss", loss)
    a = nonneg("alignment_residual", alignment_residual)
    loss_tol = nonneg("loss_tol", loss_tol)
    residual_tol = nonneg("residual_tol", residual_tol)
    details: dict = {"loss": loss, "loss_tol": loss_tol}
    if (n is None) != (target_norm_sq is None):
        raise ValueError("give both n and target_norm_sq, or neither")
    if n is not None:
        n = count("n", n, 1)
        y2 = nonneg("target_norm_sq", target_norm_sq)
        if y2 == 0:
            raise ValueError("target_norm_sq must be positive: the residual a = ‖(I−P)Y‖/‖Y‖ needs Y ≠ 0")
        details["residual_upper_bound"] = math.sqrt(2 * n * loss / y2)
    if loss > loss_tol:
        return vacuous("I2.necessity", "necessity at a global minimum", a, residual_tol, details, "a",
                        "tol", f"L = {loss:.3g} > loss_tol = {loss_tol:.3g}: not a global minimum, "
                        "nothing is asserted")
    details["asserted"] = True
    return leq("I2.necessity", "necessity at a global minimum", a, residual_tol, 0.0, details, "a", "tol")


# -- (I3) gradient domination ------------------------------------------------------------------


def gradient_domination(loss: float, grad_norm: float, certificate: float, aligned: bool,
                        rtol: float = 1e-6) -> Verdict:
    r"""(I3) Gradient domination when aligned: ``L ≤ ½ ‖∇L‖ · B`` with ``B = ‖J⁺ r‖`` (THEORY §4).

    Under A1 and ``Y ∈ Col J``: ``2L = ⟨∇L, J⁺ r⟩ ≤ ‖∇L‖ ‖J⁺ r‖``. Asserted only when ``aligned``;
    otherwise vacuous. Equality holds iff ``r`` is an eigenvector of ``K = JJᵀ`` (see
    ``theory/results.md``). The *bound ratio* ``L / (½‖∇L‖B)`` is in ``details``; above 1 on an
    aligned CMS model it is a bug.

    Parameters
    ----------
    loss
        ``L(θ)`` (squared loss).
    grad_norm
        ``‖∇L(θ)‖``.
    certificate
        ``B(θ) = ‖J⁺ r‖ = sqrt(rᵀ K⁺ r)``.
    aligned
        Whether D1 (``Y ∈ Col J(θ)``) holds at ``θ``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs = ½‖∇L‖B``, ``margin = rhs − lhs``.
    """
    loss = nonneg("loss", loss)
    g = nonneg("grad_norm", grad_norm)
    b = nonneg("certificate", certificate)
    aligned = flag("aligned", aligned)
    rhs = 0.5 * g * b
    details = {"bound_ratio": ratio(loss, rhs)}
    if not aligned:
        return vacuous("I3", "gradient domination", loss, rhs, details, "L", "½‖∇L‖B",
                        "D1 does not hold at this point: nothing is asserted")
    details["asserted"] = True
    return leq("I3", "gradient domination", loss, rhs, rel_tol(rtol, loss, rhs), details, "L", "½‖∇L‖B")


def excess_gradient_domination(projected_residual_sq: float, n: int, grad_norm: float, certificate: float,
                               rtol: float = 1e-6) -> Verdict:
    r"""(I3, general form) ``(1/2n)‖P r‖² ≤ ½ ‖∇L‖ · ‖J⁺ r‖``, always (no assumption).

    ``(1/n)‖P r‖² = ⟨(1/n)Jᵀr, J⁺r⟩ ≤ ‖∇L‖ ‖J⁺r‖`` by Cauchy–Schwarz. Under the data-level
    condition the left side is ``L − (1/2n)‖(I−P)Y‖²`` (I2), so the excess loss above the alignment
    floor is gradient-dominated even where D1 fails (``theory/results.md``).

    Parameters
    ----------
    projected_residual_sq
        ``‖P r‖²``.
    n
        Number of samples.
    grad_norm
        ``‖∇L‖``.
    certificate
        ``‖J⁺ r‖``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = (1/2n)‖Pr‖²``, ``rhs = ½‖∇L‖‖J⁺r‖``, ``margin = rhs − lhs``.
    """
    p = nonneg("projected_residual_sq", projected_residual_sq)
    n = count("n", n, 1)
    g = nonneg("grad_norm", grad_norm)
    b = nonneg("certificate", certificate)
    lhs, rhs = p / (2 * n), 0.5 * g * b
    return leq("I3.general", "excess-loss gradient domination", lhs, rhs, rel_tol(rtol, lhs, rhs),
                {"bound_ratio": ratio(lhs, rhs)}, "‖Pr‖²/2n", "½‖∇L‖‖J⁺r‖")


# -- (I4) convex losses --------------------------------------------------------------------------


def convex_loss_bound(loss: float, target_loss: float, grad_norm: float, distance: float, aligned: bool,
                      rtol: float = 1e-6) -> Verdict:
    r"""(I4) Convex losses: ``L(θ) − L(Q) ≤ ‖∇L(θ)‖ · ‖R(θ) − ν‖`` when ``Q ∈ Col J`` (THEORY §4).

    Convexity of ``ℓ`` gives ``L(θ) − L(Q) ≤ ⟨g, f_X − Q⟩ = ⟨∇L, R − ν⟩`` for every ``ν`` with
    ``Jν = Q``; the smallest distance over such ``ν`` is ``‖J⁺(f_X − Q)‖``.

    Parameters
    ----------
    loss
        ``L(θ)`` (any convex loss; may be negative for general ``ℓ``).
    target_loss
        ``L(Q) = (1/n) Σ ℓ(q_i, y_i)``.
    grad_norm
        ``‖∇L(θ)‖``.
    distance
        ``‖R(θ) − ν‖`` for some ``ν`` with ``Jν = Q`` (best: ``‖J⁺(f_X − Q)‖``).
    aligned
        Whether ``Q ∈ Col J(θ)``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L − L(Q)``, ``rhs = ‖∇L‖·‖R − ν‖``, ``margin = rhs − lhs`` (vacuous when not aligned).
    """
    loss = real("loss", loss)
    lq = real("target_loss", target_loss)
    g = nonneg("grad_norm", grad_norm)
    dist = nonneg("distance", distance)
    aligned = flag("aligned", aligned)
    lhs, rhs = loss - lq, g * dist
    details = {"bound_ratio": ratio(lhs, rhs), "loss": loss, "target_loss": lq}
    if not aligned:
        return vacuous("I4", "convex-loss bound", lhs, rhs, details, "L−L(Q)", "‖∇L‖‖R−ν‖",
                        "Q ∉ Col J at this point: nothing is asserted")
    details["asserted"] = True
    return leq("I4", "convex-loss bound", lhs, rhs, rel_tol(rtol, lhs, rhs), details, "L−L(Q)", "‖∇L‖‖R−ν‖")


def best_convex_bound(loss: float, grad_norm: float, scales: ArrayLike, target_losses: ArrayLike,
                      distances: ArrayLike, aligned: bool, rtol: float = 1e-6) -> Verdict:
    r"""(I4) The best bound ``L(θ) ≤ min_c [L(cQ₀) + ‖∇L‖ · ‖R − ν_c‖]`` over a grid of scales ``c``.

    THEORY §4: a larger ``c`` lowers ``L(cQ₀)`` and raises ``‖ν_c‖ = c‖ν₁‖``; membership of
    ``cQ₀`` in ``Col J`` does not depend on ``c > 0``, so one ``aligned`` flag serves the grid.

    Parameters
    ----------
    loss
        ``L(θ)``.
    grad_norm
        ``‖∇L(θ)‖``.
    scales
        The grid ``c``.
    target_losses
        ``L(cQ₀)`` per scale.
    distances
        ``‖R − ν_c‖`` per scale.
    aligned
        Whether ``Q₀ ∈ Col J(θ)``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs`` = the smallest bound; ``details``: ``best_scale``, ``best_index``,
        ``bounds`` (per scale).
    """
    loss = real("loss", loss)
    g = nonneg("grad_norm", grad_norm)
    c = array("scales", scales)
    lq = array("target_losses", target_losses)
    dist = array("distances", distances, nonneg=True)
    same_length(scales=c, target_losses=lq, distances=dist)
    if (c <= 0).any():
        raise ValueError("scales must be positive")
    aligned = flag("aligned", aligned)
    bounds = lq + g * dist
    k = int(np.argmin(bounds))
    rhs = float(bounds[k])
    details = {"best_scale": float(c[k]), "best_index": k, "bounds": bounds, "scales": c,
               "bound_ratio": ratio(loss, rhs)}
    if not aligned:
        return vacuous("I4.best", "best convex-loss bound", loss, rhs, details, "L", "min_c bound",
                        "Q₀ ∉ Col J at this point: nothing is asserted")
    details["asserted"] = True
    return leq("I4.best", "best convex-loss bound", loss, rhs, rel_tol(rtol, loss, rhs), details, "L",
                "min_c bound")


# -- (I3) gradient-flow rate -------------------------------------------------------------------


def gradient_flow_rate(loss_T: float, certificate_bar: float, elapsed: float) -> float:
    r"""Return the gradient-flow bound ``L(T + s) ≤ L_T / (1 + 4 L_T s / B̄²)`` (THEORY §4, I3).

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
                           rtol: float = 1e-6) -> Verdict:
    r"""(I3) A measured trajectory against ``L(t) ≤ L(t₀)/(1 + 4 L(t₀)(t − t₀)/B̄²)`` (THEORY §4).

    Parameters
    ----------
    times
        Non-decreasing times ``t₀ ≤ t₁ ≤ …`` (for gradient descent: ``η`` × step index).
    losses
        ``L(θ_{t_k})``.
    certificate_bar
        ``B̄``: a float, or the measured ``B(θ_{t_k})`` along the trajectory (their maximum is used;
        the theorem needs a bound over the whole interval, so sample densely).
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
    bounds = np.array([gradient_flow_rate(loss[0], b, s) for s in t - t[0]])
    tol = np.array([rel_tol(rtol, bk, lk) for bk, lk in zip(bounds, loss, strict=True)])
    ratios = np.array([ratio(lk, bk) for bk, lk in zip(bounds, loss, strict=True)])
    details = {"bounds": bounds, "max_ratio": float(ratios.max()), "certificate_bar": b,
               "monotone": bool((np.diff(loss) <= tol[1:]).all())}
    return worst_point("I3.rate", "gradient-flow rate", loss, bounds, tol, details, "L(t)",
                        "L_T/(1+4L_T(t−T)/B̄²)")
