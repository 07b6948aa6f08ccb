"""The tracker's cheap tier: exact products against the autograd reference, every model the full records measure,
the tiers in a history, and the first record that reuses the reference's measurement."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, assert_unchanged
from torch import nn

import theory
from diagnostics import ntk_gram, reference_jacobian
from diagnostics.tracking import AlignmentTracker, verify_history
from diagnostics.tracking.cheap import CheapTier
from diagnostics.tracking.tracker import CHEAP_COLUMNS, COLUMNS, TRAILING

pytestmark = [pytest.mark.usefixtures("one_thread"), NO_VMAP_FALLBACK_WARNING]
F64 = torch.float64


def _expected(J: torch.Tensor, f: torch.Tensor, y: torch.Tensor, loss: str) -> dict[str, torch.Tensor | float]:
    """Loss, ``‖Jᵀg‖``, ``JᵀQ`` and ``QᵀKQ/‖Q‖²`` from the Jacobian, written out for each loss."""
    n, m = f.shape
    if loss == "mse":
        Q = y.reshape(n, m).to(F64)
        value, g = float(((f - Q) ** 2).sum() / (2 * n)), (f - Q) / n
    else:
        onehot = nn.functional.one_hot(y, m).to(F64)
        Q = onehot - 1 / m  # centred one-hot
        value = float(nn.functional.cross_entropy(f, y))
        g = (torch.softmax(f, 1) - onehot) / n
    pullback = J.T @ Q.reshape(-1)
    return {"loss": value, "grad_norm": float((J.T @ g.reshape(-1)).norm()), "pullback": pullback,
            "target_quotient": float(pullback @ pullback) / float((Q**2).sum())}


@pytest.mark.parametrize(("cid", "loss", "mode"), [("mlp", "mse", "eval"), ("resnet-bn", "ce", "eval"),
                                                   ("resnet-bn", "ce", "batch"), ("transformer-dict", "ce", "eval")])
def test_cheap_quantities_are_exact_on_every_model_the_full_records_measure(cid, loss, mode):
    """The transformer's attention (``scaled_dot_product_attention``) has no forward-mode derivative on the CPU:
    the cheap record uses reverse mode only, as the full records do."""
    case = CASES.get(cid) or IO_CASES[cid]
    output = getattr(case, "output", None)
    torch.manual_seed(0)
    model, x = case.model().double(), case.data(6)
    x = x.double() if isinstance(x, torch.Tensor) else x
    J = reference_jacobian(model, x, output=output, mode=mode)
    measured = copy.deepcopy(model).eval()  # the measurement's mode: eval, or batch statistics in batch norm
    for m in measured.modules():
        if mode == "batch" and isinstance(m, nn.BatchNorm2d):
            m.train().track_running_stats = False
    with torch.no_grad():
        f = measured(**x)[output] if isinstance(x, dict) else measured(x)
    y = torch.randn(f.shape, dtype=F64) if loss == "mse" else torch.arange(6) % f.shape[1]
    cheap = assert_unchanged(model, lambda: CheapTier(x, y, loss=loss, output=output, mode=mode).measure(model))
    expected = _expected(J, f.to(F64), y, loss)
    assert cheap.dtype == F64 and (cheap.n, cheap.m) == tuple(f.shape)
    assert cheap.loss == pytest.approx(expected["loss"], rel=1e-12)
    assert cheap.grad_norm == pytest.approx(expected["grad_norm"], rel=1e-10)
    assert cheap.target_quotient == pytest.approx(expected["target_quotient"], rel=1e-10)
    torch.testing.assert_close(cheap.pullback, expected["pullback"], rtol=0, atol=1e-10)


def test_cheap_records_compute_in_the_models_dtype_unless_told():
    torch.manual_seed(0)
    model, x, y = CASES["mlp"].model().float(), CASES["mlp"].data(6).float(), torch.arange(6) % 3
    assert CheapTier(x, y, loss="ce").measure(model).dtype == torch.float32
    double = CheapTier(x, y, loss="ce", dtype=F64).measure(model)
    single = CheapTier(x, y, loss="ce").measure(model)
    assert double.dtype == F64 and single.grad_norm == pytest.approx(double.grad_norm, rel=1e-5)
    tracker = AlignmentTracker(model, (x, y), loss="ce", full_every=2, probe_size=None)
    records = [tracker.measure(0), tracker.measure(1)]
    assert [r["dtype"] for r in records] == ["float64", "float32"]  # the full record's verdicts in float64


def test_a_tracker_with_a_cheap_tier_alternates_tiers_and_judges_only_full_records(tmp_path):
    case = CASES["mlp"]
    model, X = case.model(), case.data(10)
    Y = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / "run.jsonl"
    tracker = AlignmentTracker(model, (X, Y), every=2, full_every=3, probe_size=None, path=path, dtype=F64)
    J0 = reference_jacobian(model, X)
    pullbacks = []
    for step in range(13):
        tracker.step(step)
        if step % 2 == 0:
            pullbacks.append(reference_jacobian(model, X).T @ Y.reshape(-1))
        opt.zero_grad()
        (((model(X) - Y) ** 2).sum() / 20).backward()
        opt.step()
    h = tracker.history
    assert list(h.columns) == [*COLUMNS, *TRAILING, *CHEAP_COLUMNS]
    assert h.step.tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert h.tier.tolist() == ["full", "cheap", "cheap", "full", "cheap", "cheap", "full"]
    cheap, full = h[h.tier == "cheap"], h[h.tier == "full"]
    assert cheap[["residual", "rank", "certificate", "kernel_movement_init"]].isna().all().all()
    assert cheap[["loss", "grad_norm", "target_quotient", "param_movement"]].notna().all().all()
    assert cheap.d1_status.isna().all() and cheap.aligned.isna().all()  # a cheap record says nothing about D1
    assert set(full.d1_status) <= set(theory.STATUSES)
    judged = verify_history(h)
    assert set(judged.step) == set(full.step)
    # the movements of JᵀQ since the reference and since the previous record, and QᵀKQ/‖Q‖², are exact
    p0, last, previous = J0.T @ Y.reshape(-1), pullbacks[-1], pullbacks[-2]
    assert h.pullback_movement_init.iloc[-1] == pytest.approx(float((last - p0).norm() / p0.norm()), rel=1e-9)
    assert h.pullback_movement_prev.iloc[-1] == pytest.approx(float((last - previous).norm() / previous.norm()),
                                                               rel=1e-9)
    assert h.target_quotient.iloc[-1] == pytest.approx(float(last @ last) / float((Y**2).sum()), rel=1e-9)
    K = ntk_gram(model, X)  # a full record's QᵀKQ/‖Q‖² is the same quantity, from its own Gram
    q = Y.reshape(-1)
    assert AlignmentTracker(model, (X, Y), full_every=1, probe_size=None).measure(0)["target_quotient"] == (
        pytest.approx(float(q @ K @ q) / float(q @ q), rel=1e-9))
    assert "4 cheap" in tracker.summary()
    # resuming reads J_0ᵀQ back; the first record after a resume has no previous pullback
    resumed = AlignmentTracker(model, (X, Y), every=2, full_every=3, probe_size=None, path=path, dtype=F64)
    record = resumed.measure(14)
    assert math.isnan(record["pullback_movement_prev"]) and record["pullback_movement_init"] > 0


def test_cheap_records_leave_the_model_alone_and_ignore_autocast():
    model = CASES["resnet-bn"].model().train()
    x, y = CASES["resnet-bn"].data(8), torch.arange(8) % 3
    model(x).sum().backward()
    tracker = AlignmentTracker(model, (x, y), loss="ce", full_every=2, probe_size=None)
    plain = assert_unchanged(model, lambda: tracker.measure(1))
    assert plain["tier"] == "cheap"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = AlignmentTracker(model, (x, y), loss="ce", full_every=2, probe_size=None).measure(1)
    for column in ("loss", "grad_norm", "target_quotient", "pullback_movement_init", "param_movement"):
        assert again[column] == plain[column], column


def test_the_first_record_reuses_the_reference_measurement_while_the_model_is_unchanged(monkeypatch):
    """Start-up measures once: the reference taken at construction is the first record's measurement."""
    model, X = CASES["resnet-bn"].model(), CASES["resnet-bn"].data(8)
    y = torch.arange(8) % 3
    calls = {"full": 0}
    observe = AlignmentTracker._observe

    def counted(self):
        calls["full"] += 1
        return observe(self)

    monkeypatch.setattr(AlignmentTracker, "_observe", counted)
    tracker = AlignmentTracker(model, (X, y), loss="ce", full_every=2, probe_size=None)
    first = tracker.measure(0)
    assert calls["full"] == 1 and first["kernel_movement_init"] == 0 and first["pullback_movement_init"] == 0
    assert first["measure_seconds"] > 0  # the reference's measurement time, spent at construction
    # the same record from a tracker that measures afresh
    fresh = AlignmentTracker(model, (X, y), loss="ce", full_every=2, probe_size=None)
    fresh._pending = None
    again = fresh.measure(0)
    assert again["rank"] == first["rank"] and again["target_quotient"] == first["target_quotient"]
    for column in ("loss", "grad_norm", "residual", "certificate"):  # auto may settle on another exact plan
        assert again[column] == pytest.approx(first[column], rel=1e-12, abs=1e-15), column
    # a buffer that moved (batch norm's running statistics in a training forward) makes the reference stale
    late = AlignmentTracker(model, (X, y), loss="ce", full_every=2, probe_size=None)
    calls["full"] = 0
    model.train()(X)
    assert late.measure(0)["kernel_movement_init"] > 0 and calls["full"] == 1
