"""The training of width runs by a recipe, and the coordinate check of its first steps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import F64

from diagnostics.errors import DiagnosticsError
from diagnostics.models import build_model
from diagnostics.width.recipe import OptimizerFactory, Recipe, optimizer_factory
from diagnostics.width.training import COORDINATE_STEPS, CoordinateCheck, Trainer


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(10, 5, generator=g, dtype=F64)
    Y = torch.randn(10, 3, generator=g, dtype=F64)
    model = build_model("mlp", 7, input_shape=(5,), n_out=3, depth=1, parameterization="ntk", seed=seed).double()
    return model, X, Y


def test_full_batch_sgd_is_plain_gradient_descent_and_reports_the_gradient_norm():
    model, X, Y = problem()
    twin, _, _ = problem()
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.3)
    trainer = Trainer(model, Recipe(OptimizerFactory("sgd", 0.3), 5), itertools.repeat((X, Y)), 7)
    for _ in range(5):
        loss, grad_sq = trainer.step()
        optimizer.zero_grad()
        reference = 0.5 * ((twin(X) - Y) ** 2).sum() / 10
        assert loss == pytest.approx(float(reference.detach()), rel=1e-14)
        reference.backward()
        assert grad_sq == pytest.approx(sum(float((p.grad**2).sum()) for p in twin.parameters()), rel=1e-12)
        optimizer.step()
    with torch.no_grad():
        assert trainer.loss() == pytest.approx(float(0.5 * ((twin(X) - Y) ** 2).sum() / 10), rel=1e-14)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_the_recipe_applies_momentum_weight_decay_clipping_and_the_schedule():
    model, X, Y = problem()
    twin, _, _ = problem()
    recipe = Recipe(optimizer_factory("sgd", 0.2, momentum=0.9, weight_decay=0.01), 6, clip_grad_norm=0.5,
                    scheduler="cosine")
    trainer = Trainer(model, recipe, itertools.repeat((X, Y)), 7)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.2, momentum=0.9, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    for _ in range(6):
        trainer.step()
        optimizer.zero_grad()
        (0.5 * ((twin(X) - Y) ** 2).sum() / 10).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
        optimizer.step()
        schedule.step()
    assert trainer.learning_rate == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-15)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13)


def test_a_custom_step_is_called_with_the_batch_and_the_optimizer():
    model, X, Y = problem()
    calls = []

    def train_step(model, batch, optimizer):
        x, y = batch
        optimizer.zero_grad()
        loss = ((model(x) - y).abs()).mean()
        loss.backward()
        optimizer.step()
        calls.append(optimizer)
        return loss

    trainer = Trainer(model, Recipe(lambda params: torch.optim.Adam(params, lr=1e-2), 3, train_step=train_step),
                      itertools.repeat((X, Y)), 7)
    loss, grad_sq = trainer.step()
    assert calls == [trainer.optimizer] and isinstance(trainer.optimizer, torch.optim.Adam)
    assert loss > 0 and math.isnan(grad_sq) and math.isnan(trainer.loss())


def test_training_stops_on_divergence():
    model, X, Y = problem()
    trainer = Trainer(model, Recipe(OptimizerFactory("sgd", 1e6), 50), itertools.repeat((X, Y)), 7)
    with pytest.raises(FloatingPointError, match="diverged"):
        for _ in range(50):
            trainer.step()


def test_recipes_refuse_what_they_cannot_run():
    for bad, match in (({"steps": 0}, "steps"), ({"loss": "hinge"}, "loss"), ({"amp": "fp8"}, "amp"),
                       ({"scheduler": "step"}, "scheduler"), ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
                       ({"train_step": lambda m, b, o: 0.0, "clip_grad_norm": 1.0}, "custom train_step")):
        with pytest.raises(DiagnosticsError, match=match):
            Recipe(OptimizerFactory("sgd", 0.1), **{"steps": 3, **bad})
    with pytest.raises(DiagnosticsError, match="refuses its options"):
        optimizer_factory("adamw", 1e-3, momentum=0.9)
    with pytest.raises(DiagnosticsError, match="positive learning rate"):
        optimizer_factory("sgd", None)
    model, X, Y = problem()
    with pytest.raises(DiagnosticsError, match="do not fit the outputs"):  # no silent reshape of (3, 10) targets
        Trainer(model, Recipe(OptimizerFactory("sgd", 0.1), 1), itertools.repeat((X, Y.T.reshape(10, 3).T)), 7).step()


def test_coordinate_check_measures_the_probe_at_the_first_steps_and_leaves_the_model_alone():
    model, X, Y = problem()
    model.train()
    trainer = Trainer(model, Recipe(OptimizerFactory("sgd", 0.3), 6), itertools.repeat((X, Y)), 7)
    check = CoordinateCheck(model, X, ["layers.0", "head"])
    outputs = {}
    for k in range(6):
        check.measure(k)
        with torch.no_grad():
            outputs[k] = (model.layers[0](X), model(X))
        trainer.step()
    assert model.training and all(len(m._forward_hooks) == 0 for m in model.modules())
    assert len(check.rows) == 2 * (COORDINATE_STEPS + 1)
    by = {(r["step"], r["layer"]): r for r in check.rows}
    for k in range(COORDINATE_STEPS + 1):
        hidden, out = outputs[k]
        assert by[k, "layers.0"]["mean_abs"] == pytest.approx(float(hidden.abs().mean()), rel=1e-12)
        assert by[k, "head"]["mean_abs"] == pytest.approx(float(out.abs().mean()), rel=1e-12)
        assert by[k, "head"]["mean_abs_change"] == pytest.approx(float((out - outputs[0][1]).abs().mean()), abs=1e-14)


def test_mixed_precision_autocasts_the_training_forward_only(device):
    model, X, Y = problem()
    model, X, Y = model.float().to(device), X.float().to(device), Y.float().to(device)
    amp = "fp16" if device.type == "cuda" else "bf16"
    exact = float(0.5 * ((model(X) - Y) ** 2).sum().detach() / 10)
    trainer = Trainer(model, Recipe(OptimizerFactory("sgd", 0.1), 3, amp=amp), itertools.repeat((X, Y)), 7)
    loss, grad_sq = trainer.step()
    assert loss != exact and loss == pytest.approx(exact, rel=2e-2)  # the forward ran in half precision
    assert math.isfinite(grad_sq) and all(p.dtype == torch.float32 for p in model.parameters())
    assert (trainer.scaler is not None) == (amp == "fp16")  # fp16 scales the loss, bf16 needs no scaling
