"""The predictor of the final loss and the gain of representation learning, on tables with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from diagnostics.width.predictors import (
    best_predictors,
    gain_table,
    predictor_errors,
    predictor_findings,
    stability_findings,
)


def runs_table() -> pd.DataFrame:
    rows = []
    for width, d in ((4, 50), (64, 800)):
        for seed, loss in ((0, 0.1), (1, 0.4)):
            rows.append({
                "family": "mlp", "parameterization": "ntk", "width": width, "seed": seed, "n_params": d,
                "n_outputs": 100, "final_loss": loss, "init_loss": 1e4,
                "final_loss_lower_bound": loss / 2 if d < 100 else 0.0,  # below: off by a factor 2; above: 0
                "init_horizon_loss_floor": loss * 10,  # one decade off everywhere
                "final_horizon_floor": loss / 1.1 if d >= 100 else loss * 100,
                "linearised_loss": loss * (1.0 if d >= 100 else 1000.0),  # exact above the threshold
                "rate_bound": loss * 3, "rate_rising_steps": seed,  # seed 1 has rises: its bound is not used
            })
    return pd.DataFrame(rows)


def test_predictor_errors_in_decades():
    errors = predictor_errors(runs_table()).set_index(["side", "predictor"])
    below, above = errors.loc["d < n·m"], errors.loc["d ≥ n·m"]
    assert below.loc["final_loss_lower_bound", "ratio"] == 2.0
    assert below.loc["final_loss_lower_bound", "error"] == pytest.approx(math.log10(2))
    assert above.loc["final_loss_lower_bound", "error"] == math.inf  # a floor of 0 under a positive loss
    assert above.loc["init_horizon_loss_floor", "error"] == pytest.approx(1.0)
    assert above.loc["linearised_loss", "error"] == pytest.approx(0.0, abs=1e-15)
    assert above.loc["rate_bound", "runs"] == 1 and below.loc["final_horizon_floor", "ratio"] == pytest.approx(0.01)


def test_best_predictor_per_side():
    best = best_predictors(runs_table()).set_index("side")
    assert best.loc["d ≥ n·m", "best"] == "linearised dynamics at K_0"
    assert best.loc["d ≥ n·m", "second"] == "horizon floor of K_T (post hoc)"
    assert best.loc["d < n·m", "best"] == "exact (I2) floor at θ_T (post hoc)" and best.loc["d < n·m", "ratio"] == 2.0
    text = " ".join(predictor_findings(runs_table()))
    assert "**linearised dynamics at K_0** (final loss / prediction = 1" in text


def test_gain_is_the_geometric_mean_over_seeds():
    runs = runs_table()
    runs.loc[runs["seed"] == 1, "linearised_loss"] *= 4  # gains 1 and 4 at width 64: geometric mean 2
    gains = gain_table(runs).set_index("width")
    assert gains.loc[64, "gain"] == pytest.approx(2.0) and gains.loc[4, "gain"] == pytest.approx(2000.0)
    assert "mlp/ntk 2 at width 64 → 2 at width 64" in " ".join(predictor_findings(runs))


def test_gain_leaves_out_diverged_linearised_dynamics():
    runs = runs_table()
    runs.loc[(runs["width"] == 64) & (runs["seed"] == 1), "linearised_loss"] = 2e4  # above L_0 = 1e4
    gains = gain_table(runs).set_index("width")
    assert gains.loc[64, "gain"] == pytest.approx(1.0) and gains.loc[64, "diverged"] == 1  # seed 0 alone
    assert "(1 runs whose linearised dynamics diverge" in " ".join(predictor_findings(runs))
    runs.loc[runs["width"] == 64, "linearised_loss"] = math.inf
    assert math.isnan(gain_table(runs).set_index("width").loc[64, "gain"])
    assert not any(s.startswith("**Gain") for s in predictor_findings(runs))  # no width above with a gain


def test_runs_beyond_the_stable_step_are_named_and_their_linearised_numbers_left_out():
    runs = runs_table().assign(run_id=[f"run{k}" for k in range(4)], init_step_ratio=[1.0, 2.51, 1.3, 1.9],
                               final_step_ratio=[1.0, 1.0, 1.0, 2.2])
    assert stability_findings(runs_table()) == []  # a table without the ratios (an older sweep) says nothing
    text = " ".join(stability_findings(runs))
    assert "1 with ηλ_max(K_0)/n > 2 — run1 (2.51)" in text and "1 with ηλ_max(K_T)/n > 2 — run3 (2.2)" in text
    assert text in " ".join(predictor_findings(runs))
    assert stability_findings(runs.assign(init_step_ratio=1.0, final_step_ratio=2.0)) == []  # 2 is stable
