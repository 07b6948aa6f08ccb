"""The premises of the gradient-descent statements for a training recipe (theory/recipe.md).

Ground truths: the optimisers of ``torch.optim`` as their histories record them (``{"name", **hyper-parameters}``),
and linearised gradient descent on a diagonal kernel, whose residual is multiplied by ``1 − ηλ/n`` per step.
"""

from __future__ import annotations

import numpy as np
import pytest

import theory

SGD = {"name": "SGD", "lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
       "maximize": False}
MOMENTUM = {**SGD, "momentum": 0.9}
ADAM = {"name": "Adam", "lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}


def _met(premises):
    return {p.name.split(" ")[0]: p.met for p in premises}


def test_plain_full_batch_gradient_descent_at_a_stable_step_meets_every_premise():
    premises = theory.gradient_descent_premises("linearised", SGD, full_batch=True, squared_loss=True,
                                                lambda_max=10.0, n=1)
    assert [p.met for p in premises] == [True, True, True, True]
    assert "ηλ_max/n = 1" in premises[-1].note


def test_the_horizon_floor_has_no_stable_step_premise():
    # the horizon floor speaks of the slow directions whatever the step (theory/alignment.md#horizon-residual)
    premises = theory.gradient_descent_premises("horizon", SGD, full_batch=True, squared_loss=True,
                                                lambda_max=1e6, n=1)
    assert [p.met for p in premises] == [True, True, True]
    assert not any(p.name.startswith("stable step") for p in premises)


@pytest.mark.parametrize(("optimizer", "why"), [
    (MOMENTUM, "momentum"),
    (ADAM, "Adam is not plain gradient descent"),
    ({**SGD, "weight_decay": 1e-4}, "weight decay"),
    ({**SGD, "maximize": True}, "ascent"),
    ([SGD, {**SGD, "lr": 0.2}], "different step sizes"),
    ({"name": "MyOptimizer", "lr": 0.1}, "MyOptimizer"),
])
def test_anything_but_plain_gradient_steps_is_a_premise_not_met(optimizer, why):
    update = theory.gradient_descent_premises("horizon", optimizer, lambda_max=1.0, n=1)[0]
    assert update.met is False and why in update.note


def test_the_unstable_step_is_a_premise_of_the_linearised_loss_not_met_with_the_growth_per_step():
    # ten times the stable step 2n/λ_max: ηλ_max/n = 20, linearised GD multiplies the top direction by 19 per step
    n, lam = 100, 50.0
    eta = 10 * 2 * n / lam
    stable = theory.gradient_descent_premises("linearised", SGD, step_size=eta, lambda_max=lam, n=n)[-1]
    assert stable.met is False and "ηλ_max/n = 20" in stable.note and "by 19 per step" in stable.note
    r = np.array([1.0])
    for _ in range(3):
        r = (1 - eta * lam / n) * r
    assert abs(r[0]) == pytest.approx(19.0**3)  # the ground truth the note states
    edge = theory.gradient_descent_premises("linearised", SGD, step_size=2 * n / lam, lambda_max=lam, n=n)[-1]
    assert edge.met is True  # |1 − ηλ/n| = 1: not growing


def test_what_is_not_observed_is_assumed_and_says_so():
    premises = theory.gradient_descent_premises("linearised", step_size=0.1)
    assert [p.met for p in premises] == [None, None, None, None]
    assert all(p.note.startswith("assumed") for p in premises)
    assert "assumed" in str(premises[1])
    # the step is read from the optimiser when not given
    assert theory.gradient_descent_premises("linearised", SGD, lambda_max=30.0, n=1)[-1].met is False


def _linearised_gd(eta, lam, c, n, steps):
    """Linearised gradient descent on a diagonal kernel from outputs at 0: the residual components after ``steps``."""
    r = -np.asarray(c, dtype=float)
    for _ in range(steps):
        r = r - eta / n * lam * r  # r ← (I − ηK/n) r, K = diag(λ)
    return r


def test_ten_times_the_stable_step_names_an_unstable_part_growing_by_19_per_step():
    # ground truth: linearised GD on K = diag(λ); the top direction's component is multiplied by 1 − 20 = −19
    n, steps = 10, 5
    lam = np.array([50.0, 30.0, 2.0, 1e-3, 1e-5])
    c = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    eta = 10 * 2 * n / lam[0]  # ten times the stable step 2n/λ_max
    part = theory.unstable_part(eta, n, lam, c**2 / (c**2).sum())
    assert part.step_ratio == pytest.approx(20.0) and part.growth == pytest.approx(19.0)
    assert part.directions == 2 and part.share == pytest.approx((0.25 + 1.0) / (c**2).sum())  # ηλ/n = 20, 12
    assert "2 directions with ηλ/n > 2" in str(part) and "by 19 per step" in str(part) and "not fitted" in str(part)
    r = _linearised_gd(eta, lam, c, n, steps)
    assert abs(r[0]) == pytest.approx(0.5 * 19.0**steps)  # the growth the part states
    assert all(abs(r[k]) > abs(c[k]) for k in (0, 1))  # not fitted: both grow
    # the slow directions (ηλT/n < 1) keep at least (1 − 1/T)^{2T} of their energy whatever the unstable ones do
    slow = eta * lam * steps / n < 1
    assert slow.tolist() == [False, False, False, True, True]
    assert (r[slow] ** 2).sum() >= (1 - 1 / steps) ** (2 * steps) * (c[slow] ** 2).sum()
    stable = _linearised_gd(eta / 100, lam, c, n, 100 * steps)  # the same ηT: the same slow directions
    assert np.allclose(r[slow], stable[slow], rtol=1e-2)  # ... fitted alike, whatever the top directions do
    assert theory.unstable_part(eta / 100, n, lam, c**2).directions == 0  # and no unstable part


def test_the_unstable_part_leaves_out_discarded_directions_and_marks_a_partial_spectrum():
    part = theory.unstable_part(1.0, 1, [5.0, 3.0, 2.5], [0.5, 0.3, 0.2], rank_tol=2.8)
    assert part.directions == 2 and part.share == pytest.approx(0.8)  # λ = 2.5 ≤ rank_tol is not counted
    top = theory.unstable_part(1.0, 1, [5.0, 3.0], [0.5, 0.3], complete=False)  # only the top eigenpairs known
    assert not top.complete and "at least 2 directions" in str(top)
    assert theory.unstable_part(1.0, 1, [5.0, 1.0], [0.5, 0.3], complete=False).complete  # the last one is stable
    assert theory.unstable_part(1.0, 1, [2.0], [1.0]).directions == 0  # |1 − ηλ/n| = 1: not growing
    assert theory.unstable_part(1.0, 1, [5.0], [1.0]).to_dict()["growth"] == 4.0
    with pytest.raises(ValueError, match="shares"):
        theory.unstable_part(1.0, 1, [5.0, 1.0], [1.0])


def test_minibatches_and_cross_entropy_are_not_met():
    premises = theory.gradient_descent_premises("horizon", SGD, full_batch=False, squared_loss=False)
    assert _met(premises)["full"] is False and _met(premises)["squared"] is False


def test_the_rate_bound_needs_full_batch_losses_not_a_gradient_step():
    momentum = theory.gradient_descent_premises("rate", MOMENTUM, full_batch=True, squared_loss=True)
    assert all(p.met for p in momentum)  # any update rule
    minibatch = theory.gradient_descent_premises("rate", SGD, full_batch=False, squared_loss=True)
    verdict = theory.gradient_descent_rate(1.0, [1.0, 0.5], [1.0], 1.0, aligned=True, cms=True, recipe=minibatch)
    assert verdict.status == theory.NOT_APPLICABLE and "whole training set" in verdict.details["reason"]


def test_the_rate_bound_holds_for_a_momentum_trajectory_as_recipe_md_states():
    # a heavy-ball run on a linear least-squares model with f = Jθ (A1 exact, D1 by full row rank):
    # the bound holds at every step although the steps are not gradient steps
    rng = np.random.default_rng(0)
    n, d = 5, 12
    J, Y = rng.normal(size=(n, d)), rng.normal(size=n)
    theta, previous = np.zeros(d), np.zeros(d)
    losses, grads, certificates = [], [], []
    K_pinv = np.linalg.pinv(J @ J.T)
    for _ in range(60):
        r = J @ theta - Y
        g = J.T @ r / n
        losses.append(0.5 * r @ r / n)
        grads.append(g @ g)
        certificates.append(np.sqrt(r @ K_pinv @ r))
        theta, previous = theta - 0.05 * g + 0.8 * (theta - previous), theta
    r = J @ theta - Y
    losses.append(0.5 * r @ r / n)
    recipe = theory.gradient_descent_premises("rate", MOMENTUM, full_batch=True, squared_loss=True)
    verdict = theory.gradient_descent_rate(0.05, losses, grads, certificates, aligned=True, cms=True, recipe=recipe)
    assert verdict.holds and verdict.details["rising_steps"] > 0  # momentum overshoots, the bound still holds


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="statement"):
        theory.gradient_descent_premises("flow")
    with pytest.raises(ValueError, match="name"):
        theory.gradient_descent_premises("horizon", {"lr": 0.1})
    with pytest.raises(ValueError, match="finite"):
        theory.gradient_descent_premises("linearised", step_size=float("nan"), lambda_max=1.0, n=1)
