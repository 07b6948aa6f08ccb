"""The FLOP counts of the per-layer rules (diagnostics/engine/rules.py) against hand counts: the work the
cheaper exact form must do, each product counted once, using the symmetry of K."""

import pytest
import torch
from torch import nn

from diagnostics.engine import Measurement
from diagnostics.engine.structured import StructuredLayers

F64 = torch.float64


def _costs(model, x):
    with Measurement(model.double(), x.double(), strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        return job.m, [layer.rule.gram_costs(layer, job.m) for layer in layers.layers.values()]


@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_on_vectors_counts_its_fused_bias_once(bias):
    n, k, o = 5, 3, 4
    m, (costs,) = _costs(nn.Linear(k, o, bias=bias), torch.randn(n, k))
    rows = n * m  # m = o = 4
    # ((A Aᵀ + 1) ⊗ 1) ⊙ (G Gᵀ): inputs' Gram 2n²k, half the cotangents' Gram (nm)²o, half a multiply-add (nm)²
    assert costs["positions"] == 2 * n * n * k + rows**2 * o + rows**2
    width = o * (k + bias)
    assert costs["per-sample"] == 2 * rows * o * (k + bias) + rows**2 * width


def test_linear_layer_on_sequences_counts_every_pair_of_positions_and_the_bias_apart():
    n, T, k, o = 3, 4, 2, 5
    m, (costs, _) = _costs(nn.Sequential(nn.Linear(k, o), nn.Flatten(), nn.Linear(T * o, 2)), torch.randn(n, T, k))
    rows = n * m
    assert costs["positions"] == T * T * (2 * n * n * k + rows**2 * o + rows**2) + rows**2 * o
    assert costs["per-sample"] == 2 * rows * T * o * (k + 1) + rows**2 * o * (k + 1)


def test_costs_at_another_batch_size_are_those_of_that_batch():
    model, x = nn.Linear(3, 4), torch.randn(5, 3)
    with Measurement(model.double(), x.double(), strategy="structured") as job:
        (layer,) = StructuredLayers(job, job.fm.names).layers.values()
        small, large = layer.rule.gram_costs(layer, job.m), layer.rule.gram_costs(layer, job.m, n=50)
    assert large["positions"] == 2 * 50 * 50 * 3 + 200**2 * 4 + 200**2 and small["positions"] < large["positions"]
