"""D1, the data-architecture alignment condition ``Q ∈ Col J(θ)``: what a measurement decides (alignment.md).

A measured residual is that of a computed Gram cut at the rank tolerance; the question is about the exact
``J``. :func:`residual_bounds` turns the measured numbers into bounds on the exact residual
(``theory/alignment.md#resolution``), :func:`witness_bounds` does the same for a residual ``‖q − Jν‖`` of some
coefficient vector, and the verdicts decide on the bounds: :func:`alignment_condition` (D1),
:func:`data_level_condition` (``f_X ∈ Col J``) and :func:`alignment_from_subset` (what a probe's verdict says
about the data it was drawn from, ``theory/alignment.md#subsets``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._arguments import count, flag, nonneg
from .verdict import HOLDS, NOT_ESTABLISHED, REFUTED, Verdict

__all__ = [
    "ResidualBounds",
    "alignment_condition",
    "alignment_from_subset",
    "data_level_condition",
    "residual_bounds",
    "witness_bounds",
]


@dataclass(frozen=True)
class ResidualBounds:
    """Where the exact residual ``‖(I − P)q‖/‖q‖`` lies, given what was measured.

    Attributes
    ----------
    lower, upper
        ``lower ≤ a ≤ upper`` for the exact residual ``a`` (under the measurement's premise).
    reason
        Why the bounds are wider than the measured residual, in words (empty when they are not).
    """

    lower: float
    upper: float
    reason: str = ""

    def __post_init__(self) -> None:
        lower, upper = nonneg("lower", self.lower), nonneg("upper", self.upper)
        if lower > upper:
            raise ValueError(f"lower = {lower} exceeds upper = {upper}")

    def to_dict(self) -> dict:
        """Plain-Python dictionary."""
        return {"lower": self.lower, "upper": self.upper, "reason": self.reason}


def residual_bounds(residual: float, *, rows: int, n_params: int, kept_rank: int, resolution: float,
                    smallest_kept: float, largest_discarded: float, pinv_norm: float) -> ResidualBounds:
    r"""Bounds on the exact residual from a Gram measured to within its resolution (``alignment.md#resolution``).

    Premise: the computed ``K̃`` is within ``δ = resolution`` of the exact ``K`` (the rank rule's premise), and
    the kept directions are those with eigenvalue ``> δ``. Then, with ``r`` the kept rank,
    ``b = min(nm, d)`` and the leak ``ℓ = δ‖K̃⁺q‖/‖q‖``:

    - ``a = 0`` if ``r = nm``; otherwise ``a ≤ ã + ℓ``;
    - ``a ≥ ã(1 − ε²) − ℓ`` with ``ε = (τ' + δ)/(λ̃_r − δ)`` if ``r = b`` (no room is left in ``Col J``, so the
      discarded span is ``null K``) and ``ε < 1``;
    - otherwise no lower bound above 0: a Gram within ``δ`` of ``K̃`` has ``q`` in its column space.

    Parameters
    ----------
    residual
        ``ã = ‖(I − P̃)q‖/‖q‖``, the measured residual (energy in the discarded directions).
    rows, n_params
        ``nm`` and ``d``.
    kept_rank
        ``r``, the number of eigenvalues above ``resolution``.
    resolution
        ``δ = λ_max · nm · eps`` of the dtype the Gram was computed in.
    smallest_kept
        ``λ̃_r`` (``nan`` allowed when ``r = 0``).
    largest_discarded
        ``τ' = max |λ̃_i|`` over the discarded eigenvalues (0 when none).
    pinv_norm
        ``‖K̃⁺q‖/‖q‖`` over the kept directions.

    Returns
    -------
    ResidualBounds
    """
    a = nonneg("residual", residual)
    rows, d, r = count("rows", rows, 1), count("n_params", n_params, 1), count("kept_rank", kept_rank)
    delta = nonneg("resolution", resolution)
    tau = nonneg("largest_discarded", largest_discarded)
    leak = delta * nonneg("pinv_norm", pinv_norm)
    if r > rows:
        raise ValueError(f"kept_rank = {r} exceeds rows = {rows}")
    if r == rows:
        return ResidualBounds(0.0, 0.0)
    upper = a + leak
    bound = min(rows, d)
    gap = (smallest_kept - delta) if r and math.isfinite(smallest_kept) else 0.0
    if r < bound:
        return ResidualBounds(0.0, upper, (
            f"the residual lies in the {rows - r} directions the rank rule discards (eigenvalues ≤ {delta:.2e}, the "
            f"resolution); up to {bound - r} of them may belong to Col J with eigenvalues below it (kept rank {r} < "
            f"min(nm, d) = {bound}), so a Gram within the resolution has q ∈ Col J. Only a kept rank that reaches "
            "min(nm, d) can show q ∉ Col J; a J rank-deficient by construction (inputs that are 0 in every sample, "
            "dead or rescalable ReLU units, softmax outputs) never does, and its residual says how much of q lies "
            "outside every direction the measurement resolves"))
    if gap <= tau + delta:
        return ResidualBounds(0.0, upper, (
            f"the kept rank reaches min(nm, d) = {bound}, but its smallest eigenvalue {smallest_kept:.2e} is within "
            f"the resolution {delta:.2e} of the discarded ones, so the discarded span is not determined"))
    epsilon = (tau + delta) / gap
    lower = max(a * (1 - epsilon**2) - leak, 0.0)
    reason = "" if leak == 0 and epsilon == 0 else (
        f"the kept rank reaches min(nm, d) = {bound}, so the discarded directions span null K up to an angle "
        f"{epsilon:.1e}; the kept part leaks at most {leak:.1e}")
    return ResidualBounds(min(lower, upper), upper, reason)


def witness_bounds(residual: float, rounding: float = 0.0, reason: str = "") -> ResidualBounds:
    r"""Bounds from a witness: ``a ≤ ‖q − Jν‖/‖q‖ + rounding`` for any ``ν``, and nothing below.

    ``‖q − Jν‖ ≥ ‖(I − P)q‖`` for every coefficient vector (``alignment.md#witness-bounds``), so a witness can
    establish membership in ``Col J`` and never refute it.

    Parameters
    ----------
    residual
        ``‖q − Jν‖/‖q‖``.
    rounding
        What the evaluation of ``Jν`` may be off by, relative to ``‖q‖``.
    reason
        Why no lower bound (default: a witness gives none).
    """
    upper = nonneg("residual", residual) + nonneg("rounding", rounding)
    return ResidualBounds(0.0, upper, reason or "a residual ‖q − Jν‖ of some ν bounds the exact one from above only")


def alignment_condition(residual: float, residual_tol: float, resolved: bool = True, resolution_note: str = "",
                        *, bounds: ResidualBounds | None = None) -> Verdict:
    r"""(D1) The target lies in the column space of the Jacobian: ``a = ‖(I − P)Q‖/‖Q‖ ≤ residual_tol``.

    The question is about the exact ``J``; the measurement knows ``a`` within ``bounds``
    (``theory/alignment.md#resolution``): D1 *holds* when ``bounds.upper ≤ residual_tol``, is *refuted* when
    ``bounds.lower > residual_tol``, and is *not established* in between, with the reason. Without ``bounds`` the
    measured residual is taken as exact (a user-supplied rank rule states its own question). ``resolved=False``
    says the measurement cannot decide at all (a matrix-free solve whose condition limit is too low, a solve
    stopped early above the tolerance): *not established* with ``resolution_note``.

    Parameters
    ----------
    residual
        The measured ``a``.
    residual_tol
        ``a ≤ residual_tol`` counts as ``Q ∈ Col J``; a property of the question (the same in every dtype).
    resolved
        Whether the measurement can decide the question at all.
    resolution_note
        Why it cannot, and what to do (shown in the verdict).
    bounds
        Where the exact residual lies (:func:`residual_bounds`, :func:`witness_bounds`).

    Returns
    -------
    Verdict
        ``lhs = a``, ``rhs = residual_tol``, ``margin = residual_tol − a``; ``details``: ``lower`` and ``upper``
        (the bounds), ``reason`` when not established.
    """
    return _membership("D1", "alignment condition Q ∈ Col J", "‖(I−P)Q‖/‖Q‖", residual, residual_tol, resolved,
                       resolution_note, bounds)


def data_level_condition(residual: float, residual_tol: float, *, bounds: ResidualBounds | None = None) -> Verdict:
    r"""(A1 on the data) The outputs lie in the column space of the Jacobian: ``‖(I − P)f_X‖/‖f_X‖ ≤ residual_tol``.

    The premise of (I2)–(I4) and A1's test 2 (``theory/cms.md#test-2-necessary-data-level-condition``), decided
    on ``bounds`` as :func:`alignment_condition` decides D1 (``theory/alignment.md#resolution``).

    Parameters
    ----------
    residual
        The measured ``‖(I − P)f_X‖/‖f_X‖``.
    residual_tol
        The residual that counts as ``f_X ∈ Col J``.
    bounds
        Where the exact residual lies; ``None``: the measured one, taken as exact.

    Returns
    -------
    Verdict
        As :func:`alignment_condition`, statement ``"A1.data"``.
    """
    return _membership("A1.data", "data-level condition f_X ∈ Col J", "‖(I−P)f‖/‖f‖", residual, residual_tol,
                       True, "", bounds)


def _membership(statement: str, title: str, label: str, residual: float, residual_tol: float, resolved: bool,
                note: str, bounds: ResidualBounds | None) -> Verdict:
    """Decide ``a ≤ tol`` on the bounds of the exact ``a``."""
    a = nonneg("residual", residual)
    tol = nonneg("residual_tol", residual_tol)
    bounds = bounds or ResidualBounds(a, a)
    details: dict = {"lower": bounds.lower, "upper": bounds.upper}
    if not flag("resolved", resolved):
        status = NOT_ESTABLISHED
        details["reason"] = note or "the measurement's precision does not decide it"
    elif bounds.upper <= tol:
        status = HOLDS
    elif bounds.lower > tol and a > tol:
        status = REFUTED
    else:
        status = NOT_ESTABLISHED
        details["reason"] = (f"the exact residual lies in [{bounds.lower:.2e}, {bounds.upper:.2e}], on both sides of "
                             f"{tol:.1e}: " + (bounds.reason or "the measurement does not resolve it"))
    return Verdict(statement, title, status, a, tol, tol - a, 0.0, details, label, "residual_tol")


def alignment_from_subset(probe: Verdict, *, probe_rows: int, data_rows: int, n_params: int,
                          probe_norm_sq: float, data_norm_sq: float | None) -> Verdict:
    r"""(D1 on the data) What D1 on a probe subset says about the data it was drawn from (``alignment.md#subsets``).

    ``a ≥ a_S ‖Q_S‖/‖Q‖``: a probe whose residual is bounded below refutes D1 on the data when that bound,
    rescaled, exceeds ``residual_tol``. Anything else on a probe (a *holds* in particular) proves nothing about
    the rest: *not established*, with the counting bound (``n·m`` of the data against ``d``: above it ``J``
    cannot have full row rank there) and what would decide it.

    Parameters
    ----------
    probe
        The D1 verdict on the probe (:func:`alignment_condition`), with ``details['lower']``.
    probe_rows, data_rows
        ``n_S·m`` and ``n·m``.
    n_params
        ``d``.
    probe_norm_sq, data_norm_sq
        ``‖Q_S‖²`` and ``‖Q‖²``; ``data_norm_sq=None`` when the data's target norm is not known (then only
        the probe's word is transferred, not a residual).

    Returns
    -------
    Verdict
        ``lhs`` = the lower bound on the data's residual, ``rhs = residual_tol``; ``details``: ``probe_status``,
        ``probe_rows``, ``data_rows``, ``n_params``, ``reason`` when not established.
    """
    if probe.statement != "D1":
        raise ValueError(f"probe must be a D1 verdict, got {probe.statement!r}")
    rows_s, rows = count("probe_rows", probe_rows, 1), count("data_rows", data_rows, 1)
    d = count("n_params", n_params, 1)
    if rows_s > rows:
        raise ValueError(f"probe_rows = {rows_s} exceeds data_rows = {rows}")
    qs = nonneg("probe_norm_sq", probe_norm_sq)
    q = None if data_norm_sq is None else nonneg("data_norm_sq", data_norm_sq)
    tol = probe.rhs
    scale = math.sqrt(qs / q) if q else 0.0
    lower = float(probe.details.get("lower", probe.lhs)) * scale if probe.refuted else 0.0
    details = {"probe_status": probe.status, "probe_rows": rows_s, "data_rows": rows, "n_params": d}
    title = f"alignment condition Q ∈ Col J on the data ({rows:,} rows; the probe has {rows_s:,})"
    if probe.refuted and lower > tol:
        return Verdict("D1", title, REFUTED, lower, tol, tol - lower, 0.0, details, "a ≥ a_S‖Q_S‖/‖Q‖",
                       "residual_tol")
    if rows > d:
        count_text = (f"n·m = {rows:,} > d = {d:,} on the data, so J cannot have full row rank there (S1) and the "
                      f"probe's {probe.status} (n·m = {rows_s:,}) says nothing about it")
    else:
        count_text = (f"n·m = {rows:,} ≤ d = {d:,}: J may have full row rank on the data, which only a measurement "
                      f"on it can show; the probe's {probe.status} (n·m = {rows_s:,}) says nothing about the rest")
    if probe.refuted:
        count_text = (f"the probe refutes D1 (a_S > {tol:.1e}), and a ≥ a_S‖Q_S‖/‖Q‖, but "
                      + ("the data's ‖Q‖ is not known" if q is None else
                         f"that bound, {lower:.2e}, is not above the tolerance"))
    details["reason"] = (count_text + "; to decide it, measure the whole data: probe_size=None (the dense path "
                         "where it fits the memory budget; path='matrix-free' otherwise, which can show D1 but "
                         "never refute it)")
    return Verdict("D1", title, NOT_ESTABLISHED, lower, tol, tol - lower, 0.0, details, "a ≥ a_S‖Q_S‖/‖Q‖",
                   "residual_tol")
