"""The model families: parameter counts and exact structure (A1): Euler's identity, heads that are
linear or not, deep linear networks, the ResNet's batch norm and skip connections."""

import pytest
import torch
from helpers import DIGITS
from torch.func import functional_call, jvp

from diagnostics.models import CNN, MLP, BiasFreeReLUNet, DeepLinear, ResNet, build_model, count_parameters

F64 = torch.float64


def _directional(model: torch.nn.Module, x: torch.Tensor, names) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x)`` and ``⟨∂f/∂θ_S, θ_S⟩`` for the parameters named in ``names`` (the others held fixed)."""
    params = dict(model.named_parameters())
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    moving = {k: params[k].detach() for k in names}

    def f(p):
        return functional_call(model, {**fixed, **p}, (x,))

    return jvp(f, (moving,), (moving,))


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("width", [1, 7, 32])
def test_mlp_parameter_count_formula(depth, width):
    d_in, m = 64, 10
    hidden = (d_in * width + width + (depth - 1) * (width * width + width)) if depth else 0
    fan = width if depth else d_in
    assert count_parameters(MLP(d_in, width, m, depth=depth)) == hidden + fan * m + m
    no_bias = (d_in * width + (depth - 1) * width * width if depth else 0) + fan * m
    assert count_parameters(MLP(d_in, width, m, depth=depth, bias=False)) == no_bias
    assert count_parameters(BiasFreeReLUNet(d_in, width, m, depth=depth)) == no_bias
    assert count_parameters(DeepLinear(d_in, width, m, depth=depth)) == no_bias
    for p in ("ntk", "mf"):  # multipliers are not parameters
        assert count_parameters(MLP(d_in, width, m, depth=depth, parameterization=p)) == hidden + fan * m + m


@pytest.mark.parametrize("width", [2, 5])
def test_cnn_and_resnet_parameter_counts(width):
    c, m = 3, 4
    cnn = CNN(c, width, m, image_size=(9, 12))
    assert (
        count_parameters(cnn) == (c * 9 * width + width) + (width * 9 * width + width) + width * 2 * 3 * m + m
    )
    resnet = ResNet(c, width, m, n_blocks=2)
    block = 2 * (9 * width * width + 2 * width)
    assert count_parameters(resnet) == 9 * c * width + 2 * width + 2 * block + width * m + m


@pytest.mark.parametrize("parameterization", ["standard", "ntk", "mf"])
@pytest.mark.parametrize("depth", [1, 3])
def test_bias_free_relu_net_satisfies_euler_identity(parameterization, depth):
    model = BiasFreeReLUNet(6, 9, 3, depth=depth, parameterization=parameterization).to(F64)
    assert model.degree == depth + 1
    x = torch.randn(7, 6, dtype=F64)
    f, tangent = _directional(model, x, [k for k, _ in model.named_parameters()])
    assert torch.allclose(tangent, model.degree * f, rtol=0, atol=1e-10 * f.abs().max().item())
    assert f.abs().max() > 1e-3


@pytest.mark.parametrize("parameterization", ["ntk", "mf", "standard"])
def test_mlp_output_is_linear_in_the_head(parameterization):
    model = MLP(64, 32, 5, depth=2, activation="tanh", parameterization=parameterization).to(F64)
    x = torch.randn(6, *DIGITS, dtype=F64)
    f, tangent = _directional(model, x, ["head.weight", "head.bias"])
    assert (tangent - f).abs().max().item() < 1e-10 * f.abs().max().item()


@pytest.mark.parametrize("output_activation", ["sigmoid", "tanh", "softmax"])
def test_output_activations_break_head_linearity(output_activation):
    model = MLP(64, 32, 5, parameterization="ntk", output_activation=output_activation).to(F64)
    x = torch.randn(6, 64, dtype=F64)
    f, tangent = _directional(model, x, ["head.weight", "head.bias"])
    assert (tangent - f).abs().max().item() > 1e-3
    if output_activation == "softmax":
        assert torch.allclose(f.sum(1), torch.ones(6, dtype=F64))


@pytest.mark.parametrize("bias", [False, True])
def test_deep_linear_is_linear_in_x(bias):
    model = DeepLinear(10, 12, 3, depth=3, bias=bias, parameterization="ntk").to(F64)
    x1, x2 = torch.randn(4, 10, dtype=F64), torch.randn(4, 10, dtype=F64)
    A, c = model.end_to_end()
    assert A.shape == (3, 10) and c.shape == (3,)
    assert torch.allclose(model(x1), x1 @ A.T + c, rtol=0, atol=1e-12)
    f0 = model(torch.zeros(1, 10, dtype=F64))
    assert torch.allclose(
        model(2.5 * x1 - 0.7 * x2) - f0, 2.5 * (model(x1) - f0) - 0.7 * (model(x2) - f0), atol=1e-12
    )
    assert bias or f0.abs().max() == 0


def test_resnet_batch_norm_and_residual_structure():
    model = build_model("resnet", 4, input_shape=DIGITS, n_out=3, n_blocks=3)
    assert len(model.blocks) == 3 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 7
    x = torch.randn(8, *DIGITS)
    model.train()
    train_out = model(x)
    model.eval()
    assert not torch.allclose(train_out, model(x))  # batch statistics versus running statistics
    with pytest.raises(ValueError, match="image_size"):
        ResNet(1, 4, 3)(torch.randn(2, 64))  # flat input needs image_size
