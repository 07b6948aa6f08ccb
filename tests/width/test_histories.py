"""A width study from runs trained elsewhere: tagged tracker histories, read back into the tables and the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import GatedNet

from diagnostics.cli import main
from diagnostics.data import load_dataset
from diagnostics.errors import DiagnosticsError
from diagnostics.tracking import AlignmentTracker
from diagnostics.width import from_runs
from diagnostics.width.figures import FIGURES

#: Steps of every run, and the cadence of its tracker: a record every 2 steps, a full one every 2 records.
STEPS, EVERY, FULL_EVERY = 8, 2, 2


def train_elsewhere(folder: Path, width: int, seed: int, tags: dict | None) -> Path:
    """Train like a user's own loop (AdamW on minibatches, cross-entropy) with a tracker writing a tagged history."""
    digits = load_dataset("digits", n_train=48, n_test=10)
    torch.manual_seed(seed)
    model = GatedNet(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    path = folder / f"w{width}_s{seed}" / "alignment.jsonl"
    tracker = AlignmentTracker(model, (digits.X_train, digits.y_train), every=EVERY, full_every=FULL_EVERY,
                               loss="ce", probe_size=16, path=path, tags=tags, optimizer=optimizer)
    for step in range(STEPS + 1):
        tracker.step(step)
        batch = torch.randperm(48)[:16]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(digits.X_train[batch]), digits.y_train[batch]).backward()
        optimizer.step()
    return path


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lightning_logs")
    for width in (2, 8):
        for seed in (0, 1):
            train_elsewhere(folder, width, seed, {"width": width, "seed": seed, "family": "gated"})
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')  # another logger's JSON lines: skipped
    return folder


def test_the_histories_give_the_tables_of_a_study(runs_folder):
    result = from_runs(runs_folder)
    runs, history = result.runs, result.history
    assert sorted(runs["run_id"]) == ["gated_standard_w2_s0", "gated_standard_w2_s1", "gated_standard_w8_s0",
                                      "gated_standard_w8_s1"]
    assert sorted(set(history["step"])) == [0, 4, 8]  # the full records (every 2 steps, one in 2 full)
    one = history[history["run_id"] == "gated_standard_w8_s0"].set_index("step")
    assert one.loc[4, "kernel_velocity"] == pytest.approx(one.loc[4, "kernel_movement_prev"] / 4, rel=1e-15)
    assert math.isnan(one.loc[0, "kernel_velocity"]) and one["kernel_distance_end"].isna().all()
    assert one["kernel_target_alignment"].between(0, 1).all()
    w8 = runs.set_index("run_id").loc["gated_standard_w8_s0"]
    assert w8["final_residual"] == one.loc[8, "residual"] and w8["init_rank"] == one.loc[0, "rank"]
    assert w8["certificate_bar"] == one["certificate"].max() and w8["n_outputs"] == 160
    assert w8["optimizer"] == "AdamW" and w8["lr"] == 1e-2 and w8["measure_seconds"] > 0
    assert (runs["rate_status"] == "not applicable").all()  # trained on cross-entropy
    assert not runs["linearised_applies"].any() and not runs["rate_applies"].any()
    assert runs["linearised_reason"].str.contains("AdamW is not plain gradient descent").all()
    assert runs["rate_reason"].str.contains("trained on the ce loss").all()
    trajectory = result.sweep.trajectories
    assert len(trajectory[trajectory["run_id"] == "gated_standard_w8_s0"]) == 5  # every record, cheap ones too


def test_the_report_from_runs_on_the_command_line(runs_folder, tmp_path):
    assert main(["width-report", "--from-runs", str(runs_folder), "-o", str(tmp_path), "--no-progress"]) == 0
    for name, *_ in FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000, name
    markdown = (tmp_path / "report.md").read_text()
    assert "# Width study from histories: gated" in markdown
    assert "not applicable (4 of 4 runs): AdamW is not plain gradient descent" in markdown
    assert "Not drawn. Not measured: these runs were read from histories" in markdown  # coordinate check, layers
    assert "the training time is not in the histories" in markdown


def test_histories_that_cannot_make_a_study_are_refused(tmp_path):
    with pytest.raises(DiagnosticsError, match="no history"):
        from_runs(tmp_path)
    train_elsewhere(tmp_path / "a", 2, 0, {"width": 2})
    with pytest.raises(DiagnosticsError, match="lack seed"):
        from_runs(tmp_path / "a")
    for seed_folder in ("b", "c"):
        train_elsewhere(tmp_path / "dup" / seed_folder, 2, 0, {"width": 2, "seed": 0})
    with pytest.raises(DiagnosticsError, match="both the run model_standard_w2_s0"):
        from_runs(tmp_path / "dup")
    assert main(["width-report", "--from-runs", str(tmp_path / "a"), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
