"""When the statements about gradient descent apply to a run of a study: theory's premises on the recipe
(theory/recipe.md) observed on it, with those only a study observes, and every other recipe with its reason."""

from __future__ import annotations

import pytest

from diagnostics.width.recipe import applies, merge_reasons, premise_reasons, recipe_premises

SGD = {"name": "SGD", "lr": 0.5, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False,
       "maximize": False}


def premises(statement="horizon", optimizer=SGD, **changes):
    return recipe_premises(statement, optimizer, **{"loss": "mse", "full_batch": True, "step_size": 0.5,
                                                    "lambda_max": 20.0, "n": 10, **changes})


def test_plain_full_batch_gradient_descent_at_a_stable_step_meets_every_premise():
    for statement in ("horizon", "linearised", "final_horizon", "rate"):
        found = premises(statement)
        assert all(p.met is True for p in found) and premise_reasons(found) == "", statement
    assert applies(premises("linearised", lambda_max=40.0))  # ηλ/n = 2: the edge itself is stable
    assert applies(premises("linearised", lambda_max=None))  # before training: the stable step is assumed
    # a horizon floor speaks of the slow directions at any step (its unstable part is named beside it)
    assert applies(premises("horizon", lambda_max=400.0)) and applies(premises("final_horizon", lambda_max=400.0))


@pytest.mark.parametrize(("changes", "reason"), [
    ({"lambda_max": 40.2}, "ηλ_max/n = 2.01: linearised gradient descent"),
    ({"loss": "ce"}, "trained on the ce loss, not (1/2n)‖f − Y‖²"),
    ({"full_batch": False, "batches": "minibatches of 16 of 48 samples"}, "minibatches of 16 of 48 samples"),
    ({"custom_step": True}, "a custom train_step"),
    ({"scheduler": "cosine"}, "a learning-rate schedule (cosine)"),
    ({"clip_grad_norm": 1.0}, "gradient clipping at norm 1"),
    ({"optimizer": {**SGD, "momentum": 0.9}}, "SGD with heavy-ball momentum"),
    ({"optimizer": {"name": "AdamW", "lr": 1e-3}}, "AdamW is not plain gradient descent"),
])
def test_every_other_recipe_fails_the_linearised_premises_with_its_reason(changes, reason):
    found = premises("linearised", **changes)
    assert not applies(found) and reason in premise_reasons(found)
    horizon = premises("horizon", **changes)
    assert applies(horizon) == ("lambda_max" in changes)  # the step is no premise of the horizon floor


def test_the_rate_needs_full_batch_squared_losses_and_no_particular_update_rule():
    for changes in ({"optimizer": {"name": "AdamW", "lr": 1e-3}}, {"scheduler": "cosine"}, {"clip_grad_norm": 1.0},
                    {"lambda_max": 400.0}):
        assert applies(premises("rate", **changes)), changes
    for changes, reason in (({"loss": "ce"}, "trained on the ce loss"), ({"full_batch": False}, "minibatch"),
                            ({"custom_step": True}, "a custom train_step")):
        found = premises("rate", **changes)
        assert not applies(found) and reason in premise_reasons(found)


def test_reasons_of_many_runs_are_merged_with_the_range_of_the_unstable_steps():
    notes = [premise_reasons(premises("linearised", lambda_max=60.0)),
             premise_reasons(premises("linearised", lambda_max=50.0, optimizer={**SGD, "momentum": 0.9})),
             premise_reasons(premises("linearised", loss="ce"))]
    merged = merge_reasons(notes)
    assert merged.startswith("an unstable step, ηλ_max/n = 2.5–3 > 2, along which linearised gradient descent")
    assert merged.count("trained on the ce loss") == 1 and "SGD with heavy-ball momentum" in merged
