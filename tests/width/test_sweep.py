"""Width sweeps: resume, failures, kill-and-rerun, and the regression task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
from helpers import ROOT, tiny

from diagnostics.width import sweep as sweep_module
from diagnostics.width.config import SweepConfig
from diagnostics.width.study import build_report, config_study


def test_rerun_skips_finished_runs(report, tmp_path):
    config, folder = tiny(), report.folder
    again = config_study(config, folder, jobs=1, progress=False).sweep
    assert again.executed == 0
    pd.testing.assert_frame_equal(again.runs, report.sweep.runs)
    (folder / "runs" / "mlp_mf_w8_s1.json").unlink()
    assert config_study(config, folder, jobs=1, progress=False).sweep.executed == 1


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
    again = config_study(config, tmp_path, jobs=1, progress=False).sweep
    assert again.executed == 1 and again.missing.empty and len(again.runs) == 4


def test_killed_sweep_resumes_with_only_the_missing_runs(tmp_path):
    args = ["width-report", "--families", "mlp", "--widths", "2,4,8,16", "--seeds", "0,1",
            "--parameterizations", "ntk", "--n-train", "24", "--steps", "600", "--records", "1",
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


def test_teacher_student_regression(tmp_path):
    config = SweepConfig(dataset="teacher-student", families=("mlp",), widths={"mlp": (4, 64)}, seeds=(0,),
                         parameterizations=("ntk",), n_train=16, n_test=16, steps=2, records=1)
    result = config_study(config, tmp_path, jobs=1, progress=False).sweep
    assert len(result.runs) == 2 and "test_accuracy" not in result.runs
    assert (result.runs["n_outputs"] == 16 * 3).all()
