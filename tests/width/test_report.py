"""The width report folder: tables, figures, environment, HTML and markdown. The ``report`` fixture is in
``tests/width/conftest.py``."""

from __future__ import annotations

import json

import pandas as pd

from diagnostics.width.figures import FIGURES


def test_report_folder(report):
    folder = report.folder
    for name in ("report.html", "report.md", "records.csv", "runs.csv", "missing.csv", "config.json",
                 "environment.json", "trajectories.csv", "coordinates.csv", "layers.csv"):
        assert (folder / name).is_file(), name
    for name, *_ in FIGURES:
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
        assert (folder / "figures" / f"{name}.svg").is_file()
    runs, records = pd.read_csv(folder / "runs.csv"), pd.read_csv(folder / "records.csv")
    assert len(runs) == 12 and len(records) == 12 * 3  # records at steps 0, 2, 4
    assert {"step", "loss", "loss_lower_bound", "residual", "rank", "bound_ratio", "kernel_movement_init",
            "kernel_target_alignment", "kernel_velocity", "kernel_distance_end", "horizon_loss_floor",
            "family", "parameterization", "width", "seed"} <= set(records.columns)
    assert {"linearised_loss", "final_horizon_floor", "init_horizon_loss_floor", "certificate_bar", "rate_status",
            "rate_bound"} <= set(runs.columns)
    assert len(pd.read_csv(folder / "trajectories.csv")) == 12 * 5  # steps 0–4
    assert len(pd.read_csv(folder / "coordinates.csv")) == 12 * 4 * 2  # steps 0–3, two layers
    env = json.loads((folder / "environment.json").read_text())
    assert env["torch_threads_per_run"] == 1 and env["packages"]["torch"] and env["cpu"]
    assert json.loads((folder / "config.json").read_text())["widths"] == {"mlp": [2, 8, 32]}
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    markdown = (folder / "report.md").read_text()
    assert "S1 (counting)" in markdown and "S4 (lazy versus rich)" in markdown
    assert "## What predicted the final loss" in markdown and "What the default trades" in markdown
    assert "figures/rank.png" in markdown and "figures/loss_predictors.png" in markdown
