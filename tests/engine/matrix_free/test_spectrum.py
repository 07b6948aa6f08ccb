"""The matrix-free spectrum: an iterative solve that stops early says so."""

import pytest
import torch
from cases import CASES

from diagnostics.engine import JacobianOperator, OperatorSpectrum

F64 = torch.float64


def test_lsqr_that_stops_at_its_iteration_limit_says_so():
    case = CASES["mlp"]
    op = JacobianOperator(case.model(), case.data(6))
    spectrum = OperatorSpectrum(op, top_k=2, max_iter=2)
    with pytest.warns(RuntimeWarning, match="iteration limit"):
        spectrum.pinv_quadratic(torch.ones(op.shape[0], dtype=F64))
    assert "stopped at the iteration limit" in spectrum.solver_summary


def test_a_truncated_solve_leaves_d1_and_the_decomposition_not_established():
    # teacher-student targets are reachable (d > nm), but two LSQR iterations are far from the fit
    from diagnostics.alignment import alignment_from_operator

    case = CASES["mlp"]
    model, x = case.model(), case.data(6)
    op = JacobianOperator(model, x, dtype=F64)
    y = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0), dtype=F64).reshape(op.n, op.m)
    with pytest.warns(RuntimeWarning, match="iteration limit"):
        report = alignment_from_operator(op, y, top_k=2, max_iter=2)
    assert report.verdict.status == "not established"
    assert "LSQR stopped before its tolerance" in report.verdict.details["reason"]
    assert "iteration cap reached" in report.rank_rule
    decomposition = next(v for v in report.verdicts if v.statement == "I2")
    assert decomposition.status == "not established"
    # f_X's truncated residual is an upper bound too: it cannot show the data-level premise fails
    premise = next(p for v in report.verdicts for p in v.premises if p.name.startswith("f_X ∈ Col J"))
    assert premise.met is None and premise.undecided and all(v.status != "not applicable" for v in report.verdicts)
    full = alignment_from_operator(op, y, top_k=2)
    assert full.verdict.status != "not established" and "tolerance reached" in full.rank_rule


def test_lanczos_under_a_spent_time_budget_computes_lambda_max_and_says_what_it_left_out():
    case = CASES["mlp"]
    op = JacobianOperator(case.model(), case.data(8), dtype=F64)
    K = torch.stack([op.gram_matvec(e) for e in torch.eye(op.shape[0], dtype=F64)], dim=1)
    exact = torch.linalg.eigvalsh(K).flip(0)
    full = OperatorSpectrum(op, top_k=4)
    torch.testing.assert_close(torch.as_tensor(full.eigenvalues.copy()), exact[:4], rtol=1e-8, atol=0)
    assert "Lanczos" not in full.solver_summary
    spent = OperatorSpectrum(op, top_k=4, time_budget=0.0)
    assert len(spent.eigenvalues) == 1 and abs(spent.eigenvalues[0] - float(exact[0])) <= 1e-8 * float(exact[0])
    assert "Lanczos: 1 of 4 eigenpairs within the time budget" in spent.solver_summary
    assert spent.rank_tol == full.rank_tol  # the rank rule needs λ_max only
