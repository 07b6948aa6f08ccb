"""The augmented model and its frozen features (theory/application.md, theory/application.md): equal to the base
model at the switch, tangent features that are the frozen copy's Jacobian, a copy that never changes."""

import copy
import math

import pytest
import torch
from helpers import MAPS, aligned_closure, aligned_problem

from diagnostics import reference_jacobian
from diagnostics.aligned import AlignedTraining, AugmentedModel

F64 = torch.float64


@pytest.mark.parametrize("feature_map,coefficients", MAPS)
def test_augmented_model_equals_the_base_model_at_the_switch(feature_map, coefficients):
    model, X, y = aligned_problem()
    reference = copy.deepcopy(model)
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), train_data=(X, y),
                              switch_step=0, feature_map=feature_map, coefficients=coefficients)
    assert isinstance(trainer.model, AugmentedModel) and trainer.model.model is model
    for mode in (True, False):  # batch statistics and running statistics
        trainer.model.train(mode)
        reference.train(mode)
        with torch.no_grad():
            assert torch.equal(trainer.model(X), reference(X))
    assert trainer.model.features.training is False  # the frozen copy stays in eval mode


def test_tangent_features_are_the_jacobian_of_the_frozen_copy():
    model, X, y = aligned_problem()
    trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.1), train_data=(X, y),
                              switch_step=0, feature_map="tangent")
    frozen = trainer.model.features
    u = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    J = reference_jacobian(frozen.frozen, X)
    # α² = λ_max(ΦΦᵀ)/λ_max(JJᵀ), Φ the output layer's columns (the last ones in parameter order)
    head = model.head.weight.numel() + model.head.bias.numel()
    top = lambda A: float(torch.linalg.eigvalsh(A @ A.T)[-1])  # noqa: E731
    alpha = math.sqrt(top(J[:, -head:]) / top(J))
    assert frozen.tangent_scale == pytest.approx(alpha, rel=1e-9) and alpha < 1
    assert trainer.switch_report.tangent_scale == frozen.tangent_scale
    J = alpha * J
    torch.testing.assert_close(frozen.tangent_product(u, X).reshape(-1), J @ u, rtol=1e-10, atol=1e-12)
    coefficient = trainer.model.coefficients["tangent"]
    coefficient.data.copy_(u)
    out = trainer.model(X).sum()
    out.backward()
    torch.testing.assert_close(coefficient.grad, J.sum(0), rtol=1e-10, atol=1e-12)  # ∂/∂u Σ J_x u = Jᵀ1


@pytest.mark.parametrize("feature_map,coefficients", MAPS)
def test_the_frozen_copy_never_changes(feature_map, coefficients):
    model, X, y = aligned_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    trainer = AlignedTraining(model, opt, train_data=(X, y), switch_step=2, feature_map=feature_map,
                              coefficients=coefficients)
    closure = aligned_closure(trainer, X, y, "ce")
    for _ in range(3):
        trainer.step(closure)
    frozen = trainer.model.features.frozen
    before = {k: v.clone() for k, v in [*frozen.named_parameters(), *frozen.named_buffers()]}
    for _ in range(5):
        trainer.step(closure)
    trainer.model.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    for k, v in [*frozen.named_parameters(), *frozen.named_buffers()]:
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.head.weight, frozen.head.weight)  # while the live model did train
