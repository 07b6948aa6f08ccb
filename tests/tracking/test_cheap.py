"""The tracker's cheap tier: exact products, the witness bounds, the sketches, and the tiers in a history."""

from __future__ import annotations

import math

import pytest
import torch
from cases import CASES
from helpers import assert_unchanged
from torch import nn

import theory
from diagnostics import check_alignment, ntk_gram
from diagnostics.errors import DiagnosticsError
from diagnostics.tracking import AlignmentTracker, verify_history
from diagnostics.tracking.cheap import CheapTier
from diagnostics.tracking.tracker import CHEAP_COLUMNS, COLUMNS, TRAILING

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def _linear_model(K_eigenvalues: list[float], n: int = 12, d: int = 20) -> tuple[nn.Module, torch.Tensor]:
    """A bias-free linear model ``f(x) = w·x`` on inputs ``X`` with ``XXᵀ = K`` of the given eigenvalues.

    ``J = X`` exactly, so ``K`` is known: ``U diag(λ) Uᵀ`` with ``U`` a random orthogonal matrix.
    """
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(d, n, generator=gen, dtype=F64))
    lam = torch.tensor(K_eigenvalues, dtype=F64).repeat_interleave(n // len(K_eigenvalues))
    X = U @ torch.diag(lam.sqrt()) @ V.T
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(0.1 * torch.randn(1, d, generator=gen, dtype=F64))
    return model, X


def test_one_iteration_is_exact_when_the_target_is_an_eigenvector_of_K():
    model, X = _linear_model([1.0])  # K = XXᵀ = I: Q is fitted by the single direction JᵀQ
    Y = torch.randn(12, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    cheap = CheapTier(sketch_size=0).measure(model, X, Y, loss="mse", target=None, residual_tol=None)
    assert cheap.witness_residual < 1e-14
    assert cheap.verdict.status == theory.HOLDS
    r = model(X).detach() - Y
    assert cheap.witness_certificate == pytest.approx(float(r.norm()), rel=1e-12)  # B = ‖J⁺r‖ = ‖r‖ for K = I
    assert cheap.loss == pytest.approx(float((r**2).sum() / 24), rel=1e-14)
    assert cheap.grad_norm == pytest.approx(float((X.T @ r).norm() / 12), rel=1e-12)
    assert math.isnan(cheap.kernel_alignment) and cheap.sketch is None


def test_iterations_grow_the_krylov_space_until_the_fit_is_exact():
    """``K`` with four distinct eigenvalues: ``Q`` is a combination of ``KQ, …, K⁴Q``, reached after four steps
    (each adds ``K`` times the residuals of ``[Q, f]``), not before."""
    model, X = _linear_model([1.0, 0.3, 0.05, 0.01])
    Y = torch.randn(12, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    witnesses = []
    for iterations in (1, 2, 3, 4):
        cheap = CheapTier(sketch_size=0, iterations=iterations).measure(model, X, Y, loss="mse", target=None,
                                                                     residual_tol=None)
        witnesses.append(cheap.witness_residual)
        assert cheap.verdict.status == (theory.HOLDS if iterations == 4 else theory.NOT_ESTABLISHED)
    assert witnesses[0] > witnesses[1] > witnesses[2] > 0.1 and witnesses[3] < 1e-10
    # an exact fit by a witness in the row space is the least-norm one: its certificate is B = ‖J⁺r‖
    assert cheap.witness_certificate == pytest.approx(check_alignment(model, (X, Y), probe_size=None).certificate,
                                                      rel=1e-9)


def test_the_witness_bounds_the_residual_and_never_refutes():
    """``d = 6 < nm = 12``: ``Q ∉ Col J``. The full record refutes D1; the cheap record is an upper bound."""
    gen = torch.Generator().manual_seed(3)
    X, Y = torch.randn(12, 6, generator=gen, dtype=F64), torch.randn(12, 1, generator=gen, dtype=F64)
    model = nn.Linear(6, 1, bias=False).double()
    tracker = AlignmentTracker(model, (X, Y), probe_size=None, full_every=1, sketch_size=0, cheap_iterations=4)
    record = tracker.measure(0)
    assert record["d1_status"] == theory.REFUTED and record["residual"] > 0.1
    assert record["witness_residual"] >= record["residual"] - 1e-12
    assert record["witness_residual"] == pytest.approx(record["residual"], rel=1e-8)  # 4 steps span Col J here
    cheap = CheapTier(sketch_size=0, iterations=4).measure(model, X, Y, loss="mse", target=None, residual_tol=None)
    assert cheap.verdict.status == theory.NOT_ESTABLISHED and "does not refute" in cheap.verdict.details["reason"]


@pytest.mark.parametrize("cid", ["mlp", "resnet-bn"])
def test_sketch_products_are_exact(cid):
    case = CASES[cid]
    model, x = case.model(), case.data(6)
    y = torch.arange(6) % 3
    tier = CheapTier(sketch_size=3, seed=5)
    cheap = tier.measure(model, x, y, loss="ce", target=None, residual_tol=None)
    K = ntk_gram(model, x)
    S = torch.randn(K.shape[0], 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    torch.testing.assert_close(cheap.sketch, K @ S, rtol=0, atol=1e-10)
    Q = torch.nn.functional.one_hot(y, 3).to(F64) - 1 / 3
    q = Q.reshape(-1)
    expected = float(q @ K @ q) / (float(q @ q) * math.sqrt(float(((K @ S) ** 2).sum()) / 3))
    assert cheap.kernel_alignment == pytest.approx(expected, rel=1e-10)


def test_a_tracker_with_a_cheap_tier_alternates_tiers_and_judges_only_full_records(tmp_path):
    case = CASES["mlp"]
    model, X = case.model(), case.data(10)
    Y = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.jsonl"
    tracker = AlignmentTracker(model, (X, Y), every=2, full_every=3, probe_size=None, path=path)
    S = torch.randn(30, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    K0S = ntk_gram(model, X) @ S
    for step in range(13):
        tracker.step(step)
        KS = ntk_gram(model, X) @ S
        opt.zero_grad()
        (((model(X) - Y) ** 2).sum() / 20).backward()
        opt.step()
    h = tracker.history
    assert list(h.columns) == [*COLUMNS, *TRAILING, *CHEAP_COLUMNS]
    assert h.step.tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert h.tier.tolist() == ["full", "cheap", "cheap", "full", "cheap", "cheap", "full"]
    cheap, full = h[h.tier == "cheap"], h[h.tier == "full"]
    assert cheap[["residual", "rank", "certificate", "kernel_movement_init"]].isna().all().all()
    assert cheap[["loss", "grad_norm", "witness_residual", "param_movement"]].notna().all().all()
    assert set(cheap.d1_status) <= {theory.HOLDS, theory.NOT_ESTABLISHED}
    assert (full.witness_residual >= full.residual - 1e-12).all()
    judged = verify_history(h)
    assert set(judged.step) == set(full.step)
    # the sketched movement is ‖(K_t − K_0)S‖/‖K_0S‖ with the tracker's sketch (seed 0 + 1)
    assert h.kernel_movement_sketch.iloc[-1] == pytest.approx(float((KS - K0S).norm() / K0S.norm()), rel=1e-9)
    assert "4 cheap" in tracker.summary()
    # resuming reads K_0 S back; the first record after a resume has no previous sketch
    resumed = AlignmentTracker(model, (X, Y), every=2, full_every=3, probe_size=None, path=path)
    record = resumed.measure(14)
    assert math.isnan(record["kernel_velocity_sketch"]) and record["kernel_movement_sketch"] > 0
    with pytest.raises(DiagnosticsError, match="positive integer"):
        AlignmentTracker(model, (X, Y), full_every=0)
    with pytest.raises(DiagnosticsError, match="sketch_size"):
        AlignmentTracker(model, (X, Y), full_every=2, sketch_size=-1)


def test_cheap_records_leave_the_model_alone_and_ignore_autocast():
    model = CASES["resnet-bn"].model().train()
    x, y = CASES["resnet-bn"].data(8), torch.arange(8) % 3
    model(x).sum().backward()
    tracker = AlignmentTracker(model, (x, y), loss="ce", full_every=2, probe_size=None)
    plain = assert_unchanged(model, lambda: tracker.measure(1))
    assert plain["tier"] == "cheap"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = AlignmentTracker(model, (x, y), loss="ce", full_every=2, probe_size=None).measure(1)
    for column in ("loss", "grad_norm", "witness_residual", "witness_certificate", "kernel_alignment_sketch"):
        assert again[column] == plain[column], column
