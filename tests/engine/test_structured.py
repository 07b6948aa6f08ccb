"""The structured path against the dense reference, in float64 (theory/alignment.md#setup): both exact Gram forms of
every per-layer rule, which layers it covers, the guard, and the positions form under a tight budget.

No timing assertions: speed is measured by ``python -m bench.ntk`` (docs/benchmarks.md).
"""

import pytest
import torch
from cases import CASES
from torch import nn

from diagnostics import ntk_gram
from diagnostics.engine import Measurement, reference_jacobian
from diagnostics.engine.gram import GramTiles
from diagnostics.engine.rules import BatchNormRule, ScaledRule, rule_for
from diagnostics.engine.structured import StructuredLayers
from diagnostics.models.layers import ScaledConv2d, ScaledLinear

F64 = torch.float64
ATOL = 1e-10


def _layer_columns(job, layer, J_ref):
    """Columns of ``J_ref`` that belong to ``layer``'s parameters."""
    starts, start = {}, 0
    for k in job.fm.names:
        starts[k] = (start, start + job.fm.params[k].numel())
        start = starts[k][1]
    return torch.cat([J_ref[:, slice(*starts[k])] for k in layer.names], dim=1)


@pytest.mark.parametrize("cid", list(CASES))
def test_both_gram_forms_of_every_covered_layer_match_reference(cid, small_tiles):
    case = CASES[cid]
    model, x = case.model(), case.data(7)
    J_ref = reference_jacobian(model, x)
    with Measurement(model, x, strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert layers.layers or cid in ("reused-module", "extra-weight-use")
        for layer in layers.layers.values():
            J_l = _layer_columns(job, layer, J_ref)
            expected = J_l @ J_l.T
            per_sample = GramTiles(job.rows, job.m, F64, torch.device("cpu"))
            for block in layer.rule.grads(layer, layer.cotangents, per_sample=True):
                if block is not None:
                    per_sample.add_products(block.reshape(job.rows, -1), block.reshape(job.rows, -1))
            torch.testing.assert_close(per_sample.finish(), expected, rtol=0, atol=ATOL)
            if isinstance(layer.rule, BatchNormRule):
                continue
            positions = GramTiles(job.rows, job.m, F64, torch.device("cpu"))
            layer.rule.add_positions_gram(layer, positions)
            torch.testing.assert_close(positions.finish(), expected, rtol=0, atol=ATOL)


def test_batch_norm_and_convolutions_are_covered_by_the_structured_path():
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(4)
    with Measurement(model, x, strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert layers.covered == set(job.fm.names)


class _MixesSamples(nn.Module):
    """Samples interact in eval mode (a batch mean): per-sample structure does not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(h - h.mean(0, keepdim=True))


def test_guard_rejects_a_layer_whose_samples_interact():
    # the whole-batch strategy's measurement, so that the forward checks let the model through
    model, x = _MixesSamples().double(), torch.randn(6, 4, dtype=F64)
    with Measurement(model, x, strategy="vjp") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert "inp.weight" not in layers.covered


def test_batch_norm_with_batch_statistics_in_eval_mode_is_left_to_jacrev():
    batch_stats = nn.BatchNorm1d(4, track_running_stats=False)
    model = nn.Sequential(nn.Linear(3, 4), batch_stats, nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=F64)
    with Measurement(model, x, strategy="vjp") as job:
        assert "1.weight" not in StructuredLayers(job, job.fm.names).covered


def test_forced_positions_form_when_per_sample_gradients_exceed_the_budget():
    case = CASES["cnn"]
    model, x = case.model(), case.data(5)
    J_ref = reference_jacobian(model, x)
    # 4000 bytes hold the Gram (2·15² doubles) but not conv2's per-sample block (15·112 doubles),
    # which its FLOP count would otherwise choose
    K = ntk_gram(model, x, strategy="structured", memory_budget=4000)
    torch.testing.assert_close(K, J_ref @ J_ref.T, rtol=0, atol=ATOL)


def _scaled_mlp() -> nn.Module:
    """An NTK-parameterised MLP and a mean-field head (``c·(W a + b)`` layers, diagnostics/models/layers.py)."""
    return nn.Sequential(ScaledLinear(5, 7, multiplier=5**-0.5), nn.Tanh(), ScaledLinear(7, 3, multiplier=1 / 7))


def _scaled_cnn() -> nn.Module:
    """NTK-parameterised convolutions (padded and strided) and head."""
    return nn.Sequential(
        ScaledConv2d(1, 3, 3, padding=1, multiplier=1 / 3), nn.ReLU(),
        ScaledConv2d(3, 2, 3, stride=2, multiplier=27**-0.5), nn.Flatten(), ScaledLinear(18, 2, multiplier=18**-0.5),
    )


@pytest.mark.parametrize(("build", "shape"), [(_scaled_mlp, (5,)), (_scaled_cnn, (1, 8, 8))], ids=["mlp", "cnn"])
def test_layers_with_a_declared_multiplier_are_covered_and_match_reference(build, shape, small_tiles):
    torch.manual_seed(0)
    model, x = build().double(), torch.randn(7, *shape, dtype=F64)
    J_ref = reference_jacobian(model, x)
    with Measurement(model, x, strategy="structured") as job:
        layers = StructuredLayers(job, job.fm.names)
        assert layers.covered == set(job.fm.names)
        for layer in layers.layers.values():
            assert isinstance(layer.rule, ScaledRule)
            J_l = _layer_columns(job, layer, J_ref)
            per_sample = GramTiles(job.rows, job.m, F64, torch.device("cpu"))
            for block in layer.rule.grads(layer, layer.cotangents, per_sample=True):
                if block is not None:
                    per_sample.add_products(block.reshape(job.rows, -1), block.reshape(job.rows, -1))
            torch.testing.assert_close(per_sample.finish(), J_l @ J_l.T, rtol=0, atol=ATOL)
            positions = GramTiles(job.rows, job.m, F64, torch.device("cpu"))
            layer.rule.add_positions_gram(layer, positions)
            torch.testing.assert_close(positions.finish(), J_l @ J_l.T, rtol=0, atol=ATOL)
    torch.testing.assert_close(ntk_gram(model, x, strategy="structured"), J_ref @ J_ref.T, rtol=0, atol=ATOL)


class _DeclaresUnappliedMultiplier(nn.Linear):
    """Declares a multiplier its forward does not apply: the declaration is false."""

    multiplier = 3.0


def test_guard_leaves_a_false_multiplier_declaration_to_the_generic_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), _DeclaresUnappliedMultiplier(5, 2)).double()
    x = torch.randn(6, 4, dtype=F64)
    assert isinstance(rule_for(model[2]), ScaledRule)  # the declaration alone would select the scaled rule
    with Measurement(model, x, strategy="structured") as job:
        covered = StructuredLayers(job, job.fm.names).covered
    assert covered == {"0.weight", "0.bias"}
    J_ref = reference_jacobian(model, x)
    torch.testing.assert_close(ntk_gram(model, x, strategy="structured"), J_ref @ J_ref.T, rtol=0, atol=ATOL)
