"""The predictor of the final loss and the gain of representation learning, on tables with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from diagnostics.width.predictors import best_predictors, gain_table, predictor_errors, predictor_findings


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


def test_best_predictor_per_side_and_kind():
    best = best_predictors(runs_table()).set_index(["side", "kind"])
    assert best.loc[("d ≥ n·m", "a priori"), "best"] == "linearised dynamics at K_0"
    assert best.loc[("d ≥ n·m", "a priori"), "second"] == "horizon floor of K_0"
    assert best.loc[("d ≥ n·m", "post hoc"), "best"] == "horizon floor of K_T"
    assert best.loc[("d ≥ n·m", "post hoc"), "second"] == "gradient-descent rate bound"
    assert best.loc[("d < n·m", "a priori"), "best"] == "horizon floor of K_0"
    assert best.loc[("d < n·m", "post hoc"), "best"] == "exact (I2) floor"
    assert best.loc[("d < n·m", "post hoc"), "ratio"] == 2.0
    text = " ".join(predictor_findings(runs_table()))
    assert "a priori: d < n·m: **horizon floor of K_0**" in text
    assert "**linearised dynamics at K_0** (final loss / prediction = 1" in text
    assert "post hoc: d < n·m: **exact (I2) floor**" in text


def test_no_predictor_applies_to_adamw_on_cross_entropy():
    reasons = {f"{s}_reason": "AdamW is not plain gradient descent" for s in ("horizon", "linearised", "final_horizon")}
    runs = runs_table().assign(**{f"{s}_applies": False for s in ("horizon", "linearised", "final_horizon", "rate")},
                               **reasons, rate_reason="trained on the ce loss", measure_loss="ce",
                               init_horizon_loss_floor=None, final_horizon_floor=None, linearised_loss=None,
                               rate_bound=None)
    assert best_predictors(runs).empty
    text = " ".join(predictor_findings(runs))
    assert ("a priori: none applies (the horizon floor of K_0 does not apply (AdamW is not plain gradient descent); "
            "the linearised dynamics at K_0 does not apply (AdamW is not plain gradient descent))") in text
    assert "the gradient-descent rate bound does not apply (trained on the ce loss)" in text
    assert "the (I2) floor bounds the squared loss, and these runs are measured in ce" in text
    assert gain_table(runs)["gain"].isna().all() and (gain_table(runs)["diverged"] == 0).all()


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
