"""The application: training that keeps D1 by construction (``theory/application.md``).

Exact answers where there are some (the one-step distance identity of gradient descent in float64), and
the guarantee checked on real trajectories: full-batch gradient descent with a small step keeps every
post-τ record under the bound. The linear algebra is in ``test_solve.py``, the augmented model in
``test_features.py``.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import MAPS, aligned_closure, aligned_problem, train_aligned
from torch import nn

from diagnostics import DiagnosticsError, InsufficientMemoryError, UnsupportedModelError
from diagnostics.aligned import AlignedTraining

F64 = torch.float64


def test_the_check_does_not_touch_the_original_model(device):
    model, X, y = aligned_problem(device=device)
    model.train()
    model.bn1.eval()  # a mixed state must come back exactly as it was
    modes = {k: m.training for k, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    for feature_map in ("penultimate", "tangent"):
        AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), train_data=(X, y), switch_step=0,
                        feature_map=feature_map)
        assert {k: m.training for k, m in model.named_modules()} == modes
        assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
        for k, v in model.state_dict().items():  # running statistics and num_batches_tracked included
            assert torch.equal(v, state[k]), k


# -- the guarantee on its own trajectories -----------------------------------------------------------


@pytest.mark.parametrize("feature_map,coefficients", MAPS)
def test_full_batch_gd_squared_loss_keeps_every_record_under_the_bound(feature_map, coefficients, device):
    trainer = train_aligned(feature_map, coefficients, loss="mse", device=device)
    report, guarantee, hist = trainer.switch_report, trainer.guarantee(), trainer.history()
    assert report.aligned and report.residual + report.rounding <= report.residual_tol
    assert guarantee.status == "theorem" and not guarantee.departures
    assert guarantee.records == len(hist) - 1 > 30 and guarantee.all_bounds_hold
    assert (hist.bound_ratio[1:] <= 1).all() and hist.step_ok.all()  # η‖∇_{ω,u}L‖² ≤ 4L at every step
    assert guarantee.distance.holds and (np.diff(hist.distance) <= 0).all()
    assert guarantee.telescoping.holds and guarantee.identity.holds
    assert guarantee.identity.details["first_failure"] is None
    assert hist.update_ok.all() and (hist.update_error < 1e-5).all()  # the applied update was −η∇L
    # the exact one-step identity ‖x_{k+1} − x*‖² − ‖x_k − x*‖² = −4ηL_k + η²‖∇_{ω,u}L_k‖²
    change = hist.distance_next**2 - hist.distance**2
    predicted = -4 * hist.lr * hist.loss + hist.lr**2 * hist.grad_sq
    np.testing.assert_allclose(change, predicted, rtol=1e-7, atol=1e-10 * hist.distance[0] ** 2)
    assert report.omega_norm_sq + report.nu_norm_sq == pytest.approx(hist.distance[0] ** 2, rel=1e-10)


@pytest.mark.parametrize("feature_map,coefficients", MAPS)
def test_full_batch_gd_cross_entropy_keeps_every_record_under_the_convex_bound(feature_map, coefficients):
    trainer = train_aligned(feature_map, coefficients, loss="ce", lr=0.05)
    guarantee, hist = trainer.guarantee(), trainer.history()
    assert guarantee.status == "theorem" and guarantee.all_bounds_hold
    assert (hist.loss > trainer.switch_report.distance_target_loss).all()
    # while L ≥ L(cQ₀) the convex one-step inequality makes the distance non-increasing
    assert hist.step_ok.all() and guarantee.distance.holds
    change = hist.distance_next**2 - hist.distance**2
    bound = -2 * hist.lr * (hist.loss - trainer.switch_report.distance_target_loss) + hist.lr**2 * hist.grad_sq
    assert (change <= bound + 1e-10).all()


def test_the_identity_holds_whatever_the_body_does():
    # Correction 10: only (ω, u) need gradient steps; the body may use momentum.
    model, X, y = aligned_problem()
    head = [model.head.weight, model.head.bias]
    body = [p for p in model.parameters() if all(p is not q for q in head)]
    opt = torch.optim.SGD([{"params": body, "momentum": 0.9}, {"params": head}], lr=0.02)
    trainer = AlignedTraining(model, opt, train_data=(X, y), switch_step=3, feature_map="penultimate",
                              full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    for _ in range(30):
        trainer.step(closure)
    hist = trainer.history()
    assert trainer.guarantee().status == "theorem"
    np.testing.assert_allclose(hist.distance_next**2 - hist.distance**2,
                               -4 * hist.lr * hist.loss + hist.lr**2 * hist.grad_sq, rtol=1e-7, atol=1e-10)


def test_a_step_too_large_is_caught_by_the_discrete_condition():
    trainer = train_aligned("penultimate", "full", loss="mse", steps=10, lr=2.0)
    hist, guarantee = trainer.history(), trainer.guarantee()
    # plain gradient steps and the identity holds, but the step condition fails: the theorem is not earned
    assert guarantee.status == "check" and guarantee.identity.holds
    assert any("step condition" in d and "first at step" in d for d in guarantee.departures)
    assert not hist.step_ok.all() and guarantee.step_condition_failures > 0
    increased = hist.distance_next > hist.distance
    assert (increased == ~hist.step_ok).all()  # the condition is exact for the squared loss
    assert guarantee.distance.status == "not applicable"  # monotonicity needs the step condition


def test_gradient_clipping_is_named_and_the_identity_refuted():
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=3, full_batch=True)
    plain = aligned_closure(trainer, X, y, "mse")

    def clipped():
        value = plain()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), max_norm=0.05)
        return value

    for _ in range(12):
        trainer.step(clipped)
    guarantee = trainer.guarantee()
    assert guarantee.status == "check" and guarantee.identity.refuted
    assert any("gradient clipping" in d for d in guarantee.departures)
    assert "CHECK ONLY" in str(guarantee) and "gradient clipping" in str(guarantee)


def test_an_update_that_is_not_the_gradient_step_is_named_with_its_step():
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=3, full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    for k in range(8):
        trainer.step(closure)
        if k == 5:  # something outside the optimiser moves the output layer after the step
            with torch.no_grad():
                trainer.model.model.head.weight.mul_(1.01)
    guarantee = trainer.guarantee()
    assert guarantee.status == "check"
    assert any("differs from −η∇L at step" in d for d in guarantee.departures) or guarantee.identity.refuted


def test_a_diverged_run_is_a_check_naming_the_divergence():
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=50.0), train_data=(X, y),
                              switch_step=0, full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    loss = 0.0
    while loss < 1e42:  # the loss grows geometrically: diverged, but every number still finite
        loss = trainer.step(closure)
    guarantee = trainer.guarantee()  # formerly: ValueError("rounding must be finite")
    assert guarantee.status == "check" and "diverges" in " ".join(guarantee.departures)
    with np.errstate(all="ignore"):
        while math.isfinite(loss):  # then the numbers overflow
            loss = trainer.step(closure)
        trainer.step(closure)
    guarantee = trainer.guarantee()
    diverged = [d for d in guarantee.departures if d.startswith("the run diverged at step")]
    assert guarantee.status == "check" and diverged, guarantee.departures
    assert guarantee.identity is not None and len(trainer.history()) > guarantee.records + 1  # the steps before


def test_an_outside_write_between_closure_steps_is_seen_even_when_it_keeps_the_distance():
    # flipping the head's sign keeps ‖x − x*‖ (x* = (0, ν)), so neither the identity nor the distance sees it
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=2, full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    for k in range(8):
        trainer.step(closure)
        if k == 4:
            with torch.no_grad():
                trainer.model.model.head.weight.neg_()
                trainer.model.model.head.bias.neg_()
    hist, guarantee = trainer.history(), trainer.guarantee()
    assert hist.distance[3] == pytest.approx(hist.distance_next[2], rel=1e-12)  # the write kept the distance
    assert hist.loss[3] > hist.loss[2]  # and raised the loss
    assert guarantee.identity.holds and guarantee.status == "check"
    assert any("start of step 3 differ from what step 2 left" in d for d in guarantee.departures)
    assert "every premise observed" not in str(guarantee)


def test_a_float64_run_is_judged_with_float64_rounding():
    model, X, y = aligned_problem()
    assert next(model.parameters()).dtype == F64
    # an outside write of 1e-6 between steps
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=2, full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    for k in range(6):
        trainer.step(closure)
        if k == 3:
            with torch.no_grad():
                trainer.model.model.head.bias.add_(1e-6)
    assert any("written outside the optimiser" in d for d in trainer.guarantee().departures)
    # a recorded loss 1e-5 off the one differentiated: the identity misses by 4ηL·1e-5 ≈ 5e-7, which float32's
    # epsilon would excuse (its rounding allowance here is ≈ 5e-6) and float64's does not
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=2)
    inner = aligned_closure(trainer, X, y, "mse")
    for _ in range(6):
        trainer.step(lambda: inner() * (1 + 1e-5))
    guarantee = trainer.guarantee()
    assert guarantee.identity.refuted and guarantee.status == "check"
    records = trainer._trajectory.records
    assert all(r.eps == torch.finfo(F64).eps for r in records)
    float32 = [dataclasses.replace(r, eps=float(torch.finfo(torch.float32).eps)) for r in records]
    missed = 4 * 0.02 * 1e-5 * min(r.loss for r in records) / (1 + 1e-5)
    assert all(r.identity_rounding > missed for r in float32)  # what the former float32 epsilon excused


def test_a_declared_full_batch_is_observed_with_a_closure_and_assumed_without():
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=2, full_batch=True)
    Y = torch.nn.functional.one_hot(y, 3).to(F64)

    def minibatch():  # two thirds of the training set, taken as the full batch
        trainer.optimizer.zero_grad()
        value = ((trainer.model(X[:20]) - Y[:20]) ** 2).sum() / 40
        value.backward()
        return value

    for _ in range(6):
        trainer.step(minibatch)
    guarantee = trainer.guarantee()
    assert guarantee.identity.holds  # the identity holds per batch: only the comparison sees it
    assert guarantee.status == "check" and any("differs from the training loss" in d for d in guarantee.departures)
    full = train_aligned("penultimate", "full", steps=6)
    assert full.guarantee().status == "theorem" and not full.guarantee().assumed
    assert "every premise observed" in str(full.guarantee())
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                              switch_step=2, full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    for _ in range(6):
        value = closure()
        trainer.optimizer.step()
        trainer.step(loss=value)
    guarantee = trainer.guarantee()
    assert guarantee.status == "theorem" and "full batch" in guarantee.assumed[0]
    assert "assumed, not observed: full batch" in str(guarantee)


@pytest.mark.parametrize("make,reason", [
    (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), "momentum"),
    (lambda p: torch.optim.Adam(p, lr=1e-3), "Adam"),
    (lambda p: torch.optim.SGD(p, lr=0.01, weight_decay=1e-2), "weight_decay"),
])
def test_momentum_adam_and_weight_decay_are_reported_as_checks(make, reason):
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, make, train_data=(X, y), switch_step=2, loss="ce")
    closure = aligned_closure(trainer, X, y, "ce")
    for _ in range(6):
        trainer.step(closure)
    guarantee = trainer.guarantee()
    assert guarantee.status == "check"
    assert any(reason in d for d in guarantee.departures)
    assert "CHECK ONLY" in str(guarantee)


def test_recording_after_the_users_own_step_matches_the_closure():
    runs = []
    for use_closure in (True, False):
        model, X, y = aligned_problem()
        trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.02), train_data=(X, y),
                                  switch_step=2, full_batch=True)
        closure = aligned_closure(trainer, X, y, "mse")
        for _ in range(8):
            if use_closure:
                trainer.step(closure)
            else:
                loss = closure()
                trainer.optimizer.step()
                trainer.step(loss=loss)
        runs.append(trainer.history())
    pd_cols = ["loss", "grad_sq", "distance", "distance_next", "bound"]
    np.testing.assert_allclose(runs[0][pd_cols].to_numpy(), runs[1][pd_cols].to_numpy(), rtol=1e-12)


# -- enlargement, refusals, optimisers ---------------------------------------------------------------


def test_enlargement_records_the_residual_before_and_after():
    trainer = train_aligned("penultimate", "full", steps=4)
    report = trainer.switch_report
    assert report.residual_before > 0.1  # [h, 1] has 5 columns for 30 samples
    assert report.enlargements and report.random_features == report.enlargements[-1][0]
    assert report.aligned and report.residual < 1e-10
    assert "enlarged with random features" in str(report)
    plain = train_aligned("penultimate", "full", steps=4, enlarge=False)
    assert not plain.switch_report.aligned
    assert plain.switch_report.residual == pytest.approx(report.residual_before, rel=1e-9)
    # [h, 1] has full column rank, every direction resolved: the residual is in null K, D1 refuted
    assert plain.switch_report.verdict.refuted and plain.guarantee().status == "no guarantee"
    assert str(plain.guarantee()).startswith("NO GUARANTEE")


def _dead_unit_net(dtype):
    """``Linear(4, 6) → ReLU → Linear(6, 3)`` whose first hidden unit is dead (``h_0 = 0`` on every input)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(dtype)
    with torch.no_grad():
        net[0].weight[0] = 0.0
        net[0].bias[0] = -1.0
    return net


def _dead_unit_run(dtype, enlarge):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 4, generator=g, dtype=dtype), torch.randint(0, 3, (30,), generator=g)
    net = _dead_unit_net(dtype)
    trainer = AlignedTraining(net, torch.optim.SGD(net.parameters(), lr=0.02), train_data=(X, y), switch_step=0,
                              enlarge=enlarge, full_batch=True)
    closure = aligned_closure(trainer, X, y, "mse")
    for _ in range(5):
        trainer.step(closure)
    return trainer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_d1_not_established_for_the_frozen_block_is_named_as_not_shown(dtype):
    # [h, 1] has a zero column (a dead unit): its kept rank 6 stays below min(n, 7), so the large residual may lie in
    # a direction of Col Ψ_X below the resolution: not established, never refuted (theory/alignment.md#resolution)
    trainer = _dead_unit_run(dtype, enlarge=False)
    report, guarantee = trainer.switch_report, trainer.guarantee()
    assert report.residual > 0.1 and report.verdict.status == "not established"
    assert report.residual_tol == 1.4901161193847656e-08  # the question's tolerance in every dtype
    assert guarantee.status == "check" and guarantee.frozen_d1.status == "not established"
    text = " ".join(str(guarantee).split())
    assert text.startswith("CHECK ONLY: D1 for the frozen block is not established")
    assert "not shown: D1 for the frozen block — the exact residual lies in" in text and "discards" in text
    assert guarantee.identity is not None and not guarantee.identity.refuted  # checked, undecided premise named
    assert guarantee.to_dict()["frozen_d1"]["status"] == "not established"


def test_enlargement_follows_the_word_and_float32_never_contradicts_float64():
    # random features of h: float64 resolves every direction and D1 holds (a theorem); in float32 the enlarged
    # block is so ill-conditioned (‖ν‖² ≈ 10⁸) that recomputing it moves Q by ~1e-3: not established, where the
    # former rule (residual + rounding against sqrt(eps(float32))) said "refuted", the opposite of float64's word
    runs = {dtype: _dead_unit_run(dtype, enlarge=True) for dtype in (torch.float64, torch.float32)}
    words = {dtype: run.switch_report.verdict.status for dtype, run in runs.items()}
    assert words == {torch.float64: "holds", torch.float32: "not established"}
    assert all(run.switch_report.enlargements for run in runs.values())  # not established enlarges as well
    assert runs[torch.float64].guarantee().status == "theorem"
    assert runs[torch.float32].guarantee().status == "check"
    assert runs[torch.float32].switch_report.rounding > 1e-4  # what float32's recomputation may move


def test_tangent_map_with_fewer_parameters_than_rows_is_enlarged():
    # TinyCNN: d = 253 < nm = 360, and the random block alone is not full rank: both blocks are needed
    trainer = train_aligned("tangent", "full", case="cnn", n=120, steps=6, lr=0.005)
    report = trainer.switch_report
    assert report.residual_before > 0.01 and report.aligned
    assert report.random_features < 120
    assert trainer.guarantee().all_bounds_hold


def test_tangent_scale_changes_the_constant_not_the_column_space():
    # Ψ = αJ: same residual, ν ∝ 1/α (‖ν‖² ∝ 1/α²), tangent products ∝ α
    model, X, y = aligned_problem()
    runs = {a: AlignedTraining(copy.deepcopy(model), lambda p: torch.optim.SGD(p, lr=0.1), train_data=(X, y),
                               switch_step=0, feature_map="tangent", enlarge=False, tangent_scale=a)
            for a in (1.0, 0.25)}
    raw, small = (runs[a].switch_report for a in (1.0, 0.25))
    assert raw.tangent_scale == 1.0 and small.tangent_scale == 0.25
    assert small.residual == pytest.approx(raw.residual, rel=1e-6, abs=1e-12)
    assert small.nu_norm_sq == pytest.approx(16 * raw.nu_norm_sq, rel=1e-6)
    u = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    torch.testing.assert_close(runs[0.25].model.features.tangent_product(u, X),
                               0.25 * runs[1.0].model.features.tangent_product(u, X), rtol=1e-12, atol=1e-14)
    for bad in (0, -1.0, "auto", True):
        with pytest.raises(DiagnosticsError, match="tangent_scale"):
            AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), train_data=(X, y),
                            switch_step=0, feature_map="tangent", tangent_scale=bad)


def test_rank_one_adds_one_parameter_with_the_same_constant():
    full, rank_one = train_aligned("tangent", "full", steps=4), train_aligned("tangent", "rank-one", steps=4)
    assert rank_one.switch_report.n_coefficients == 1
    assert full.switch_report.n_coefficients == sum(p.numel() for p in full.model.model.parameters())
    assert rank_one.switch_report.nu_norm_sq == pytest.approx(full.switch_report.nu_norm_sq, rel=1e-10)
    assert len(rank_one.optimizer.param_groups[-1]["params"]) == 1


def test_an_optimizer_factory_is_rebuilt_with_the_coefficients():
    model, X, y = aligned_problem()
    calls = []

    def factory(params):
        calls.append(len(params))
        return torch.optim.SGD(params, lr=0.01)

    trainer = AlignedTraining(model, factory, train_data=(X, y), switch_step=1)
    trainer.step(aligned_closure(trainer, X, y, "mse"))
    n_params = len(list(model.parameters()))
    assert calls == [n_params, n_params + 1]
    assert any(p is trainer.model.coefficients["features"] for p in trainer.optimizer.param_groups[0]["params"])


class _SoftmaxOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return torch.softmax(self.head(torch.tanh(self.body(x))), 1)


def test_refusals_name_the_problem():
    X, y = torch.randn(10, 4, dtype=F64), torch.randint(0, 3, (10,))
    model = _SoftmaxOut().double()
    with pytest.raises(UnsupportedModelError, match="affine output layer"):
        AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), train_data=(X, y), switch_step=1)
    ok, _, _ = aligned_problem()
    with pytest.raises(DiagnosticsError, match="output layer"):
        AlignedTraining(ok, torch.optim.SGD(ok.stem.parameters(), lr=0.1), train_data=aligned_problem()[1:],
                        switch_step=1)
    with pytest.raises(DiagnosticsError, match="feature_map"):
        AlignedTraining(ok, torch.optim.SGD(ok.parameters(), lr=0.1), train_data=aligned_problem()[1:], switch_step=1,
                        feature_map="kernel")
    trainer = AlignedTraining(ok, torch.optim.SGD(ok.parameters(), lr=0.1), train_data=aligned_problem()[1:],
                              switch_step=5)
    assert trainer.head == "head" and not trainer.switched
    with pytest.raises(DiagnosticsError, match="before the switch"):
        trainer.guarantee()


def test_history_is_a_dataframe_with_the_documented_columns():
    hist = train_aligned("penultimate", "rank-one", steps=5).history()
    assert list(hist.columns) == ["iteration", "step", "loss", "grad_sq", "lr", "elapsed", "distance",
                                  "distance_next", "bound", "margin", "bound_ratio", "bound_holds",
                                  "step_margin", "step_ok", "update_error", "update_ok"]
    assert hist.step.tolist() == list(range(len(hist))) and hist.iteration[0] == 3
    assert math.isinf(hist.bound[0]) and hist.elapsed.iloc[-1] == pytest.approx(0.02 * (len(hist) - 1))


def test_a_check_that_would_not_fit_is_refused_before_the_switch():
    model, X, y = aligned_problem()
    state = copy.deepcopy(model.state_dict())
    for feature_map, what in (("tangent", "tangent block"), ("penultimate", "random features")):
        with pytest.raises(InsufficientMemoryError, match=f"{what}.*memory budget.*subset of the training set"):
            AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), train_data=(X, y),
                            switch_step=0, feature_map=feature_map, memory_budget=20_000)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
