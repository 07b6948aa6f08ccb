"""(I2)–(I4): the loss decomposition, gradient domination and convex losses (results.md); rates in :mod:`theory.rates`.

Every statement here needs the data-level form of A1, ``f_X ∈ Col J(θ)`` (``theory/results.md``), and
the bounds of (I3) and (I4) need D1, ``Q ∈ Col J(θ)``. Both are premises: pass what was measured
(``cms=``, ``aligned=``) and a bound whose premise fails is *not applicable*.
"""

from __future__ import annotations

import math

import numpy as np

from ._arguments import ArrayLike, array, count, nonneg, real, same_length
from .verdict import TINY, Premise, Verdict, judge, measured_premise, ratio, rel_tol

__all__ = [
    "alignment_lower_bound",
    "best_convex_bound",
    "convex_loss_bound",
    "d1_premise",
    "data_level_premise",
    "excess_gradient_domination",
    "gradient_domination",
    "loss_decomposition",
    "necessity_at_global_minimum",
]


def data_level_premise(cms: bool | str | None, note: str = "") -> Premise:
    """Return the premise ``f_X ∈ Col J(θ)`` (A1 on the training inputs).

    ``cms`` is what was measured: a bool, or the word of the verdict that decided it
    (:func:`~theory.alignment.data_level_condition`: *not established* makes the premise undecided);
    ``None``: assumed, not measured.
    """
    return measured_premise("f_X ∈ Col J (A1 on the data)", "cms", cms, note)


def d1_premise(aligned: bool | str | None, note: str = "") -> Premise:
    """Return the premise D1, ``Q ∈ Col J(θ)``: a bool, the word of the D1 verdict, or ``None`` (assumed)."""
    return measured_premise("D1: Q ∈ Col J", "aligned", aligned, note)


def loss_decomposition(loss: float, projected_residual_sq: float, unexplained_target_sq: float, n: int,
                       rtol: float = 1e-8, uncertainty: float = 0.0) -> Verdict:
    r"""(I2) Loss decomposition: ``L = (1/2n)‖P r‖² + (1/2n)‖(I − P) Y‖²`` (``theory/results.md``).

    Exact under the data-level condition ``f_X ∈ Col J``: ``(I−P) r = −(I−P) Y`` and Pythagoras. A gap
    between the two sides refutes ``f_X ∈ Col J``, hence A1: ``gap = (1/2n)(‖(I−P)(f_X−Y)‖² − ‖(I−P)Y‖²)``.

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
    uncertainty
        Gap (absolute, in loss units) that the measurement cannot tell from zero: a larger gap up to
        ``tolerance + uncertainty`` is *not established* rather than refuted.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs`` = the decomposition, ``margin = −|gap|``, ``tolerance = rtol·max(L, tiny)``;
        ``details``: ``gap``, ``relative_gap``, ``fitted_part`` ``(1/2n)‖Pr‖²``, ``floor`` ``(1/2n)‖(I−P)Y‖²``.
    """
    loss = nonneg("loss", loss)
    p = nonneg("projected_residual_sq", projected_residual_sq)
    u = nonneg("unexplained_target_sq", unexplained_target_sq)
    n = count("n", n, 1)
    rhs = (p + u) / (2 * n)
    gap = loss - rhs
    details = {"gap": gap, "relative_gap": gap / max(loss, TINY), "fitted_part": p / (2 * n),
               "floor": u / (2 * n), "n": n}
    return judge("I2", "loss decomposition", loss, rhs, rel_tol(rtol, loss), details, "L",
                 "‖Pr‖²/2n+‖(I−P)Y‖²/2n", margin=-abs(gap), relation="=", uncertainty=uncertainty)


def alignment_lower_bound(loss: float, unexplained_target_sq: float, n: int, rtol: float = 1e-8,
                          cms: bool | str | None = None) -> Verdict:
    r"""(I2, consequence) The alignment residual lower-bounds the loss: ``L ≥ (1/2n)‖(I − P) Y‖²``.

    Under ``f_X ∈ Col J``, ``L = (1/2n)‖Pr‖² + (1/2n)‖(I−P)Y‖²`` (I2), so no training of the coefficients
    at this ``J`` removes the floor; without it the bound can fail.

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
    cms
        Whether ``f_X ∈ Col J`` was measured to hold: a bool or the data-level verdict's word (*not
        established*: undecided, so a violation is not established); ``None``: assumed.

    Returns
    -------
    Verdict
        ``lhs = (1/2n)‖(I−P)Y‖²``, ``rhs = L``, ``margin = L − lhs``; ``details['floor_fraction']`` is
        ``lhs / L``.
    """
    loss = nonneg("loss", loss)
    u = nonneg("unexplained_target_sq", unexplained_target_sq)
    n = count("n", n, 1)
    floor = u / (2 * n)
    details = {"floor_fraction": ratio(floor, loss), "n": n}
    return judge("I2.lower", "alignment lower bound", floor, loss, rel_tol(rtol, loss, floor), details,
                 "‖(I−P)Y‖²/2n", "L", premises=[data_level_premise(cms)])


def necessity_at_global_minimum(loss: float, alignment_residual: float, n: int, target_norm_sq: float,
                                rtol: float = 1e-8, cms: bool | str | None = None, uncertainty: float = 0.0) -> Verdict:
    r"""(I2, necessity) D1 is necessary for a global minimum, quantitatively: ``a(θ) ≤ sqrt(2nL(θ))/‖Y‖``.

    From (I2), ``‖(I−P)Y‖² ≤ 2nL``, so as ``L → 0`` the alignment residual ``a = ‖(I−P)Y‖/‖Y‖`` must
    vanish: ``L(θ*) = 0 ⇒ Y ∈ Col J(θ*)``. The bound applies at every ``θ``, not only at a numerical zero
    of the loss, so it can fail wherever the data-level condition fails (``theory/results.md``).

    Parameters
    ----------
    loss
        ``L(θ)``.
    alignment_residual
        ``a(θ) = ‖(I − P) Y‖ / ‖Y‖``.
    n
        Number of samples.
    target_norm_sq
        ``‖Y‖² > 0``.
    rtol
        Relative tolerance on ``a``.
    cms
        Whether ``f_X ∈ Col J`` was measured to hold: a bool or the data-level verdict's word (*not
        established*: undecided, so a violation is not established); ``None``: assumed.
    uncertainty
        How far the true ``a`` may lie below the measured one (a truncated least-squares solve gives only
        an upper bound on ``a``: pass ``a`` itself, and a violation is then *not established*).

    Returns
    -------
    Verdict
        ``lhs = a``, ``rhs = sqrt(2nL)/‖Y‖``, ``margin = rhs − a``.
    """
    loss = nonneg("loss", loss)
    a = nonneg("alignment_residual", alignment_residual)
    n = count("n", n, 1)
    y2 = nonneg("target_norm_sq", target_norm_sq)
    if y2 == 0:
        raise ValueError("target_norm_sq must be positive: the residual a = ‖(I−P)Y‖/‖Y‖ needs Y ≠ 0")
    bound = math.sqrt(2 * n * loss / y2)
    return judge("I2.necessity", "necessity of D1 at a global minimum", a, bound, rel_tol(rtol, a, bound),
                 {"loss": loss, "n": n}, "a", "sqrt(2nL)/‖Y‖", premises=[data_level_premise(cms)],
                 uncertainty=uncertainty)


# -- (I3) gradient domination ------------------------------------------------------------------


def gradient_domination(loss: float, grad_norm: float, certificate: float, aligned: bool | str | None,
                        rtol: float = 1e-6, truncation: float = 0.0, cms: bool | str | None = None) -> Verdict:
    r"""(I3) Gradient domination when aligned: ``L ≤ ½ ‖∇L‖ · B`` with ``B = ‖J⁺ r‖``.

    Under ``f_X ∈ Col J`` and ``Y ∈ Col J``: ``2L = ⟨∇L, J⁺ r⟩ ≤ ‖∇L‖ ‖J⁺ r‖`` (``theory/results.md``).
    Equality holds iff ``r`` is an eigenvector of ``K = JJᵀ``. With the rank tolerance of a measured
    ``J``, ``P`` keeps only the eigenvalues above it and the identity becomes
    ``2L = ⟨∇L, J⁺r⟩ + (1/n)‖(I−P)r‖²``: the part of ``r`` in the discarded directions is added to the
    tolerance (``truncation = ‖(I−P)r‖²/2n``), so the bound ratio is judged to the truncation used.

    Parameters
    ----------
    loss
        ``L(θ)`` (squared loss).
    grad_norm
        ``‖∇L(θ)‖``.
    certificate
        ``B(θ) = ‖J⁺ r‖ = sqrt(rᵀ K⁺ r)``.
    aligned
        Whether D1 (``Y ∈ Col J(θ)``) holds at ``θ``: when not, the bound is not applicable
        (a bool or the D1 verdict's word: *not established* leaves it undecided; ``None``: assumed).
    rtol
        Relative tolerance.
    truncation
        ``‖(I−P)r‖²/2n``, in loss units.
    cms
        Whether ``f_X ∈ Col J`` was measured to hold: a bool or the data-level verdict's word (*not
        established*: undecided, so a violation is not established); ``None``: assumed.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs = ½‖∇L‖B``, ``margin = rhs − lhs``; ``details['bound_ratio']`` ``L/rhs``.
    """
    loss = nonneg("loss", loss)
    g = nonneg("grad_norm", grad_norm)
    b = nonneg("certificate", certificate)
    truncation = nonneg("truncation", truncation)
    rhs = 0.5 * g * b
    details = {"bound_ratio": ratio(loss, rhs), "truncation": truncation,
               "truncation_fraction": ratio(truncation, loss)}
    return judge("I3", "gradient domination", loss, rhs, rel_tol(rtol, loss, rhs) + truncation, details, "L",
                 "½‖∇L‖B", premises=[d1_premise(aligned), data_level_premise(cms)])


def excess_gradient_domination(projected_residual_sq: float, n: int, grad_norm: float, certificate: float,
                               rtol: float = 1e-6) -> Verdict:
    r"""(I3, general form) ``(1/2n)‖P r‖² ≤ ½ ‖∇L‖ · ‖J⁺ r‖``, a sanity check of the measurement.

    ``(1/n)‖P r‖² = ⟨(1/n)Jᵀr, J⁺r⟩ ≤ ‖∇L‖ ‖J⁺r‖`` by Cauchy–Schwarz, with no assumption: on exact
    numbers it cannot fail, so it checks the arithmetic, not the theory. Under the data-level condition
    the left side is ``L − (1/2n)‖(I−P)Y‖²`` (I2): the excess loss above the alignment floor is
    gradient-dominated even where D1 fails (``theory/results.md``).

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
        ``sanity=True``; ``lhs = (1/2n)‖Pr‖²``, ``rhs = ½‖∇L‖‖J⁺r‖``, ``margin = rhs − lhs``.
    """
    p = nonneg("projected_residual_sq", projected_residual_sq)
    n = count("n", n, 1)
    g = nonneg("grad_norm", grad_norm)
    b = nonneg("certificate", certificate)
    lhs, rhs = p / (2 * n), 0.5 * g * b
    return judge("I3.general", "excess-loss gradient domination", lhs, rhs, rel_tol(rtol, lhs, rhs),
                 {"bound_ratio": ratio(lhs, rhs)}, "‖Pr‖²/2n", "½‖∇L‖‖J⁺r‖", sanity=True)


# -- (I4) convex losses --------------------------------------------------------------------------


def convex_loss_bound(loss: float, target_loss: float, grad_norm: float, distance: float,
                      aligned: bool | str | None, rtol: float = 1e-6, truncation: float = 0.0,
                      cms: bool | str | None = None) -> Verdict:
    r"""(I4) Convex losses: ``L(θ) − L(Q) ≤ ‖∇L(θ)‖ · ‖R(θ) − ν‖`` when ``Q ∈ Col J``.

    Convexity of ``ℓ`` gives ``L(θ) − L(Q) ≤ ⟨g, f_X − Q⟩ = ⟨∇L, R − ν⟩`` for every ``ν`` with
    ``Jν = Q`` (``theory/results.md``); the smallest distance over such ``ν`` is ``‖J⁺(f_X − Q)‖``.

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
        Whether ``Q ∈ Col J(θ)``: when not, the bound is not applicable
        (a bool or the D1 verdict's word: *not established* leaves it undecided; ``None``: assumed).
    rtol
        Relative tolerance.
    truncation
        ``|⟨g, (I−P)(f_X − Q)⟩|``: the part of ``⟨g, f_X − Q⟩`` in the directions the rank tolerance
        discarded (loss units), added to the tolerance.
    cms
        Whether ``f_X ∈ Col J`` was measured to hold: a bool or the data-level verdict's word (*not
        established*: undecided, so a violation is not established); ``None``: assumed.

    Returns
    -------
    Verdict
        ``lhs = L − L(Q)``, ``rhs = ‖∇L‖·‖R − ν‖``, ``margin = rhs − lhs``.
    """
    loss = real("loss", loss)
    lq = real("target_loss", target_loss)
    g = nonneg("grad_norm", grad_norm)
    dist = nonneg("distance", distance)
    truncation = nonneg("truncation", truncation)
    lhs, rhs = loss - lq, g * dist
    details = {"bound_ratio": ratio(lhs, rhs), "loss": loss, "target_loss": lq, "truncation": truncation}
    return judge("I4", "convex-loss bound", lhs, rhs, rel_tol(rtol, lhs, rhs) + truncation, details,
                 "L−L(Q)", "‖∇L‖‖R−ν‖", premises=[d1_premise(aligned), data_level_premise(cms)])


def best_convex_bound(loss: float, grad_norm: float, scales: ArrayLike, target_losses: ArrayLike,
                      distances: ArrayLike, aligned: bool | str | None, rtol: float = 1e-6,
                      cms: bool | str | None = None) -> Verdict:
    r"""(I4) The best bound ``L(θ) ≤ min_c [L(cQ₀) + ‖∇L‖ · ‖R − ν_c‖]`` over a grid of scales ``c``.

    A larger ``c`` lowers ``L(cQ₀)`` and raises ``‖ν_c‖ = c‖ν₁‖``; membership of ``cQ₀`` in ``Col J``
    does not depend on ``c > 0``, so one ``aligned`` flag serves the grid (``theory/results.md``).

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
        Whether ``Q₀ ∈ Col J(θ)``: when not, the bound is not applicable
        (a bool or the D1 verdict's word: *not established* leaves it undecided; ``None``: assumed).
    rtol
        Relative tolerance.
    cms
        Whether ``f_X ∈ Col J`` was measured to hold: a bool or the data-level verdict's word (*not
        established*: undecided, so a violation is not established); ``None``: assumed.

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
    bounds = lq + g * dist
    k = int(np.argmin(bounds))
    rhs = float(bounds[k])
    details = {"best_scale": float(c[k]), "best_index": k, "bounds": bounds, "scales": c,
               "bound_ratio": ratio(loss, rhs)}
    return judge("I4.best", "best convex-loss bound", loss, rhs, rel_tol(rtol, loss, rhs), details, "L",
                 "min_c bound", premises=[d1_premise(aligned), data_level_premise(cms)])
