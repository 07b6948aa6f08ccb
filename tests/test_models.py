"""diagnostics.models: families, parameter counts, seeding, parameterisations and exact structure (A1)."""

import math

import pytest
import torch
from torch.func import functional_call, jvp

from diagnostics.models import (
    CNN,
    FAMILIES,
    MLP,
    BiasFreeReLUNet,
    DeepLinear,
    ResNet,
    ScaledLinear,
    build_model,
    count_parameters,
    learning_rate_multiplier,
)

F64 = torch.float64
DIGITS = (1, 8, 8)


def _directional(model: torch.nn.Module, x: torch.Tensor, names) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x)`` and ``⟨∂f/∂θ_S, θ_S⟩`` for the parameters named in ``names`` (the others held fixed)."""
    params = dict(model.named_parameters())
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    moving = {k: params[k].detach() for k in names}

    def f(p):
        return functional_call(model, {**fixed, **p}, (x,))

    return jvp(f, (moving,), (moving,))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_on_image_and_flat_inputs(family):
    model = build_model(family, 6, input_shape=DIGITS, n_out=10)
    x = torch.randn(5, *DIGITS)
    out = model(x)
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    model.eval()
    assert torch.allclose(model(x), model(x.flatten(1)))
    assert isinstance(model.head, torch.nn.Linear)
    assert model.features(x).shape[0] == 5


@pytest.mark.parametrize("family", ["mlp", "deep-linear", "bias-free-relu"])
def test_flat_families_on_flat_input_shape(family):
    model = build_model(family, 6, input_shape=(64,), n_out=3, parameterization="ntk")
    assert model(torch.randn(4, 64)).shape == (4, 3)
    assert model(torch.randn(4, *DIGITS)).shape == (4, 3)


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


def test_width_scales_parameter_count():
    for w in (8, 16, 32, 100):  # depth 2: (64w + w) + (w² + w) + (10w + 10)
        assert count_parameters(build_model("mlp", w, input_shape=DIGITS, n_out=10)) == w * w + 76 * w + 10


@pytest.mark.parametrize("family", FAMILIES)
def test_build_model_is_seeded_and_keeps_the_global_rng(family):
    state = torch.get_rng_state()
    a = build_model(family, 4, input_shape=DIGITS, n_out=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model(family, 4, input_shape=DIGITS, n_out=3, seed=5)
    c = build_model(family, 4, input_shape=DIGITS, n_out=3, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_scaled_layers_keep_ordinary_parameters():
    model = build_model("mlp", 8, input_shape=(5,), n_out=2, parameterization="mf", depth=1)
    assert [k for k, _ in model.named_parameters()] == [
        "layers.0.weight",
        "layers.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert isinstance(model.head, ScaledLinear) and list(model.buffers()) == []
    assert model.layers[0].multiplier == pytest.approx(
        1 / math.sqrt(5)
    ) and model.head.multiplier == pytest.approx(1 / 8)
    ntk = build_model("mlp", 8, input_shape=(5,), n_out=2, parameterization="ntk", depth=1)
    assert ntk.head.multiplier == pytest.approx(1 / math.sqrt(8))
    cnn = build_model("cnn", 4, input_shape=DIGITS, n_out=2, parameterization="ntk")
    assert cnn.conv2.multiplier == pytest.approx(1 / 6) and cnn.head.multiplier == pytest.approx(
        1 / math.sqrt(16)
    )
    assert "multiplier" in repr(cnn)


def _init_output_std(parameterization: str, width: int, family: str = "mlp") -> float:
    x = torch.randn(128, *DIGITS, generator=torch.Generator().manual_seed(0))
    stds = []
    for seed in range(4):
        model = build_model(
            family, width, input_shape=DIGITS, n_out=4, parameterization=parameterization, seed=seed
        )
        with torch.no_grad():
            stds.append(model(x).std().item())
    return sum(stds) / len(stds)


def test_ntk_output_is_order_one_and_mf_output_shrinks_like_inverse_sqrt_width():
    widths = (64, 256, 1024)
    ntk = [_init_output_std("ntk", w) for w in widths]
    mf = [_init_output_std("mf", w) for w in widths]
    assert all(0.2 < s < 2 for s in ntk) and max(ntk) / min(ntk) < 1.3
    scaled = [s * math.sqrt(w) for s, w in zip(mf, widths, strict=True)]  # std · sqrt(width) is order one
    assert all(0.2 < s < 2 for s in scaled) and max(scaled) / min(scaled) < 1.3
    for a, b in zip(ntk, mf, strict=True):
        assert b < a
    # the same for the CNN (width = channels)
    cnn_ntk = [_init_output_std("ntk", w, "cnn") for w in (16, 128)]
    cnn_mf = [_init_output_std("mf", w, "cnn") * math.sqrt(4 * w) for w in (16, 128)]
    assert max(cnn_ntk) / min(cnn_ntk) < 1.3 and max(cnn_mf) / min(cnn_mf) < 1.3


def test_ntk_weights_are_standard_normal():
    model = build_model("mlp", 512, input_shape=(64,), n_out=4, parameterization="ntk")
    w = model.layers[1].weight
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1) < 0.01


def test_learning_rate_multiplier():
    assert learning_rate_multiplier("standard", 64) == 1 / 64
    assert learning_rate_multiplier("ntk", 64) == 1.0
    assert learning_rate_multiplier("mf", 64) == 64.0
    with pytest.raises(ValueError, match="parameterization"):
        learning_rate_multiplier("mup", 64)


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


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="known: mlp, cnn"):
        build_model("transformer", 4, input_shape=DIGITS, n_out=2)
    with pytest.raises(ValueError, match="parameterization"):
        build_model("mlp", 4, input_shape=DIGITS, n_out=2, parameterization="mup")
    with pytest.raises(ValueError, match="standard"):
        build_model("resnet", 4, input_shape=DIGITS, n_out=2, parameterization="ntk")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("cnn", 4, input_shape=(64,), n_out=2)
    with pytest.raises(ValueError, match="activation"):
        MLP(4, 4, 2, activation="swish")
    with pytest.raises(ValueError, match="output_activation"):
        MLP(4, 4, 2, output_activation="relu")
    with pytest.raises(ValueError, match="width"):
        MLP(4, 0, 2)
    with pytest.raises(ValueError, match="image_size"):
        CNN(1, 4, 2, image_size=3)
