"""D1, the data-architecture alignment condition ``Q ∈ Col J(θ)``: the verdict on a measured residual (alignment.md)."""

from __future__ import annotations

from ._arguments import flag, nonneg
from .verdict import HOLDS, NOT_ESTABLISHED, REFUTED, Verdict

__all__ = ["alignment_condition"]


def alignment_condition(residual: float, residual_tol: float, resolved: bool = True,
                        resolution_note: str = "") -> Verdict:
    r"""(D1) The target lies in the column space of the Jacobian: ``a = ‖(I − P)Q‖/‖Q‖ ≤ residual_tol``.

    ``P`` projects onto the eigen-directions of ``K = JJᵀ`` above the rank tolerance, so the verdict is as
    good as the precision that decided that tolerance (``theory/alignment.md``). When the measurement
    cannot resolve the question — a residual carried by eigenvalues below what the dtype resolves, a
    matrix-free solve whose condition limit is too low, or a float32 verdict that a float64 re-measurement
    changes — pass ``resolved=False``: the verdict is then *not established*, with ``resolution_note``
    saying why and how to re-measure.

    Parameters
    ----------
    residual
        ``a = ‖(I − P)Q‖/‖Q‖``.
    residual_tol
        ``a ≤ residual_tol`` counts as ``Q ∈ Col J``.
    resolved
        Whether the measurement's precision decides the question.
    resolution_note
        Why it does not, and what to do (shown in the verdict).

    Returns
    -------
    Verdict
        ``lhs = a``, ``rhs = residual_tol``, ``margin = residual_tol − a``; ``details``: ``reason`` when not
        established.
    """
    a = nonneg("residual", residual)
    tol = nonneg("residual_tol", residual_tol)
    margin = tol - a
    details: dict = {}
    if not flag("resolved", resolved):
        status = NOT_ESTABLISHED
        details["reason"] = resolution_note or "the measurement's precision does not decide it"
    else:
        status = HOLDS if margin >= 0 else REFUTED
    return Verdict("D1", "alignment condition Q ∈ Col J", status, a, tol, margin, 0.0, details,
                   "‖(I−P)Q‖/‖Q‖", "residual_tol")
