"""(S1)–(S4): what network size does to the alignment condition (width.md)."""

from __future__ import annotations

import math

import numpy as np

from ._arguments import ArrayLike, array, count, flag, nonneg, same_length
from .alignment import ResidualBounds
from .verdict import HOLDS, NOT_ESTABLISHED, REFUTED, Premise, Verdict, judge

__all__ = ["counting_bound", "deep_linear_rank_bound", "embedding", "kernel_movement_trend"]


def counting_bound(rank: int, n_outputs: int, n_params: int) -> Verdict:
    r"""(S1) Counting: ``rank J ≤ min(nm, d)``, a sanity check of a measured rank (``theory/width.md``).

    A measured numerical rank can never exceed ``min(nm, d)``, so this verdict checks the measurement,
    not the theory (``sanity=True``); what S1 says is in ``details``.

    With ``d < nm`` the image of ``θ ↦ f_X(θ)`` has measure zero, so generic targets cannot be
    interpolated (``L(θ) > 0`` at every ``θ`` for almost every ``Y``); see ``theory/width.md`` for why
    "bounded away from 0" needs more.

    Parameters
    ----------
    rank
        Measured ``rank J``.
    n_outputs
        ``nm``, the number of stacked outputs.
    n_params
        ``d``.

    Returns
    -------
    Verdict
        ``lhs = rank``, ``rhs = min(nm, d)``, ``margin = rhs − rank``; ``details``:
        ``underparameterised`` (``d < nm``), ``generic_interpolation_impossible`` (same),
        ``full_row_rank`` (``rank = nm``: D1 holds for every target, S3a).
    """
    rank = count("rank", rank)
    nm = count("n_outputs", n_outputs, 1)
    d = count("n_params", n_params, 1)
    bound = min(nm, d)
    details = {"underparameterised": d < nm, "generic_interpolation_impossible": d < nm,
               "full_row_rank": rank == nm, "n_outputs": nm, "n_params": d}
    return judge("S1", "counting bound", float(rank), float(bound), 0.0, details, "rank J", "min(nm,d)",
                 sanity=True)


def embedding(residual_narrow: float, residual_wide: float, atol: float = 1e-8, *,
              narrow_bounds: ResidualBounds | None = None, wide_bounds: ResidualBounds | None = None) -> Verdict:
    r"""(S2) Embedding: at matched points, the wide network's alignment residual is ≤ the narrow one's.

    ``Col J_narrow ⊆ Col J_wide`` when the wide network contains the narrow one with zero outgoing
    weights on the extra units (theory/width.md), so ``‖(I−P_wide)Q‖ ≤ ‖(I−P_narrow)Q‖``. Numerically the
    two rank tolerances differ (``λ_max`` of the wide Gram is larger), hence ``atol``; and each measured
    residual knows the exact one only within its bounds (``theory/alignment.md#resolution``), so a violation is
    *refuted* only when the wide network's lower bound exceeds the narrow one's upper bound by more than ``atol``.

    Parameters
    ----------
    residual_narrow, residual_wide
        Alignment residuals ``‖(I−P)Q‖/‖Q‖`` of the two networks at the matched point.
    atol
        Absolute tolerance.
    narrow_bounds, wide_bounds
        Where the exact residuals lie (:func:`~theory.alignment.residual_bounds`); ``None``: the measured ones.

    Returns
    -------
    Verdict
        ``lhs`` = wide, ``rhs`` = narrow, ``margin = narrow − wide``.
    """
    narrow = nonneg("residual_narrow", residual_narrow)
    wide = nonneg("residual_wide", residual_wide)
    atol = nonneg("atol", atol)
    narrow_bounds = narrow_bounds or ResidualBounds(narrow, narrow)
    wide_bounds = wide_bounds or ResidualBounds(wide, wide)
    uncertainty = max(wide - wide_bounds.lower, 0.0) + max(narrow_bounds.upper - narrow, 0.0)
    return judge("S2", "embedding", wide, narrow, atol, {"improvement": narrow - wide}, "a_wide", "a_narrow",
                 premises=[Premise("the wide network embeds the narrow one at the matched point", None,
                                   "the caller's construction")], uncertainty=uncertainty)


def deep_linear_rank_bound(rank: int, n_out: int, d_in: int, bias: bool = False,
                           n_samples: int | None = None) -> Verdict:
    r"""(S3b) Deep linear networks: ``rank J ≤ m·d_x`` (``m·(d_x+1)`` with biases), at any width and depth.

    Every Jacobian column is ``(B x_i + c)_i`` for some ``B ∈ R^{m×d_x}`` (``c = 0`` without biases);
    with ``n`` samples the bound is ``m·rank[X, 1] ≤ m·min(n, d_x + 1)`` (theory/width.md, ``theory/width.md``).

    Parameters
    ----------
    rank
        Measured ``rank J``.
    n_out
        ``m``.
    d_in
        ``d_x``.
    bias
        Whether the network has biases.
    n_samples
        Optional ``n``: tightens the bound to ``m·min(n, d_x + bias)`` and decides
        ``details['width_cannot_help']`` (``n > d_x + bias``: the bound is below ``nm``, so D1 fails
        for generic targets at every width).

    Returns
    -------
    Verdict
        ``lhs = rank``, ``rhs`` = the bound, ``margin = rhs − rank``.
    """
    rank = count("rank", rank)
    m = count("n_out", n_out, 1)
    dx = count("d_in", d_in, 1)
    bias = flag("bias", bias)
    eff = dx + int(bias)
    details: dict = {"effective_input_dim": eff}
    if n_samples is not None:
        n = count("n_samples", n_samples, 1)
        eff = min(n, eff)
        details["width_cannot_help"] = n > dx + int(bias)
        details["n_outputs"] = n * m
    bound = m * eff
    return judge("S3b", "deep linear rank bound", float(rank), float(bound), 0.0, details, "rank J",
                 "m·(d_x+bias)" if n_samples is None else "m·min(n,d_x+bias)",
                 premises=[Premise("the model is a deep linear network", None, "the caller's model")])


def kernel_movement_trend(widths: ArrayLike, movements: ArrayLike, expect: str = "decreasing",
                          slope_tol: float = 0.25, groups: ArrayLike | None = None, level: float = 0.9) -> Verdict:
    r"""(S4) Lazy versus rich: the log-log slope of kernel (or parameter) movement against width, with its interval.

    Fits ``log Δ = α log w + β`` by least squares. NTK parameterisation: ``Δ = O(w^{-1/2})``, so ``α ≈ −½``
    (``expect="decreasing"``: the statement is ``α ≤ −slope_tol``). Mean-field / maximal-update:
    ``Δ = Θ(1)``, so ``α ≈ 0`` (``expect="order-one"``: ``|α| ≤ slope_tol``). ``theory/width.md``.

    A slope is only as good as its interval (``theory/width.md#the-interval-of-the-slope``). With ``groups`` (the
    seed of each run) the slope is fitted per seed and the interval is the Student ``t``-interval of the mean of
    those slopes, ``s − 1`` degrees of freedom for ``s`` seeds (a seed is one independent replicate; the runs of
    one seed share its initialisation draws and are not); without, the ``t``-interval of the least-squares fit (at
    least three widths). The statement *holds* when the whole interval satisfies it, is *refuted* when none of it
    does, and is *not established* otherwise, e.g. when the interval contains both ``−½`` and ``0``.

    Parameters
    ----------
    widths
        Positive widths, at least two distinct values.
    movements
        Positive movements ``‖K_t − K_0‖_F/‖K_0‖_F`` (or ``‖θ_t − θ_0‖/‖θ_0‖``) at a fixed time, one per run.
    expect
        ``"decreasing"`` or ``"order-one"``.
    slope_tol
        Threshold on the slope (default ``0.25``, half of the NTK exponent).
    groups
        The seed (or any group label) of each run: the interval is then over the per-seed slopes (seeds with
        fewer than two distinct widths are left out; with fewer than two seeds left, the fit's own interval).
    level
        Coverage of the interval.

    Returns
    -------
    Verdict
        decreasing: ``lhs = α``, ``rhs = −slope_tol``; order-one: ``lhs = |α|``, ``rhs = slope_tol``;
        ``margin`` from the point estimate (the mean of the per-seed slopes with ``groups``, which is the pooled
        fit's slope when every seed has the same widths). ``details``: ``slope``, ``intercept``, ``interval``
        ``(lo, hi)`` (``None`` when it cannot be estimated), ``interval_method``, ``seed_slopes``, ``ntk_slope``
        (−½), ``expect``.
    """
    w = array("widths", widths, min_len=2)
    mv = array("movements", movements, min_len=2)
    same_length(widths=w, movements=mv)
    if (w <= 0).any() or (mv <= 0).any():
        raise ValueError("widths and movements must be positive (the fit is in log-log)")
    if np.unique(w).shape[0] < 2:
        raise ValueError("need at least two distinct widths to fit a slope")
    if expect not in ("decreasing", "order-one"):
        raise ValueError(f"expect must be 'decreasing' or 'order-one', got {expect!r}")
    slope_tol = nonneg("slope_tol", slope_tol)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x, y = np.log(w), np.log(mv)
    slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
    seed_slopes = _seed_slopes(x, y, groups)
    if len(seed_slopes) >= 2:
        slope = float(np.mean(seed_slopes))
        interval: tuple[float, float] | None = _t_interval(seed_slopes, level)
        method = f"t-interval over the slopes of {len(seed_slopes)} seeds"
    else:
        interval, method = _fit_interval(x, y, level)
    details = {"slope": slope, "intercept": intercept, "interval": interval, "interval_method": method,
               "seed_slopes": seed_slopes, "level": level, "ntk_slope": -0.5, "expect": expect}
    if expect == "decreasing":
        lhs, rhs, title, labels = slope, -slope_tol, "kernel movement shrinks with width", ("slope", "−slope_tol")
    else:
        lhs, rhs, title, labels = abs(slope), slope_tol, "kernel movement stays order one", ("|slope|", "slope_tol")
    if interval is None:
        details["reason"] = "the slope has no interval (fewer than three widths and no seeds)"
        return Verdict("S4", title, NOT_ESTABLISHED, lhs, rhs, rhs - lhs, 0.0, details, *labels)
    lo, hi = interval
    if expect == "decreasing":  # the room of the interval's worst end, and whether its best end fails
        margin, refuted = -slope_tol - hi, lo > -slope_tol
    else:
        margin, refuted = slope_tol - max(abs(lo), abs(hi)), hi < -slope_tol or lo > slope_tol
    if margin >= 0:
        status = HOLDS
    elif refuted:
        status = REFUTED
    else:
        status = NOT_ESTABLISHED
        details["reason"] = f"the {level:.0%} interval [{lo:+.2f}, {hi:+.2f}] straddles the threshold"
    return Verdict("S4", title, status, lhs, rhs, margin, 0.0, details, *labels)


def _seed_slopes(x: np.ndarray, y: np.ndarray, groups: ArrayLike | None) -> list[float]:
    """Least-squares slope of every group that spans two or more widths (none without groups)."""
    if groups is None:
        return []
    labels = np.asarray(groups)
    if labels.shape != x.shape:
        raise ValueError("groups must give one label per run")
    members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    return [float(np.polyfit(x[idx], y[idx], 1)[0]) for idx in members if np.unique(x[idx]).shape[0] >= 2]


def _t_interval(values: list[float], level: float) -> tuple[float, float]:
    """Student ``t``-interval of the mean of independent replicates."""
    from scipy.stats import t as student_t

    v = np.asarray(values)
    half = float(student_t.ppf((1 + level) / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def _fit_interval(x: np.ndarray, y: np.ndarray, level: float) -> tuple[tuple[float, float] | None, str]:
    """``t``-interval of the least-squares slope of all points (``None`` below three distinct widths)."""
    n = x.shape[0]
    if n < 3 or np.unique(x).shape[0] < 3:
        return None, "none"
    from scipy.stats import t as student_t

    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    se = math.sqrt(float(resid @ resid) / (n - 2) / float(((x - x.mean()) ** 2).sum()))
    half = float(student_t.ppf((1 + level) / 2, n - 2)) * se
    return (float(slope - half), float(slope + half)), "t-interval of the least-squares fit"
