"""A1, the common model structure assumption: the verdict from its three tests (cms.md)."""

from __future__ import annotations

import math

from ._arguments import count, nonneg
from .alignment import ResidualBounds
from .verdict import HOLDS, NOT_ESTABLISHED, REFUTED, Verdict

__all__ = ["cms_assessment"]


def cms_assessment(candidate_error: float | None, data_residual: float, transfer_error: float | None = None,
                   rank_fit: int | None = None, rank_union: int | None = None, tol: float = 1e-6,
                   data_tol: float | None = None, *, data_bounds: ResidualBounds | None = None,
                   rank_bound: int | None = None) -> Verdict:
    r"""(A1) The verdict on the common model structure assumption from its three tests (``theory/cms.md``).

    - **holds** when a candidate ``R`` reproduces the outputs, ``‖f − J R‖/‖f‖ ≤ tol`` on inputs that were
      not used to choose it (test 1): the identity is then witnessed, not assumed;
    - **refuted** only by a test that refutes A1 for *every* ``R``: test 2, when the exact
      ``‖(I−P)f_X‖/‖f_X‖`` is shown to exceed ``data_tol`` (``f_X ∉ Col J``, so no ``R`` can give
      ``f_X = J R``; shown by ``data_bounds.lower``, ``theory/alignment.md#resolution``), or test 3 when it is
      *conclusive* (``rank J_A = rank [J_A; J_B]``, and the measured ``rank [J_A; J_B]`` reaches ``rank_bound``
      so that the ranks are exact: then A1 forces the least-norm transfer error
      ``‖f_B − J_B J_A⁺ f_A‖/‖f_B‖`` to vanish);
    - **not established** otherwise: no candidate was found (or none passed), and nothing refutes A1,
      since some other ``R`` may work.

    When a candidate passes *and* test 2 or 3 fails, the witness decides (*holds*): in exact arithmetic a
    witnessed ``f = J R`` forces tests 2 and 3 to pass, and they fail beside it only because both see ``f_X``
    through ``K``'s eigen-decomposition cut at the rank tolerance, which discards directions whose squared
    singular values fall below ``λ_max·nm·eps``; test 1 computes ``J R`` from ``J`` itself
    (``theory/cms.md#the-verdict``). ``details["disagreement"]`` then names the test and its error.

    Parameters
    ----------
    candidate_error
        Test 1: relative error of the best candidate ``R`` on inputs not used to choose it (the largest over
        fresh and perturbed inputs); ``None`` when no candidate was found.
    data_residual
        Test 2: ``‖(I−P)f_X‖/‖f_X‖``.
    transfer_error
        Test 3, or ``None`` if not run.
    rank_fit, rank_union
        ``rank J_A`` and ``rank [J_A; J_B]`` (needed to call a failing transfer conclusive).
    tol
        Threshold of tests 1 and 3.
    data_tol
        Threshold of test 2 (default ``tol``): the residual that counts as ``f_X ∈ Col J``.
    data_bounds
        Where the exact test-2 residual lies (:func:`~theory.alignment.residual_bounds`); ``None``: the measured
        one, taken as exact. Test 2 refutes only when ``data_bounds.lower > data_tol``.
    rank_bound
        ``min(nm, d)`` of the union: test 3 is conclusive only when ``rank_union`` reaches it (below it, directions
        of the row space under the resolution may be missing from both ranks); ``None``: ranks taken as exact.

    Returns
    -------
    Verdict
        ``lhs`` = the candidate error (``nan`` when none), ``rhs = tol``; when refuted, the refuting test's
        error against its threshold. ``details``: ``status`` (the same word), ``refuted_by``, ``transfer``
        (``"passed"``, ``"failed (conclusive)"``, ``"failed (inconclusive)"``, ``"not run"``), the three errors.
    """
    e1 = None if candidate_error is None else nonneg("candidate_error", candidate_error)
    e2 = nonneg("data_residual", data_residual)
    tol = nonneg("tol", tol)
    data_tol = tol if data_tol is None else nonneg("data_tol", data_tol)
    data_bounds = data_bounds or ResidualBounds(e2, e2)
    details: dict = {"candidate_error": e1, "data_residual": e2, "data_tol": data_tol, "refuted_by": None,
                     "data_bounds": data_bounds.to_dict()}
    if (rank_fit is None) != (rank_union is None):
        raise ValueError("give both rank_fit and rank_union, or neither")
    conclusive = False
    if rank_fit is not None:
        rf, ru = count("rank_fit", rank_fit), count("rank_union", rank_union)
        if rf > ru:
            raise ValueError(f"rank_fit = {rf} cannot exceed rank_union = {ru}")
        conclusive = rf == ru and (rank_bound is None or ru >= count("rank_bound", rank_bound))
        details["transfer_conclusive"] = conclusive
    e3 = None if transfer_error is None else nonneg("transfer_error", transfer_error)
    details["transfer_error"] = e3
    if e3 is None:
        details["transfer"] = "not run"
    elif e3 <= tol:
        details["transfer"] = "passed"
    else:
        details["transfer"] = "failed (conclusive)" if conclusive else "failed (inconclusive)"
    lhs = math.nan if e1 is None else e1
    witnessed = e1 is not None and e1 <= tol
    refuters = []
    if e2 > data_tol and data_bounds.lower > data_tol:
        refuters.append(("test 2: f_X ∉ Col J, so no R gives f_X = J R", e2, data_tol))
    elif e2 > data_tol:
        details["data_undecided"] = (f"test 2 leaves {e2:.1e} > {data_tol:.1e}, but the exact residual may be as "
                                     f"low as {data_bounds.lower:.1e}: {data_bounds.reason}")
    if details["transfer"] == "failed (conclusive)":
        refuters.append(("test 3: the least-norm R fitted on one half fails on the other, and rank J_A = "
                         "rank [J_A; J_B]", e3, tol))
    if witnessed:
        status, margin = HOLDS, tol - e1
        if refuters:
            why, error, threshold = refuters[0]
            details["disagreement"] = (
                f"{why.split(':')[0]} leaves {error:.1e} > {threshold:.1e}, but it sees f_X through the rank rule of "
                f"K = J Jᵀ, which discards directions with σ² ≤ λ_max·nm·eps; the witness (error {e1:.1e}, from "
                "J R itself on fresh inputs) decides")
    elif refuters:
        (why, error, threshold), status = refuters[0], REFUTED
        margin, lhs, tol = threshold - error, error, threshold
        details["refuted_by"] = why
    else:
        status, margin = NOT_ESTABLISHED, (math.nan if e1 is None else tol - e1)
        details["reason"] = ("no candidate R was found" if e1 is None else
                             "no candidate R reproduces f, and no test refutes A1 (another R may work)")
        if "data_undecided" in details:
            details["reason"] += "; " + details["data_undecided"]
    details["status"] = status
    return Verdict("A1", "common model structure", status, lhs, tol, margin, 0.0, details, "error", "tol")
