"""The width report folder: tables, figures, environment, HTML and markdown. The ``report`` fixture is in
``tests/width/conftest.py``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from pytest import approx

from diagnostics.width.figures import FIGURES
from diagnostics.width.figures_evidence import MAX_COLUMNS, MAX_LAYERS, coordinate_check, layer_alignment
from diagnostics.width.sweep import SweepResult


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


def _deep_sweep(n_layers: int) -> SweepResult:
    """Tables of a two-width, two-seed study of one family with ``n_layers`` layers (shares 1, 2, …, normalised)."""
    rng = np.random.default_rng(0)
    runs, coordinates, layers = [], [], []
    for width in (8, 16):
        for seed in (0, 1):
            run_id = f"deep_w{width}_s{seed}"
            runs.append({"run_id": run_id, "family": "deep", "parameterization": "standard", "width": width,
                         "seed": seed, "n_params": 100 * width, "n_outputs": 1000})
            for stage in ("start", "end"):
                shares = rng.uniform(0.5, 1.5, n_layers) * np.arange(1, n_layers + 1)
                for k, share in enumerate(shares / shares.sum()):
                    layers.append({"run_id": run_id, "family": "deep", "parameterization": "standard",
                                   "width": width, "seed": seed, "stage": stage, "layer": f"layer{k}",
                                   "share": share, "residual": 0.1, "rank": 10})
            for step in range(4):
                for k in range(n_layers):
                    coordinates.append({"run_id": run_id, "family": "deep", "parameterization": "standard",
                                        "width": width, "seed": seed, "step": step, "layer": f"layer{k}",
                                        "mean_abs": 1.0 + step, "mean_abs_change": float(step)})
    empty = pd.DataFrame()
    return SweepResult(records=empty, runs=pd.DataFrame(runs), missing=empty, coordinates=pd.DataFrame(coordinates),
                       layers=pd.DataFrame(layers))


def test_the_coordinate_check_of_a_deep_model_wraps_its_layers_into_rows_of_six():
    fig = coordinate_check(_deep_sweep(13))
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 13 * 2 and fig.get_figwidth() == approx(4.6 * MAX_COLUMNS + 1.4)
    assert len(fig.axes) == 3 * 2 * MAX_COLUMNS  # three blocks of rows |z_t|, |z_t − z_0|
    titles = [ax.get_title() for ax in drawn]
    assert titles[:MAX_COLUMNS] == [f"DEEP layer{k}, standard" for k in range(MAX_COLUMNS)]


def test_the_layer_alignment_of_a_deep_model_names_the_largest_layers_and_sums_the_rest():
    sweep = _deep_sweep(12)
    fig = layer_alignment(sweep)
    share_ax = fig.axes[0]
    labels = share_ax.get_legend_handles_labels()[1]
    other = f"the other {12 - MAX_LAYERS + 1} layers (sum)"
    largest = sweep.layers.groupby("layer")["share"].max().sort_values(ascending=False).index[:MAX_LAYERS - 1]
    assert set(largest) | {other} == {label for label in labels if label.startswith(("layer", "the other"))} - {"layer"}
    layers = sweep.layers
    rest = layers[~layers["layer"].isin(largest)]
    expected = rest[rest["stage"] == "end"].groupby(["width", "seed"])["share"].sum().groupby("width").mean()
    lines = [line for line in share_ax.get_lines() if list(line.get_xdata()) == [8, 16]]
    assert any(np.allclose(line.get_ydata(), expected.to_numpy(), rtol=1e-12) for line in lines)
    residual_lines = [line for line in fig.axes[1].get_lines() if list(line.get_xdata()) == [8, 16]]
    assert len(residual_lines) == 2 * (MAX_LAYERS - 1)  # named layers only, start and end
