"""Width sweeps and reports: tables, figures, resume, failures, kill-and-rerun, Ray equals local."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from diagnostics.data import load_dataset
from diagnostics.width import sweep as sweep_module
from diagnostics.width.analysis import counting_threshold, findings, movement_slopes
from diagnostics.width.config import SweepConfig, default_widths, load_data
from diagnostics.width.figures import FIGURES
from diagnostics.width.report import build_report
from diagnostics.width.sweep import TIMING_COLUMNS, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides) -> SweepConfig:
    """n·m = 240; MLP widths 2 (d = 160) below the counting threshold, 8 and 32 above it."""
    values = dict(families=("mlp",), widths={"mlp": (2, 8, 32)}, seeds=(0, 1), n_train=24, n_test=50, steps=4,
                  every=2)
    return SweepConfig(**{**values, **overrides})


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in frame.columns if c in TIMING_COLUMNS]
    return frame.drop(columns=drop).sort_values(list(frame.columns[:5])).reset_index(drop=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("width")
    return build_report(tiny(), folder, jobs=1, progress=False)


def test_default_widths_span_the_counting_threshold():
    digits = load_dataset("digits", n_train=128)
    assert default_widths("mlp", digits) == (4, 8, 16, 32, 128, 512)
    assert default_widths("cnn", digits) == (2, 4, 8, 16, 32, 64)
    config = SweepConfig().resolve(digits)
    assert len(config.runs()) == 2 * 2 * 6 * 3


def test_config_validation_and_round_trip():
    config = tiny()
    assert SweepConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="multiple"):
        tiny(steps=5)
    with pytest.raises(ValueError, match="family"):
        tiny(families=("transformer",))
    with pytest.raises(ValueError, match="image inputs"):
        load_data(SweepConfig(dataset="teacher-student", families=("cnn",)))
    spec = config.resolve(load_data(config)).runs()[0]
    assert config.fingerprint(spec) == tiny(seeds=(5,), widths={"mlp": (64,)}).fingerprint(spec)
    assert config.fingerprint(spec) != tiny(steps=8).fingerprint(spec)


def test_report_folder(report):
    folder = report.folder
    for name in ("report.html", "report.md", "records.csv", "runs.csv", "missing.csv", "config.json",
                 "environment.json"):
        assert (folder / name).is_file(), name
    for name, *_ in FIGURES:
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
        assert (folder / "figures" / f"{name}.svg").is_file()
    runs, records = pd.read_csv(folder / "runs.csv"), pd.read_csv(folder / "records.csv")
    assert len(runs) == 12 and len(records) == 12 * 3  # records at steps 0, 2, 4
    assert {"step", "loss", "loss_lower_bound", "residual", "rank", "bound_ratio", "kernel_movement_init",
            "family", "parameterization", "width", "seed"} <= set(records.columns)
    env = json.loads((folder / "environment.json").read_text())
    assert env["torch_threads_per_run"] == 1 and env["packages"]["torch"] and env["cpu"]
    assert json.loads((folder / "config.json").read_text())["widths"] == {"mlp": [2, 8, 32]}
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    markdown = (folder / "report.md").read_text()
    assert "S1 (counting)" in markdown and "S4 (lazy versus rich)" in markdown
    assert "figures/rank.png" in markdown


def test_findings_are_computed_from_the_data(report):
    sweep = report.sweep
    # d = 160 at width 2 and 610 at width 8: log-log interpolation to d = n·m = 240
    expected = 2 * 4 ** (math.log(240 / 160) / math.log(610 / 160))
    assert counting_threshold(sweep.runs)["mlp"] == pytest.approx(expected)
    slopes = movement_slopes(sweep.runs)
    assert set(slopes["parameterization"]) == {"ntk", "mf"}
    text = " ".join(findings(sweep.runs, sweep.records, sweep.missing))
    assert "With n·m = 240 stacked outputs" in text and "at width ≈ " in text
    assert f"{slopes['slope'].iloc[0]:+.2f}" in text


def test_rerun_skips_finished_runs(report, tmp_path):
    config, folder = tiny(), report.folder
    again = run_sweep(config, folder, jobs=1, progress=False)
    assert again.executed == 0
    pd.testing.assert_frame_equal(again.runs, report.sweep.runs)
    (folder / "runs" / "mlp_mf_w8_s1.json").unlink()
    assert run_sweep(config, folder, jobs=1, progress=False).executed == 1


def test_failed_run_is_listed_missing_and_rerun(tmp_path, monkeypatch):
    config = tiny(widths={"mlp": (2, 8)}, parameterizations=("ntk",))
    real = sweep_module.run_one

    def flaky(config, spec, data):
        if spec.run_id == "mlp_ntk_w8_s1":
            raise FloatingPointError("injected failure")
        return real(config, spec, data)

    monkeypatch.setattr(sweep_module, "run_one", flaky)
    result = build_report(config, tmp_path, jobs=1, progress=False)
    assert list(result.sweep.missing["run_id"]) == ["mlp_ntk_w8_s1"]
    assert result.sweep.missing["status"].iloc[0] == "failed"
    assert "injected failure" in (tmp_path / "report.md").read_text()
    monkeypatch.setattr(sweep_module, "run_one", real)
    again = run_sweep(config, tmp_path, jobs=1, progress=False)
    assert again.executed == 1 and again.missing.empty and len(again.runs) == 4


def test_killed_sweep_resumes_with_only_the_missing_runs(tmp_path):
    args = ["width-report", "--families", "mlp", "--widths", "2,4,8,16", "--seeds", "0,1",
            "--parameterizations", "ntk", "--n-train", "24", "--steps", "600", "--every", "300",
            "--jobs", "1", "--no-progress", "-o", str(tmp_path)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-m", "diagnostics", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(runs.glob("*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert 2 <= len(finished) < 8, "the sweep must be killed part-way"

    from diagnostics.cli import main

    assert main(args) == 0
    after = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert len(after) == 8
    assert all(after[name] == data for name, data in finished.items())  # finished runs were not redone
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 8


def test_ray_and_local_executors_give_identical_tables(tmp_path):
    ray = pytest.importorskip("ray")
    config = tiny(widths={"mlp": (2, 8)})
    local = run_sweep(config, tmp_path / "local", jobs=1, progress=False)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        remote = run_sweep(config, tmp_path / "ray", executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert remote.missing.empty and remote.executed == 8
    pd.testing.assert_frame_equal(comparable(remote.runs), comparable(local.runs))
    pd.testing.assert_frame_equal(comparable(remote.records), comparable(local.records))


def test_teacher_student_regression(tmp_path):
    config = SweepConfig(dataset="teacher-student", families=("mlp",), widths={"mlp": (4, 64)}, seeds=(0,),
                         parameterizations=("ntk",), n_train=16, n_test=16, steps=2, every=2)
    result = run_sweep(config, tmp_path, jobs=1, progress=False)
    assert len(result.runs) == 2 and "test_accuracy" not in result.runs
    assert (result.runs["n_outputs"] == 16 * 3).all()
