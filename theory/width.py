"""(S1)–(S4): what network size does to the alignment condition (width.md)."""

from __future__ import annotations

import numpy as np

from ._arguments import ArrayLike, array, count, flag, nonneg, same_length
from .verdict import Verdict, leq

__all__ = ["counting_bound", "deep_linear_rank_bound", "embedding", "kernel_movement_trend"]


def counting_bound(rank: int, n_outputs: int, n_params: int) -> Verdict:
    r"""(S1) Counting: ``rank J ≤ min(nm, d)`` (THEORY §5).

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
    return leq("S1", "counting bound", float(rank), float(bound), 0.0, details, "rank J", "min(nm,d)")


def embedding(residual_narrow: float, residual_wide: float, atol: float = 1e-8) -> Verdict:
    r"""(S2) Embedding: at matched points, the wide network's alignment residual is ≤ the narrow one's.

    ``Col J_narrow ⊆ Col J_wide`` when the wide network contains the narrow one with zero outgoing
    weights on the extra units (THEORY §5), so ``‖(I−P_wide)Q‖ ≤ ‖(I−P_narrow)Q‖``. Numerically the
    two rank tolerances differ (``λ_max`` of the wide Gram is larger), hence ``atol``.

    Parameters
    ----------
    residual_narrow, residual_wide
        Alignment residuals ``‖(I−P)Q‖/‖Q‖`` of the two networks at the matched point.
    atol
        Absolute tolerance.

    Returns
    -------
    Verdict
        ``lhs`` = wide, ``rhs`` = narrow, ``margin = narrow − wide``.
    """
    narrow = nonneg("residual_narrow", residual_narrow)
    wide = nonneg("residual_wide", residual_wide)
    atol = nonneg("atol", atol)
    return leq("S2", "embedding", wide, narrow, atol, {"improvement": narrow - wide}, "a_wide", "a_narrow")


def deep_linear_rank_bound(rank: int, n_out: int, d_in: int, bias: bool = False,
                           n_samples: int | None = None) -> Verdict:
    r"""(S3b) Deep linear networks: ``rank J ≤ m·d_x`` (``m·(d_x+1)`` with biases), at any width and depth.

    Every Jacobian column is ``(B x_i + c)_i`` for some ``B ∈ R^{m×d_x}`` (``c = 0`` without biases);
    with ``n`` samples the bound is ``m·rank[X, 1] ≤ m·min(n, d_x + 1)`` (THEORY §5, ``theory/width.md``).

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
    return leq("S3b", "deep linear rank bound", float(rank), float(bound), 0.0, details, "rank J",
                "m·(d_x+bias)" if n_samples is None else "m·min(n,d_x+bias)")


def kernel_movement_trend(widths: ArrayLike, movements: ArrayLike, expect: str = "decreasing",
                          slope_tol: float = 0.25) -> Verdict:
    r"""(S4) Lazy versus rich: the log-log slope of kernel (or parameter) movement against width.

    Fits ``log Δ = α log w + β`` by least squares. NTK parameterisation: ``Δ = O(w^{-1/2})``, so
    ``α ≈ −½`` (``expect="decreasing"``: holds iff ``α ≤ −slope_tol``). Mean-field / maximal-update:
    ``Δ = Θ(1)``, so ``α ≈ 0`` (``expect="order-one"``: holds iff ``|α| ≤ slope_tol``). THEORY §5.

    Parameters
    ----------
    widths
        Positive widths, at least two distinct values.
    movements
        Positive movements ``‖K_t − K_0‖_F/‖K_0‖_F`` (or ``‖θ_t − θ_0‖/‖θ_0‖``) at a fixed time.
    expect
        ``"decreasing"`` or ``"order-one"``.
    slope_tol
        Threshold on the slope (default ``0.25``, half of the NTK exponent).

    Returns
    -------
    Verdict
        decreasing: ``lhs = α``, ``rhs = −slope_tol``, ``margin = −slope_tol − α``;
        order-one: ``lhs = |α|``, ``rhs = slope_tol``, ``margin = slope_tol − |α|``.
        ``details``: ``slope``, ``intercept``, ``ntk_slope`` (−½), ``expect``.
    """
    w = array("widths", widths, min_len=2)
    mv = array("movements", movements, min_len=2)
    same_length(widths=w, movements=mv)
    if (w <= 0).any() or (mv <= 0).any():
        raise ValueError("widths and movements must be positive (the fit is in log-log)")
    if np.unique(w).shape[0] < 2:
        raise ValueError("need at least two distinct widths to fit a slope")
    slope_tol = nonneg("slope_tol", slope_tol)
    slope, intercept = np.polyfit(np.log(w), np.log(mv), 1)
    slope, intercept = float(slope), float(intercept)
    details = {"slope": slope, "intercept": intercept, "ntk_slope": -0.5, "expect": expect}
    if expect == "decreasing":
        return leq("S4", "kernel movement shrinks with width", slope, -slope_tol, 0.0, details, "slope",
                    "−slope_tol")
    if expect == "order-one":
        return leq("S4", "kernel movement stays order one", abs(slope), slope_tol, 0.0, details, "|slope|",
                    "slope_tol")
    raise ValueError(f"expect must be 'decreasing' or 'order-one', got {expect!r}")
