"""The measurement manifest (issue 5): inputs, output, included and excluded parameters, tied weights,
dropout and batch norm, as every report states them (THEORY §7)."""

import dataclasses
import json

import pytest
import torch
from cases import CASES, IO_CASES
from helpers import NO_VMAP_FALLBACK_WARNING, ONE_THREAD, assert_unchanged

from diagnostics import MeasurementManifest, check_alignment, check_cms
from diagnostics.engine import FunctionalModel
from diagnostics.engine.functional import FROZEN

F64 = torch.float64

pytestmark = [ONE_THREAD, NO_VMAP_FALLBACK_WARNING]


def test_manifest_of_a_transformer_names_inputs_output_parameters_and_dropout():
    case = IO_CASES["transformer-dict"]
    model, batch = case.model(), case.data(4)
    Y = torch.randn(4, 3, dtype=F64)
    report = check_alignment(model, (batch, Y), output="logits", params=["layer", "head"], probe_size=None)
    man = report.manifest
    assert man.inputs == (
        "dict {input_ids: int64 (4, 5), attention_mask: int64 (4, 5)} passed as model(**inputs)"
    )
    assert "output['logits'], per-sample shape (3,) flattened in C order → m = 3" in man.output
    assert (man.n_samples, man.n_outputs) == (4, 3)
    names = [k for k, _ in model.named_parameters()]
    assert [k for k, _ in man.included] == [k for k in names if k.startswith(("layer.", "head."))]
    assert man.n_params == report.n_params == sum(c for _, c in man.included)
    assert {k for k, _, _ in man.excluded} == {"embed.weight", "pos", "norm.weight", "norm.bias"}
    assert {why for _, _, why in man.excluded} == {"not selected by params="}
    assert man.n_params + sum(c for _, c, _ in man.excluded) == sum(p.numel() for p in model.parameters())
    dropout = {note.path for note in man.dropout}
    assert {"layer.dropout", "layer.dropout1", "layer.dropout2", "layer.self_attn"} <= dropout
    assert all("inactive" in note.handling for note in man.dropout)
    assert man.interacting == ()
    # head is called twice (pooled and per-token logits): the structured path must leave it to jacrev
    assert man.strategy == "structured" and "head.weight" not in man.structured
    assert set(man.structured) <= {k for k, _ in man.included}
    text = str(man)
    assert "parameters excluded (not selected by params=): 4 tensors" in text
    d = json.loads(json.dumps(report.to_dict()))["manifest"]
    assert d["n_params"] == man.n_params and d["mode"] == "eval"
    with pytest.raises(dataclasses.FrozenInstanceError):
        man.mode = "batch"


def test_manifest_reports_tied_weights_once_and_frozen_parameters():
    case = CASES["tied-embedding"]
    model, x = case.model(), case.data(6)
    model.mix.bias.requires_grad_(False)
    Y = torch.randn(6, 9, dtype=F64)
    report = assert_unchanged(model, lambda: check_alignment(model, (x, Y), probe_size=None, params="all"))
    man = report.manifest
    assert man.aliases == (("out.weight", "embed.weight"),)
    assert "out.weight" not in dict(man.included)
    assert man.n_params == sum(p.numel() for p in model.parameters())  # the shared tensor counted once
    assert any("mix.bias has requires_grad=False but was measured" in note for note in man.notes)
    assert "tied: out.weight is embed.weight" in str(report)
    assert "all parameters (params='all')" in str(man)


def test_frozen_parameters_are_excluded_by_default_and_the_manifest_says_why():
    case = CASES["tied-embedding"]
    model, x = case.model(), case.data(6)
    model.mix.bias.requires_grad_(False)
    Y = torch.randn(6, 9, dtype=F64)
    man = check_alignment(model, (x, Y), probe_size=None).manifest
    frozen = model.mix.bias.numel()
    assert man.n_params == sum(p.numel() for p in model.parameters()) - frozen
    assert man.excluded == (("mix.bias", frozen, FROZEN),) and not man.notes
    assert "parameters excluded (requires_grad=False: training does not move it (params='all' measures it))" in str(
        man)
    assert "the trainable parameters (requires_grad=True)" in str(man)
    # a model with no trainable parameter (a frozen feature map) is measured whole, and says so
    for p in model.parameters():
        p.requires_grad_(False)
    man = check_alignment(model, (x, Y), probe_size=None).manifest
    assert man.n_params == sum(p.numel() for p in model.parameters()) and man.excluded == ()
    assert "all parameters (none has requires_grad=True)" in str(man)


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_manifest_says_how_batch_norm_was_handled(mode):
    case = CASES["resnet-bn"]
    model, x = case.model(), case.data(6)
    report = check_cms(model, x, mode=mode)
    man = report.manifest
    assert [n.path for n in man.interacting] == ["bn0", "bn1", "bn2"]
    expected = {"eval": "running statistics (eval mode)", "batch": "batch statistics of the measured batch"}
    assert all(expected[mode] in n.handling for n in man.interacting)
    assert man.mode == mode and man.strategy == ("structured" if mode == "eval" else "vjp")
    assert report.to_dict()["manifest"]["interacting"][0]["path"] == "bn0"


def test_manifest_needs_the_validation_forward_or_the_output_count():
    fm = FunctionalModel(CASES["mlp"].model())
    x, _ = fm.prepare(CASES["mlp"].data(3))
    with pytest.raises(ValueError, match="check_forward"):
        MeasurementManifest.build(fm, x, strategy="vjp")
    man = MeasurementManifest.build(fm, x, strategy="jvp/vjp", n_outputs=3)
    assert man.n_outputs == 3 and "LSQR" in str(man)
