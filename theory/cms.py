"""A1, the common model structure assumption: the verdict from its three tests (cms.md)."""

from __future__ import annotations

from ._arguments import count, nonneg
from .verdict import Verdict, leq

__all__ = ["cms_assessment"]


def cms_assessment(candidate_error: float, data_residual: float, transfer_error: float | None = None,
                   rank_fit: int | None = None, rank_union: int | None = None, tol: float = 1e-6) -> Verdict:
    r"""(A1) The verdict on the common model structure assumption from the three tests of THEORY §2.

    The verdict rests on test 1 (candidate identity ``‖f − J R‖/‖f‖`` on fresh inputs) with test 2
    (``‖(I−P)f_X‖/‖f_X‖``) as a necessary condition. Test 3 (least-norm transfer
    ``‖f_B − J_B J_A⁺ f_A‖/‖f_B‖``) can refute A1 only when it is *conclusive*:
    ``rank J_A = rank [J_A; J_B]`` (then A1 forces a zero transfer error); otherwise a failing
    transfer is inconclusive because ``J_A⁺ f_A`` is only determined modulo ``null J_A``
    (``theory/cms.md``).

    Parameters
    ----------
    candidate_error
        Test 1, relative error of the best candidate ``R`` on inputs not used to choose it.
    data_residual
        Test 2, ``‖(I−P)f_X‖/‖f_X‖``.
    transfer_error
        Test 3, or ``None`` if not run.
    rank_fit, rank_union
        ``rank J_A`` and ``rank [J_A; J_B]`` (needed to call a failing transfer conclusive).
    tol
        Threshold for all three relative errors.

    Returns
    -------
    Verdict
        ``lhs`` = the largest error among the tests that count (1, 2, and 3 when it is conclusive),
        ``rhs = tol``, ``margin = tol − lhs``; ``details['transfer']`` is ``"passed"``,
        ``"failed (conclusive)"``, ``"failed (inconclusive)"`` or ``"not run"``; ``details['status']``
        is ``"established"`` (``holds``), ``"refuted"`` (test 2 fails, or test 3 fails conclusively:
        no ``R`` can exist) or ``"not established"`` (test 1 fails but nothing refutes A1: some other
        ``R`` than the candidates may work).
    """
    e1 = nonneg("candidate_error", candidate_error)
    e2 = nonneg("data_residual", data_residual)
    tol = nonneg("tol", tol)
    counted = [e1, e2]
    details: dict = {"candidate_error": e1, "data_residual": e2,
                     "data_level_note": "necessary, not sufficient"}
    if (rank_fit is None) != (rank_union is None):
        raise ValueError("give both rank_fit and rank_union, or neither")
    conclusive = False
    if rank_fit is not None:
        rf, ru = count("rank_fit", rank_fit), count("rank_union", rank_union)
        if rf > ru:
            raise ValueError(f"rank_fit = {rf} cannot exceed rank_union = {ru}")
        conclusive = rf == ru
        details["transfer_conclusive"] = conclusive
    if transfer_error is None:
        details["transfer"] = "not run"
    else:
        e3 = nonneg("transfer_error", transfer_error)
        details["transfer_error"] = e3
        if e3 <= tol:
            details["transfer"] = "passed"
        elif conclusive:
            details["transfer"] = "failed (conclusive)"
            counted.append(e3)
        else:
            details["transfer"] = "failed (inconclusive)"
    refuted = e2 > tol or details["transfer"] == "failed (conclusive)"
    details["status"] = "refuted" if refuted else ("established" if e1 <= tol else "not established")
    return leq("A1", "common model structure", max(counted), tol, 0.0, details, "max error", "tol")
