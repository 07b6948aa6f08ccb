"""Full-batch gradient descent of the width runs and the coordinate check of its first steps."""

from __future__ import annotations

import pytest
import torch
from helpers import F64

from diagnostics import ntk_gram
from diagnostics.models import build_model
from diagnostics.width.training import COORDINATE_STEPS, LayerCapture, gradient_descent


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(10, 5, generator=g, dtype=F64)
    Y = torch.randn(10, 3, generator=g, dtype=F64)
    model = build_model("mlp", 7, input_shape=(5,), n_out=3, depth=1, parameterization="ntk", seed=seed).double()
    return model, X, Y


def test_gradient_descent_is_plain_sgd_and_reports_the_gradient_norm():
    model, X, Y = problem()
    twin, _, _ = problem()
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.3)
    steps = list(gradient_descent(model, X, Y, 0.3, 5))
    assert [k for k, _, _ in steps] == list(range(6))
    for k, loss, grad_sq in steps:
        optimizer.zero_grad()
        reference = 0.5 * ((twin(X) - Y) ** 2).sum() / 10
        assert loss == pytest.approx(float(reference.detach()), rel=1e-14)
        if k == 5:
            assert grad_sq != grad_sq  # nan: the last step's gradient is not computed
            break
        reference.backward()
        assert grad_sq == pytest.approx(sum(float((p.grad**2).sum()) for p in twin.parameters()), rel=1e-12)
        optimizer.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_gradient_descent_stops_on_divergence():
    model, X, Y = problem()
    with pytest.raises(FloatingPointError, match="diverged"):
        for _ in gradient_descent(model, X, Y, 1e6, 50):
            pass


def test_layer_capture_sees_only_the_training_forward_of_the_first_steps():
    model, X, Y = problem()
    with LayerCapture(model, ["layers.0", "head"]) as capture:
        outputs = {}
        for k, _, _ in gradient_descent(model, X, Y, 0.3, 6, capture):
            with torch.no_grad():
                outputs[k] = (model.layers[0](X), model(X))  # these forward passes must not be recorded
            ntk_gram(model, X)  # nor the measurement's
    assert len(capture.rows) == 2 * (COORDINATE_STEPS + 1)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # removed after step 3
    by = {(r["step"], r["layer"]): r for r in capture.rows}
    for k in range(COORDINATE_STEPS + 1):
        hidden, out = outputs[k]
        assert by[k, "layers.0"]["mean_abs"] == pytest.approx(float(hidden.abs().mean()), rel=1e-12)
        assert by[k, "head"]["mean_abs"] == pytest.approx(float(out.abs().mean()), rel=1e-12)
        assert by[k, "head"]["mean_abs_change"] == pytest.approx(float((out - outputs[0][1]).abs().mean()), abs=1e-14)
