"""Preconditioned LSQR for a tall J: the dense path's numbers, and bounds certified from any iterate (float64).

theory/alignment.md#preconditioned: a witness bounds the residual from above; the damped minimum (sketch) or the
restricted problem (exact Gram) bounds the rank rule's residual from below, whatever stopped the solve.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import DiagnosticsError
from diagnostics.engine import JacobianOperator, reference_jacobian
from diagnostics.engine.matrix_free.preconditioned import EXACT_GRAM_MAX_D, PreconditionedSpectrum, choose_method
from diagnostics.engine.spectral import Spectrum
from diagnostics.store import RunStore

F64 = torch.float64
TOL = math.sqrt(torch.finfo(F64).eps)


def _mlp(n=30):
    """A tall tanh MLP: nm = 3n rows, d = 57 parameters, J of full column rank."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(n, 5, dtype=F64)
    return model, x, reference_jacobian(model, x)


def _dense(J, q):
    """The dense path's residual, ‖ν‖ and spectrum for ``q`` (rank rule λ_max · nm · eps)."""
    spectrum = Spectrum.of(J @ J.T, source_dtype=F64)
    return spectrum, math.sqrt(spectrum.outside_norm_sq(q)) / float(q.norm()), math.sqrt(spectrum.pinv_quadratic(q))


def test_the_method_follows_the_shape_of_j():
    assert choose_method("auto", (50, 60)) == "lsqr"  # wide: Col J may be all of R^{nm}
    assert choose_method("auto", (600, 60)) == "gram"
    assert choose_method("auto", (10**6, EXACT_GRAM_MAX_D + 1)) == "sketch"
    assert choose_method("auto", (10**7, 2000)) == "sketch"  # 2·nm·d² past the exact Gram's flops
    assert choose_method("sketch", (600, 60)) == "sketch"
    with pytest.raises(DiagnosticsError, match="needs a tall J"):
        choose_method("gram", (50, 60))
    with pytest.raises(DiagnosticsError, match="must be one of"):
        choose_method("cholesky", (600, 60))


@pytest.mark.parametrize("method", ["gram", "sketch"])
@pytest.mark.parametrize("inside", [False, True])
def test_a_full_column_rank_j_gives_the_dense_numbers(method, inside):
    model, x, J = _mlp()
    op = JacobianOperator(model, x)
    gen = torch.Generator().manual_seed(1)
    q = J @ torch.randn(J.shape[1], generator=gen, dtype=F64) if inside else torch.randn(J.shape[0], generator=gen,
                                                                                             dtype=F64)
    dense, residual, nu_norm = _dense(J, q)
    spectrum = PreconditionedSpectrum(op, [q], method=method, rtol=1e-14)
    lower, upper = spectrum.residual_bounds(q)
    if inside:  # Q ∈ Col J: the witness shows it
        assert residual <= TOL and upper <= TOL
    else:  # the bounds bracket the dense residual, within 1 % below (the damping), 1e-8 above
        assert residual * 0.99 <= lower <= residual * (1 + 1e-8) and abs(upper - residual) <= 1e-8 * residual
    assert abs(math.sqrt(spectrum.pinv_quadratic(q)) - nu_norm) <= 1e-8 * nu_norm
    assert abs(spectrum.inside_norm_sq(q) - dense.inside_norm_sq(q)) <= 1e-8 * float(q @ q)
    assert abs(spectrum.quadratic(q) - dense.quadratic(q)) <= 1e-10 * dense.quadratic(q)
    if method == "gram":  # the whole non-zero spectrum of K and its rank rule
        assert spectrum.rank == dense.rank == J.shape[1]
        np.testing.assert_allclose(spectrum.eigenvalues, dense.eigenvalues[: J.shape[1]], rtol=1e-10)
        np.testing.assert_allclose(spectrum.captured_fraction(q), dense.captured_fraction(q)[: J.shape[1]],
                                   atol=1e-10)
        assert abs(spectrum.kernel_target_alignment(q) - dense.kernel_target_alignment(q)) <= 1e-10
    else:  # Rayleigh–Ritz: lower bounds on the top eigenvalues, λ_max to a few digits
        assert np.all(spectrum.eigenvalues <= dense.eigenvalues[: spectrum.eigenvalues.size] * (1 + 1e-12))
        assert abs(spectrum.eigenvalues[0] - dense.eigenvalues[0]) <= 1e-3 * dense.eigenvalues[0]
        assert spectrum.rank == -1 and math.isnan(spectrum.kernel_target_alignment(q))


def test_a_rank_deficient_j_with_a_gap_gives_the_dense_numbers_with_the_exact_gram():
    # deep linear: rank J = 15 < d = 51 (the GL(6) gauge directions are null), an exact gap at the threshold
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)).double()
    x = torch.randn(40, 4, dtype=F64)
    J = reference_jacobian(model, x)
    q = torch.randn(J.shape[0], generator=torch.Generator().manual_seed(3), dtype=F64)
    dense, residual, nu_norm = _dense(J, q)
    spectrum = PreconditionedSpectrum(JacobianOperator(model, x), [q], method="gram")
    assert spectrum.rank == dense.rank == 15
    lower, upper = spectrum.residual_bounds(q)
    assert abs(lower - residual) <= 1e-8 * residual and abs(upper - residual) <= 1e-8 * residual
    assert abs(math.sqrt(spectrum.pinv_quadratic(q)) - nu_norm) <= 1e-8 * nu_norm
    assert abs(spectrum.smallest_kept - dense.smallest_kept) <= 1e-10 * dense.smallest_kept
    np.testing.assert_allclose(spectrum.residual_curve(q)[:15], dense.residual_curve(q)[:15], atol=1e-8)


def test_a_refutation_is_certified_by_any_iterate_and_a_truncated_sketch_says_what_it_lacks():
    model, x, J = _mlp()
    op = JacobianOperator(model, x)
    q = torch.randn(J.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    _, residual, _ = _dense(J, q)
    # the exact Gram starts from the normal-equations solution: one iteration certifies a ≈ 0.64
    early = PreconditionedSpectrum(op, [q], method="gram", max_iter=1)
    lower, upper = early.residual_bounds(q)
    assert early.solves[0].iterations == 1 and lower > 0.99 * residual > TOL
    # a sketched solve cut short keeps a valid witness but cannot yet bound the residual from below
    cut = PreconditionedSpectrum(op, [q], method="sketch", max_iter=3)
    lower, upper = cut.residual_bounds(q)
    assert cut.truncated and lower == 0.0 and upper >= residual
    assert "iteration cap" in cut.solver_summary
    done = PreconditionedSpectrum(op, [q], method="sketch")
    assert done.residual_bounds(q)[0] > 0.99 * residual and not done.truncated


def test_a_residual_that_hinges_on_a_direction_near_the_threshold_is_not_decided_by_the_sketch():
    # J = X (a linear model without bias, one output): singular values 1, and one at 3× the rank threshold
    n, d = 200, 12
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
    V = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64)).Q
    tau = n * torch.finfo(F64).eps  # λ_max · nm · eps with λ_max = 1
    sigma = torch.ones(d, dtype=F64)
    sigma[-1] = math.sqrt(3 * tau)
    X = U[:, :d] @ torch.diag(sigma) @ V.T
    model = nn.Linear(d, 1, bias=False).double()
    op = JacobianOperator(model, X)
    # q leans on the near-threshold direction, plus a true residual of 5 × the tolerance outside Col J
    q = U[:, 0] + 1e-2 * U[:, d - 1] + 5 * TOL * U[:, d]
    J = reference_jacobian(model, X)
    _, residual, _ = _dense(J, q)
    assert residual > TOL  # the dense path resolves it
    gram = PreconditionedSpectrum(op, [q], method="gram")
    assert gram.residual_bounds(q)[0] > TOL  # so does the exact Gram, which keeps the direction exactly
    sketch = PreconditionedSpectrum(op, [q], method="sketch")
    lower, upper = sketch.residual_bounds(q)
    assert lower <= TOL < upper  # the damped fit's leak along it hides the residual: not established


def test_the_preconditioner_and_the_solves_resume_from_their_checkpoints(tmp_path, monkeypatch):
    model, x, J = _mlp()
    op = JacobianOperator(model, x)
    q = torch.randn(J.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    first = PreconditionedSpectrum(op, [q], method="sketch", checkpoints=RunStore(tmp_path))
    bounds = first.residual_bounds(q)

    def no_pass(*args, **kwargs):
        raise AssertionError("the Jacobian was read again")

    monkeypatch.setattr(JacobianOperator, "row_blocks", no_pass)
    monkeypatch.setattr(JacobianOperator, "matvec", no_pass)
    again = PreconditionedSpectrum(op, [q], method="sketch", checkpoints=RunStore(tmp_path))
    assert again.residual_bounds(q) == bounds
    np.testing.assert_array_equal(again.eigenvalues, first.eigenvalues)


def test_a_wide_j_or_an_unknown_vector_is_refused_clearly():
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    wide = JacobianOperator(model, torch.randn(4, 5, dtype=F64))  # nm = 12 < d = 18
    with pytest.raises(DiagnosticsError, match="tall"):
        PreconditionedSpectrum(wide, method="sketch")
    model, x, J = _mlp()
    spectrum = PreconditionedSpectrum(JacobianOperator(model, x), [torch.ones(J.shape[0], dtype=F64)],
                                      method="sketch")
    with pytest.raises(DiagnosticsError, match="not given at construction"):
        spectrum.captured_fraction(torch.arange(J.shape[0], dtype=F64))
