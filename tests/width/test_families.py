"""Families the project did not write (``examples/width_families.py``): a BERT built from its config, trained by
AdamW on minibatches of a counting task, and a torchvision-style ResNet trained by SGD with momentum on the digits,
through the Python API, the command line, and a Lightning sweep read back by ``--from-runs``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from diagnostics.cli import main
from diagnostics.models import count_parameters
from diagnostics.width import study
from diagnostics.width.figures import FIGURES

transformers = pytest.importorskip("transformers")
from examples.width_families import CLS, MARK_A, MARK_B, PAD, counting_task, make_bert, make_resnet  # noqa: E402

#: What every statement about gradient descent says of a run trained by AdamW on minibatches of cross-entropy.
ADAMW_REASONS = ("AdamW is not plain gradient descent", "minibatches of 16 of 64 samples",
                 "trained on the ce loss, not (1/2n)‖f − Y‖²")
GD_STATEMENTS = ("horizon", "linearised", "final_horizon", "rate")


@pytest.fixture(scope="module")
def bert_study():
    """Two widths × two seeds of the BERT on 64 sequences: probe of 8, n·m = 16 (``d`` is 690 at width 4)."""
    task = counting_task(64, 32)
    return study(make_bert, task["data"], test=task["test"], widths=[4, 8], seeds=[0, 1], optimizer="adamw", lr=1e-2,
                 loss="ce", batch_size=16, steps=4, records=2, probe_size=8, output="logits", jobs=1,
                 progress=False)


def test_the_counting_task_is_seeded_and_its_labels_follow_the_rule():
    task = counting_task(200, 100, seed=3)
    again, other = counting_task(200, 100, seed=3), counting_task(200, 100, seed=4)
    (X, y), (X_test, y_test) = task["data"], task["test"]
    assert torch.equal(X["input_ids"], again["data"][0]["input_ids"]) and torch.equal(y, again["data"][1])
    assert not torch.equal(X["input_ids"], other["data"][0]["input_ids"])
    ids = torch.cat([X["input_ids"], X_test["input_ids"]])
    difference = (ids == MARK_A).sum(1) - (ids == MARK_B).sum(1)
    assert (difference != 0).all() and torch.equal(torch.cat([y, y_test]), (difference > 0).long())
    assert (ids[:, 0] == CLS).all() and torch.equal(X["attention_mask"], (X["input_ids"] != PAD).long())
    lengths = X["attention_mask"].sum(1)
    assert lengths.min() >= 8 and lengths.max() <= 24 and 0.4 < y.double().mean() < 0.6


def test_the_width_reaches_every_layer_of_both_families():
    """Exact parameter counts: BERT ``25h² + 72h + 2`` (two layers, feed-forward ``4h``, 16 tokens, 24 positions,
    two labels), ResNet ``298w² + 91w + 10`` (stem ``w``, stages ``w``, ``2w``, ``4w``, ten classes)."""
    for h in (2, 4, 16):
        bert = make_bert(h)
        assert count_parameters(bert) == 25 * h**2 + 72 * h + 2, h
        assert bert.config.intermediate_size == 4 * h
    for w in (1, 3, 8):
        assert count_parameters(make_resnet(w)) == 298 * w**2 + 91 * w + 10, w


def test_a_bert_from_its_config_through_the_python_api(bert_study):
    history, runs = bert_study.history, bert_study.runs
    assert bert_study.missing.empty
    assert sorted(set(zip(history["width"], history["seed"], strict=True))) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert set(history["family"]) == {"make-bert"} and sorted(set(history["step"])) == [0, 2, 4]
    counts = runs.groupby("width")["n_params"].unique()
    assert [list(counts[w]) for w in (4, 8)] == [[25 * 16 + 72 * 4 + 2], [25 * 64 + 72 * 8 + 2]]
    assert (runs["n_outputs"] == 16).all() and not runs["underparameterised"].any()
    for column in ("residual", "rank", "certificate", "lambda_max", "kernel_target_alignment", "loss"):
        assert history[column].map(math.isfinite).all(), column  # D1 and its companions at every record
    assert set(history["d1_status"]) <= {"holds", "refuted", "not established"}
    later = history[history["step"] > 0]
    for column in ("kernel_movement_init", "param_movement", "kernel_velocity"):  # S4: AdamW moved every run
        assert (later[column] > 0).all() and later[column].map(math.isfinite).all(), column
    assert runs["final_kernel_movement_init"].map(math.isfinite).all()
    assert (runs["optimizer"] == "AdamW").all() and runs["test_accuracy"].between(0, 1).all()
    assert (runs["measure_seconds"] > 0).all() and (runs["train_seconds"] > 0).all()


def test_every_gradient_descent_statement_is_not_applicable_to_adamw_on_minibatches(bert_study):
    runs = bert_study.runs
    for statement in GD_STATEMENTS:
        assert runs[f"{statement}_applies"].eq(False).all(), statement
        reasons = ADAMW_REASONS[1:] if statement == "rate" else ADAMW_REASONS  # the rate holds for any update rule
        for reason in reasons:
            assert runs[f"{statement}_reason"].str.contains(reason, regex=False).all(), (statement, reason)
    assert (runs["rate_status"] == "not applicable").all()
    for column in ("linearised_loss", "init_horizon_loss_floor", "final_horizon_floor", "rate_bound"):
        assert runs[column].isna().all(), column


def test_the_report_of_the_bert_study(bert_study, tmp_path):
    bert_study.report(tmp_path)
    for name, *_ in FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000, name
    layers = pd.read_csv(tmp_path / "layers.csv")
    per_run = layers[(layers["run_id"] == "make-bert_standard_w8_s0") & (layers["stage"] == "end")]
    assert len(per_run) == 22 and {"bert.encoder.layer.1.intermediate.dense", "classifier"} <= set(per_run["layer"])
    assert per_run["share"].sum() == pytest.approx(1, abs=1e-9)
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# Width study: make-bert on data")
    assert "AdamW is not plain gradient descent" in markdown
    config = json.loads((tmp_path / "config.json").read_text())
    assert "examples.width_families.make_bert" in json.dumps(config["families"][0]["factory"])


def test_a_resnet_by_sgd_with_momentum_on_the_command_line(tmp_path):
    """n·m = 64·10 = 640 on the probe: width 1 (``d = 399``) below the counting threshold, width 2 (1,384) above."""
    out = tmp_path / "report"
    assert main(["width-report", "--family", "examples.width_families:make_resnet",
                 "--data", "examples.width_families:digits", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9",
                 "--batch-size", "16", "--loss", "ce", "--steps", "3", "--records", "1", "--widths", "1,2",
                 "--seeds", "0", "--probe-size", "64", "--jobs", "1", "--no-progress", "-o", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv").sort_values("width")
    assert list(runs["n_params"]) == [399, 1384] and list(runs["underparameterised"]) == [True, False]
    assert runs["final_rank"].iloc[0] <= 399  # S1: rank J ≤ d below the threshold
    for statement in GD_STATEMENTS:
        assert not runs[f"{statement}_applies"].any(), statement
        assert runs[f"{statement}_reason"].str.contains("minibatches of 16 of 512 samples").all(), statement
    assert runs["linearised_reason"].str.contains("SGD with heavy-ball momentum (momentum=0.9)", regex=False).all()
    assert not runs["rate_reason"].str.contains("momentum").any()
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Width study: make-resnet on digits")
    assert len(list((out / "figures").glob("*.png"))) == len(FIGURES)


def test_a_lightning_sweep_with_tagged_callbacks_gives_the_report_by_from_runs(tmp_path):
    pytest.importorskip("lightning.pytorch")
    from examples.lightning_sweep import sweep

    logs, out = tmp_path / "lightning_logs", tmp_path / "report"
    sweep(logs, "bert", [4, 8], [0, 1], steps=6, batch_size=16, probe_size=8, every=2, full_every=2, n_train=64)
    assert main(["width-report", "--from-runs", str(logs), "-o", str(out), "--no-progress"]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["run_id"]) == [f"bert_standard_w{w}_s{s}" for w in (4, 8) for s in (0, 1)]
    assert (runs["optimizer"] == "AdamW").all() and (runs["lr"] == 1e-3).all() and (runs["batch_size"] == 16).all()
    assert list(runs.groupby("width")["n_params"].first()) == [25 * 16 + 72 * 4 + 2, 25 * 64 + 72 * 8 + 2]
    assert runs["linearised_reason"].str.contains("AdamW is not plain gradient descent").all()
    assert (runs["rate_status"] == "not applicable").all() and not runs["rate_applies"].any()
    records = pd.read_csv(out / "records.csv")
    assert sorted(set(records["step"])) == [0, 4, 6]  # full records: every 2nd of every 2 steps, and the last
    assert records["residual"].map(math.isfinite).all()
    assert (records.loc[records["step"] > 0, "param_movement"] > 0).all()
    markdown = (out / "report.md").read_text()
    assert "# Width study from histories: bert" in markdown
    assert "not applicable (4 of 4 runs): AdamW is not plain gradient descent" in markdown
