"""The Verdict type: its text, consistency checks and JSON form."""

from __future__ import annotations

import json
import math

import pytest

import theory
from theory import Verdict


def test_str_format_matches_the_documented_example():
    v = theory.gradient_domination(0.0123, 0.0912, 1.0, aligned=True)
    assert str(v) == "I3 gradient domination: holds  L=0.0123 ≤ ½‖∇L‖B=0.0456  (margin 0.0333)"
    assert bool(v) is True
    assert v.margin == pytest.approx(0.0333)


def test_failing_and_vacuous_str():
    assert str(theory.embedding(0.1, 0.3)).startswith("S2 embedding: FAILS  a_wide=0.3 ≤ a_narrow=0.1")
    assert "holds (vacuous)" in str(theory.gradient_domination(1.0, 1.0, 1.0, aligned=False))


def test_verdict_is_frozen_and_consistent():
    v = theory.embedding(0.3, 0.1)
    with pytest.raises(AttributeError):
        v.holds = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="inconsistent"):
        Verdict("X", "x", True, 1.0, 0.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="vacuous"):
        Verdict("X", "x", False, 1.0, 0.0, math.inf, 0.0, vacuous=True)


def test_to_dict_is_plain_json():
    v = theory.best_convex_bound(1.0, 0.5, [1, 2, 4], [0.8, 0.3, 0.05], [1, 1.5, 4], aligned=True)
    d = v.to_dict()
    assert d["statement"] == "I4.best"
    assert d["details"]["bounds"] == pytest.approx([1.3, 1.05, 2.05])
    assert isinstance(d["details"]["best_index"], int)
    json.loads(json.dumps(d))
