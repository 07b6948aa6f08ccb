"""The Verdict type: its four answers, premises, text, consistency checks and JSON form."""

from __future__ import annotations

import json
import math

import pytest

import theory
from theory import Premise, Verdict
from theory.verdict import judge


def test_str_format_matches_the_documented_example():
    v = theory.gradient_domination(0.0123, 0.0912, 1.0, aligned=True)
    assert str(v) == "I3 gradient domination: holds  L=0.0123 ≤ ½‖∇L‖B=0.0456  (margin 0.0333)"
    assert bool(v) is True and v.status == theory.HOLDS and v.evidence
    assert v.margin == pytest.approx(0.0333)


def test_refuted_and_not_applicable_str():
    assert str(theory.embedding(0.1, 0.3)).startswith("S2 embedding: refuted  a_wide=0.3 ≤ a_narrow=0.1")
    na = theory.gradient_domination(1.0, 1.0, 1.0, aligned=False)
    assert na.status == theory.NOT_APPLICABLE and not na.holds and not na.refuted and not na.evidence
    assert str(na) == "I3 gradient domination: not applicable (premise not met: D1: Q ∈ Col J)"
    assert "[sanity]" in str(theory.counting_bound(3, 6, 4))


def test_judge_gives_each_of_the_four_answers():
    common = ("X", "x", 1.0, 0.0, 0.1, {}, "a", "b")
    assert judge(*common, margin=-0.05).status == theory.HOLDS
    assert judge(*common).status == theory.REFUTED  # margin −1 < −0.1
    unsure = judge(*common, uncertainty=2.0)
    assert unsure.status == theory.NOT_ESTABLISHED and "uncertainty" in unsure.details["reason"]
    assert judge(*common, premises=[Premise("p", False)]).status == theory.NOT_APPLICABLE
    assumed = judge(*common, premises=[Premise("p", None, "the caller's")])
    assert assumed.status == theory.REFUTED and "assumed" in str(assumed.premises[0])


def test_verdict_is_frozen_and_consistent():
    v = theory.embedding(0.3, 0.1)
    with pytest.raises(AttributeError):
        v.status = theory.REFUTED  # type: ignore[misc]
    with pytest.raises(ValueError, match="inconsistent"):
        Verdict("X", "x", theory.HOLDS, 1.0, 0.0, -1.0, 0.0)
    with pytest.raises(ValueError, match="inconsistent"):
        Verdict("X", "x", theory.REFUTED, 0.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="not applicable exactly"):
        Verdict("X", "x", theory.NOT_APPLICABLE, 1.0, 0.0, math.nan, 0.0)
    with pytest.raises(ValueError, match="not applicable exactly"):
        Verdict("X", "x", theory.HOLDS, 0.0, 1.0, 1.0, 0.0, premises=(Premise("p", False),))
    with pytest.raises(ValueError, match="status"):
        Verdict("X", "x", "FAILS", 0.0, 1.0, 1.0, 0.0)


def test_to_dict_is_plain_json():
    v = theory.best_convex_bound(1.0, 0.5, [1, 2, 4], [0.8, 0.3, 0.05], [1, 1.5, 4], aligned=True)
    d = v.to_dict()
    assert d["statement"] == "I4.best" and d["status"] == "holds"
    assert d["details"]["bounds"] == pytest.approx([1.3, 1.05, 2.05])
    assert isinstance(d["details"]["best_index"], int)
    assert d["premises"][0] == {"name": "D1: Q ∈ Col J", "met": True, "note": "", "undecided": False}
    json.loads(json.dumps(d))
