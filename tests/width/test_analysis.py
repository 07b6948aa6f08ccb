"""The findings of a width report are computed from the data."""

from __future__ import annotations

import math

import pytest

from diagnostics.width.analysis import counting_threshold, findings, movement_slopes


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
