"""When the statements about gradient descent apply to a run: plain full-batch SGD on the squared loss at a stable
step, and every other recipe with its reason."""

from __future__ import annotations

import pytest
import torch

from diagnostics.width.recipe import GD_PREMISE, describe, gradient_descent_premise, merge_reasons

SGD = {"name": "SGD", "lr": 0.5, "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False}


def premise(optimizer=SGD, **changes):
    return gradient_descent_premise(optimizer, **{"loss": "mse", "full_batch": True, "step_size": 0.5,
                                                  "lambda_max": 20.0, "n": 10, **changes})


def test_plain_full_batch_gradient_descent_at_a_stable_step_meets_the_premise():
    met = premise()
    assert met.name == GD_PREMISE and met.met is True and "ηλ_max(K_0)/n = 1 ≤ 2" in met.note
    assert premise(lambda_max=40.0).met  # ηλ/n = 2: the edge itself is stable
    assert premise(step_size=None).met  # before training: everything but the step is known


@pytest.mark.parametrize(("changes", "reason"), [
    ({"lambda_max": 40.2}, "a step beyond the edge of stability of K_0, ηλ_max(K_0)/n = 2.01 > 2"),
    ({"loss": "ce"}, "trained on the ce loss, not (1/2n)‖f − Y‖²"),
    ({"full_batch": False}, "minibatches"),
    ({"full_batch": None}, "not known to be full-batch on the probe"),
    ({"custom_step": True}, "a custom train_step"),
    ({"scheduler": "cosine"}, "a learning-rate schedule (cosine)"),
    ({"clip_grad_norm": 1.0}, "gradient clipping at norm 1"),
    ({"optimizer": {**SGD, "momentum": 0.9}}, "SGD with momentum 0.9"),
    ({"optimizer": {**SGD, "weight_decay": 0.01}}, "SGD with weight decay 0.01"),
    ({"optimizer": {"name": "AdamW", "lr": 1e-3}}, "AdamW is not plain gradient descent"),
    ({"optimizer": None}, "the optimiser is not known"),
])
def test_every_other_recipe_fails_the_premise_with_its_reason(changes, reason):
    failed = premise(**changes)
    assert failed.met is False and reason in failed.note


def test_describe_gives_the_header_form_of_the_callbacks():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, weight_decay=0.1)
    info = describe(optimizer)
    assert info["name"] == "AdamW" and info["lr"] == 1e-3 and info["weight_decay"] == 0.1
    assert info["betas"] == [0.9, 0.999] and "params" not in info and describe(None) is None


def test_reasons_of_many_runs_are_merged_with_the_range_of_the_edge():
    notes = [premise(lambda_max=60.0).note, premise(lambda_max=50.0, optimizer={**SGD, "momentum": 0.9}).note,
             premise(loss="ce").note]
    assert merge_reasons(notes) == ("a step beyond the edge of stability of K_0, ηλ_max(K_0)/n = 2.5–3 > 2; "
                                    "SGD with momentum 0.9; trained on the ce loss, not (1/2n)‖f − Y‖²")
