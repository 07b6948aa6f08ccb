"""The learning-rate sweep: trials on real training, and the rule that picks lr₀ and the step budget."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from helpers import tiny

from diagnostics.width.lr_sweep import choose_settings, lr_sweep


def test_lr_sweep_trains_every_width_at_every_rate():
    config = tiny(widths={"mlp": (2, 32)}, seeds=(0,), parameterizations=("ntk",), steps=20,
                  lr_grid=(0.5, 1e5))
    table = lr_sweep(config, jobs=1, progress=False)
    assert len(table) == 4 and list(table["lr0"]) == [0.5, 1e5, 0.5, 1e5]
    calm, wild = table[table["lr0"] == 0.5], table[table["lr0"] == 1e5]
    assert (calm["final_loss"] < calm["initial_loss"]).all() and not calm["diverged"].any()
    assert wild["diverged"].all() and (wild["final_loss"] == math.inf).all()  # the loss overflowed
    assert set(table["n_outputs"]) == {240} and table.loc[table["width"] == 32, "n_params"].iloc[0] == 2410
    # λ_max(K_0) is measured once per run; the edge of the linearised dynamics is 2n/(λ_max·multiplier)
    for _, run in table.groupby("width"):
        assert run["lambda_max"].nunique() == 1
        assert run["edge_lr0"].iloc[0] == pytest.approx(2 * 24 / run["lambda_max"].iloc[0])


def trial(width, lr0, rise, diverged=False, final=0.1, reached=None, seed=0, edge=100.0):
    return {"family": "mlp", "parameterization": "ntk", "width": width, "seed": seed, "lr0": lr0,
            "n_params": width * 100, "n_outputs": 1000, "largest_rise": rise, "edge_lr0": edge,
            "diverged": diverged, "initial_loss": 0.5, "final_loss": final, "steps_to_level": reached}


def test_the_rule_takes_the_largest_rate_that_never_rises_nor_diverges():
    table = pd.DataFrame([
        trial(4, 1.0, -1e-3), trial(4, 2.0, -1e-3), trial(4, 4.0, -1e-3, diverged=True),
        trial(16, 1.0, -1e-3, reached=90), trial(16, 2.0, -1e-3, final=0.04, reached=40),
        trial(16, 2.0, -1e-3, final=0.06, reached=60, seed=1), trial(16, 4.0, 0.3),
        trial(64, 1.0, -1e-3), trial(64, 2.0, -1e-3), trial(64, 4.0, -1e-3),
    ])
    settings = choose_settings(table).iloc[0]
    assert settings["reference_width"] == 16  # the smallest width with d ≥ n·m
    assert settings["lr0"] == 2.0 and settings["stable_lr0"] == "1, 2"  # 4 diverges at width 4 and rises at 16
    assert settings["final_loss"] == 0.05 and settings["steps_to_level"] == 60  # the slower seed
    table.loc[5, "steps_to_level"] = None
    assert choose_settings(table).iloc[0]["steps_to_level"] is None  # a seed that never reached the level
    table.loc[0, "edge_lr0"] = 0.5  # width 4 (d < n·m) does not count for the edge of the linearised dynamics
    assert choose_settings(table).iloc[0]["lr0"] == 2.0
    table.loc[8, "edge_lr0"] = 1.5  # at width 64 the linearised dynamics diverge above lr₀ = 1.5
    assert choose_settings(table).iloc[0]["lr0"] == 1.0
