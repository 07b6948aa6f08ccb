"""The paper's results (theory/results.md, theory/width.md) on real training trajectories on the digits, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diagnostics import check_cms
from diagnostics.data import load_dataset
from diagnostics.errors import DiagnosticsError
from diagnostics.models import MLP, ResNet
from diagnostics.tracking import AlignmentTracker
from diagnostics.tracking.verification import (
    convex_bound_verdicts,
    counting_verdicts,
    decomposition_verdicts,
    domination_verdicts,
    lower_bound_verdicts,
    verify_history,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=60, flatten=True, dtype=torch.float64)


def _mlp(width: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(64, width, 10, depth=1, activation="tanh", **kwargs).double()


def _full_batch_gd(model, X, target, trackers, steps: int, lr: float, loss: str = "mse") -> None:
    """Full-batch gradient descent on (X, target), each tracker told about every step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps + 1):
        for tracker in trackers:
            tracker.step(step)
        opt.zero_grad()
        f = model(X)
        value = F.cross_entropy(f, target) if loss == "ce" else ((f - target) ** 2).sum() / (2 * X.shape[0])
        value.backward()
        opt.step()


def _all_hold(verdicts) -> bool:
    return all(v.holds for v in verdicts)


def test_gradient_descent_on_digits_follows_i2_and_i3(digits):
    X, Y = digits.X_train[:50], F.one_hot(digits.y_train[:50], 10).double()
    model = _mlp(32)
    full = AlignmentTracker(model, (X, Y), every=8, probe_size=None, representation=["layers.0"])
    head = AlignmentTracker(model, (X, Y), every=8, probe_size=None, params=["head"])  # Col J ≠ R^{nm}
    _full_batch_gd(model, X, Y, [full, head], steps=40, lr=0.05)

    h = full.history
    assert len(h) == 6 and h.loss.iloc[-1] < 0.5 * h.loss.iloc[0]
    assert (h.decomposition_gap.abs() < 1e-8).all()
    assert h.aligned.all() and (h.bound_ratio[h.aligned] <= 1).all()
    assert (h.loss >= h.loss_lower_bound).all()
    assert (h.kernel_movement_init.iloc[1:] > 0).all() and (h["cka_layers.0"].iloc[1:] < 1).all()
    checks = verify_history(h)
    assert (checks.status == "holds").all()
    assert (checks[checks.statement == "I3"].status == "holds").all()  # I3 applicable and checked at every record
    assert checks[checks.statement == "S1"].sanity.all() and not checks[checks.statement != "S1"].sanity.any()

    # With the head's parameters only, P projects onto a proper subspace: (I2) is exact and not trivial.
    g = head.history
    assert (g["rank"] == 10 * 33).all() and (g.residual > 0.1).all()
    assert (g.decomposition_gap.abs() < 1e-8).all()
    assert (g.loss >= g.loss_lower_bound).all() and (g.loss_lower_bound > 0.05).all()
    assert _all_hold(decomposition_verdicts(g)) and _all_hold(lower_bound_verdicts(g))
    assert domination_verdicts(g).map(lambda v: v.status == "not applicable").all()  # D1 refuted: premise fails


def test_fewer_parameters_than_nm_never_interpolate(digits):
    X, Y = digits.X_train, F.one_hot(digits.y_train, 10).double()
    model = _mlp(7)  # d = 535 < nm = 600
    tracker = AlignmentTracker(model, (X, Y), every=10, probe_size=None)
    _full_batch_gd(model, X, Y, [tracker], steps=40, lr=0.2)

    h = tracker.history
    assert (h.n_params < h.n_outputs).all() and (h["rank"] <= h.n_params).all()
    assert (h.residual > 0.1).all()
    assert (h.loss > h.loss_lower_bound).all() and (h.loss_lower_bound > 0).all()
    assert (h.decomposition_gap.abs() < 1e-8).all()
    counting = counting_verdicts(h)
    assert _all_hold(counting) and all(v.details["underparameterised"] and v.sanity for v in counting)
    checks = verify_history(h)
    assert (checks.status != "refuted").all()
    # D1 fails here, but the Gram cannot show it: the digits' border pixels are 0 in every sample, so their
    # weights give J zero columns and rank J < d; the directions left over may hold Col J below the resolution
    # (theory/alignment.md#resolution). D1 is therefore undecided, and I3 resting on it is never refuted.
    assert (h["rank"] < h.n_params).all() and (h.d1_status == "not established").all()
    assert (checks[checks.statement == "I3"].status != "not applicable").all()
    assert all("undecided" in str(v.verdict.premises[0]) for v in checks[checks.statement == "I3"].itertuples())


def test_a_linear_head_on_its_own_parameters_refutes_d1_where_the_count_is_exact(digits):
    # d = 7·10 + 10 = 80 parameters of the head, every one of them moving f_X: rank J = d < nm, so the
    # discarded directions are null K and D1's failure is shown (theory/alignment.md#resolution)
    X, Y = digits.X_train, F.one_hot(digits.y_train, 10).double()
    model = _mlp(7)
    tracker = AlignmentTracker(model, (X, Y), every=10, probe_size=None, params=["head.weight", "head.bias"])
    _full_batch_gd(model, X, Y, [tracker], steps=20, lr=0.2)
    h = tracker.history
    assert (h["rank"] == h.n_params).all() and (h.d1_status == "refuted").all() and (h.residual > 0.1).all()
    assert (h.data_level_status == "holds").all()  # f is linear in the head: f_X ∈ Col J, shown
    assert (verify_history(h).query("statement == 'I3'").status == "not applicable").all()


def test_sigmoid_head_violates_cms_and_shows_a_decomposition_gap(digits):
    X, Y = digits.X_train, F.one_hot(digits.y_train, 10).double()
    model = _mlp(7, output_activation="sigmoid")  # d = 535 < nm = 600, but rank J < d (border pixels)
    cms = check_cms(model, X[:40])
    # f_X leaves a large residual outside the kept directions, which a Gram cannot attribute (rank J < min(nm, d))
    assert cms.status == "not established" and cms.column_space_residual > 1e-3
    tracker = AlignmentTracker(model, (X, Y), every=5, probe_size=None)
    _full_batch_gd(model, X, Y, [tracker], steps=10, lr=0.5)
    h = tracker.history
    assert (h.decomposition_gap.abs() > 1e-6).all() and (h.data_level_status == "not established").all()
    # the (I2) gap is there at every record, but it refutes f_X ∈ Col J only where that premise is decided
    assert all(v.status == "not established" for v in decomposition_verdicts(h))


def test_cross_entropy_on_digits_reports_and_satisfies_i4(digits):
    X, y = digits.X_train[:50], digits.y_train[:50]
    model = _mlp(32)
    tracker = AlignmentTracker(model, (X, y), loss="ce", every=8, probe_size=None)
    _full_batch_gd(model, X, y, [tracker], steps=40, lr=1.0, loss="ce")
    h = tracker.history
    assert h.loss.iloc[-1] < 0.5 * h.loss.iloc[0]
    assert np.isfinite(h[["bound", "bound_ratio", "target_loss", "certificate"]].to_numpy()).all()
    assert h.aligned.all() and (h.bound >= h.loss).all() and (h.bound_ratio <= 1).all()
    verdicts = convex_bound_verdicts(h)
    assert _all_hold(verdicts)
    assert (verify_history(h).status == "holds").all()
    with pytest.raises(DiagnosticsError, match="'mse' loss"):
        decomposition_verdicts(h)


def test_resnet_with_batch_norm_tracked_in_eval_and_batch_mode():
    digits = load_dataset("digits", dtype=torch.float64)
    keep = digits.y_train < 3
    X, y = digits.X_train[keep][:96], digits.y_train[keep][:96]
    torch.manual_seed(0)
    model = ResNet(1, 4, 3, n_blocks=1).double()
    kwargs = {"every": 4, "probe_size": 24, "representation": ["bn"]}
    eval_mode = AlignmentTracker(model, (X, y), loss="ce", mode="eval", **kwargs)
    batch_mode = AlignmentTracker(model, (X, y), loss="ce", mode="batch", **kwargs)
    head = AlignmentTracker(model, (X, y), mode="batch", params=["head"], every=4, probe_size=24)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    model.train()
    for step in range(12):  # two epochs of mini-batches of 16
        for tracker in (eval_mode, batch_mode, head):
            tracker.step(step)
        batch = order[(step % 6) * 16 : (step % 6 + 1) * 16]
        opt.zero_grad()
        F.cross_entropy(model(X[batch]), y[batch]).backward()
        opt.step()
    assert model.training  # the trackers measured in their own modes and restored training mode

    for h in (eval_mode.history, batch_mode.history):
        assert h.step.tolist() == [0, 4, 8]
        assert (h.kernel_movement_init.iloc[1:] > 0).all() and (h.cka_bn.iloc[1:] < 1).all()
        assert (verify_history(h).status == "holds").all()
        assert _all_hold(convex_bound_verdicts(h))
    assert not np.allclose(eval_mode.history.loss, batch_mode.history.loss)  # running vs batch statistics

    # f_X = W h_X + b with batch statistics too, so (I2) is exact for the batch Jacobian of the head.
    g = head.history
    assert (g.residual > 0.1).all() and (g.decomposition_gap.abs() < 1e-8).all()
    assert _all_hold(decomposition_verdicts(g)) and _all_hold(lower_bound_verdicts(g))
