"""The findings of a width report are computed from the data, and their pass/fail words are theory's verdicts."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from diagnostics.width.analysis import counting_threshold, findings, movement_slopes, record_verdicts, status_counts


def test_findings_are_computed_from_the_data(report):
    sweep = report.sweep
    # d = 160 at width 2 and 610 at width 8: log-log interpolation to d = n·m = 240
    expected = 2 * 4 ** (math.log(240 / 160) / math.log(610 / 160))
    assert counting_threshold(sweep.runs)["mlp"] == pytest.approx(expected)
    slopes = movement_slopes(sweep.runs)
    assert set(slopes["parameterization"]) == {"ntk", "mf"}
    assert (slopes["low"] <= slopes["slope"]).all() and (slopes["slope"] <= slopes["high"]).all()
    assert set(slopes["status"]) <= {"holds", "refuted", "not established"} and (slopes["seeds"] == 2).all()
    text = " ".join(findings(sweep))
    assert "With n·m = 240 stacked outputs" in text and "at width ≈ " in text
    first = slopes.iloc[0]
    assert f"{first['slope']:+.2f} (90% interval over 2 seeds [{first['low']:+.2f}, {first['high']:+.2f}])" in text
    assert "**(I3) gradient-descent rate**" in text and "**Verdicts at every record**" in text


def test_record_verdicts_use_the_theory_words(report):
    verdicts = record_verdicts(report.sweep.records)
    n_records = len(report.sweep.records)
    assert (verdicts["statement"] == "D1").sum() == n_records
    # d < n·m at width 2: D1 fails in exact arithmetic, but a ReLU network's J is rank-deficient by construction,
    # so the Gram cannot show it (theory/alignment.md#resolution): D1 never holds there, and (I3), resting on an
    # undecided premise, is never refuted
    below = verdicts[verdicts["width"] == 2]
    assert (below.loc[below["statement"] == "D1", "status"] != "holds").all()
    assert (below.loc[below["statement"] == "I3", "status"].isin(["holds", "not applicable", "not established"])).all()
    assert (verdicts.loc[verdicts["statement"] == "I2", "status"] == "holds").all()
    assert status_counts(pd.Series(["holds", "refuted", "holds"])) == "holds at 2, refuted at 1 of 3"
