"""One run of a width sweep, on a model whose answers are exact: an affine model (MLP without hidden layers).

``f(x) = Wx + b`` is linear in its parameters, so its NTK never moves: the dynamics linearised at ``K_0`` are the
training itself, the final kernel's horizon floor is the initial one, and the kernel moves by exactly nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import tiny

import theory
from diagnostics.width.config import RunSpec, config_data, config_plan, load_data, record_steps
from diagnostics.width.run import RATE_RTOL, run_one


@pytest.fixture(scope="module")
def affine_run():
    config = tiny(mlp_depth=0, steps=30, records=4, lr={"ntk": 2.0})
    data = load_data(config)
    config = config.resolve(data)
    return config, run_one(config_plan(config, data), RunSpec("mlp", "ntk", 4, 0), config_data(config, data))


def test_the_affine_model_follows_its_linearised_dynamics(affine_run):
    config, result = affine_run
    s = result["summary"]
    assert s["steps"] == 30 and s["lr"] == 2.0
    assert s["linearised_loss"] == pytest.approx(s["final_loss"], rel=1e-4)  # float32 training, float64 prediction
    assert s["final_horizon_floor"] == pytest.approx(s["init_horizon_loss_floor"], rel=1e-9)
    assert s["final_kernel_movement_init"] < 1e-9
    records = result["records"]
    assert [r["step"] for r in records] == list(record_steps(30, 4))
    assert all(r["kernel_distance_end"] < 1e-9 for r in records)
    assert records[-1]["kernel_target_alignment"] == pytest.approx(records[0]["kernel_target_alignment"], rel=1e-9)
    assert all(s[f"{k}_applies"] for k in ("horizon", "linearised", "final_horizon", "rate"))  # full-batch GD
    assert s["init_step_ratio"] == pytest.approx(2.0 * s["init_lambda_max"] / 24) and s["init_step_ratio"] <= 2
    assert s["train_seconds"] > 0 and s["measure_seconds"] > 0 and s["seconds"] >= s["train_seconds"] + s[
        "measure_seconds"]


def test_the_run_keeps_every_step_and_judges_its_rate(affine_run):
    _, result = affine_run
    s, trajectory = result["summary"], result["trajectory"]
    assert len(trajectory["loss"]) == 31 and len(trajectory["grad_norm_sq"]) == 30
    d = s["n_params"]  # 65·10 = 650 > n·m = 240: D1 holds at every record
    assert d == 650 and all(r["d1_status"] == "holds" for r in result["records"])
    again = theory.gradient_descent_rate(s["lr"], trajectory["loss"], trajectory["grad_norm_sq"],
                                         [r["certificate"] for r in result["records"]], True, rtol=RATE_RTOL)
    assert s["rate_status"] == again.status == theory.HOLDS
    assert trajectory["rate_bound"] == pytest.approx(list(again.details["bounds"]))
    assert s["rate_bound"] == trajectory["rate_bound"][-1] >= trajectory["loss"][-1]
    assert s["certificate_bar"] == max(r["certificate"] for r in result["records"])


def test_the_run_measures_the_coordinates_and_the_layers(affine_run):
    _, result = affine_run
    coordinates = result["coordinates"]
    assert [(r["step"], r["layer"]) for r in coordinates] == [(k, "head") for k in range(4)]
    assert coordinates[0]["mean_abs_change"] == 0.0 and coordinates[3]["mean_abs_change"] > 0
    layers = result["layers"]
    assert [(r["stage"], r["layer"]) for r in layers] == [("start", "head"), ("end", "head")]
    assert all(r["share"] == 1.0 and r["residual"] == 0.0 and r["rank"] == 240 for r in layers)
    assert not math.isnan(np.mean([r["kernel_velocity"] for r in result["records"][1:]]))
