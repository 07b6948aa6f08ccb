"""build_model: every family on image and flat inputs, parameter counts by width, seeding, learning-rate
multipliers and argument validation."""

import pytest
import torch
from helpers import DIGITS

from diagnostics.models import CNN, FAMILIES, MLP, build_model, count_parameters, learning_rate_multiplier


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


def test_learning_rate_multiplier():
    assert learning_rate_multiplier("standard", 64) == 1 / 64
    assert learning_rate_multiplier("ntk", 64) == 1.0
    assert learning_rate_multiplier("mf", 64) == 64.0
    with pytest.raises(ValueError, match="parameterization"):
        learning_rate_multiplier("mup", 64)


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
