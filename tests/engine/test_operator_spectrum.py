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
