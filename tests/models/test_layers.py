"""The parameterisations' layers: multipliers that are not parameters, and the initial output scale of
the NTK and mean-field parameterisations."""

import math

import pytest
import torch
from helpers import DIGITS

from diagnostics.models import ScaledLinear, build_model


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
