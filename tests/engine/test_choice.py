"""auto's cost model, plans and knowledge (diagnostics/engine/choice.py): exact on the shapes it assumes."""

import gc

import pytest
from torch import nn

from diagnostics.engine.choice import NO_VMAP, PLANS, Choice, Knowledge, Plan, predict
from diagnostics.engine.functional import PerModel


@pytest.mark.parametrize("exponent", [1, 2])
def test_prediction_recovers_a_cost_of_the_assumed_shape(exponent):
    a, b, rate = 0.01, 3e-4, 1e9

    def cost(s):  # formation a + b s^e, plus products of 2 (10 s)² · 50 FLOPs
        return a + b * s**exponent + 2 * (10 * s) ** 2 * 50 / rate

    products = tuple(2 * (10 * s) ** 2 * 50 for s in (4, 8, 100))
    assert predict((cost(4), cost(8)), (4, 8), 100, exponent, products, rate) == pytest.approx(cost(100), rel=1e-12)


def test_prediction_never_goes_below_the_products_nor_uses_negative_slopes():
    # noise: the larger slice was faster than the smaller one
    assert predict((0.02, 0.01), (4, 8), 100, 1, (0.0, 0.0, 5e6), 1e9) == pytest.approx(0.01 + 5e-3)


def test_plans_say_what_they_are():
    assert [p.label for p in PLANS.values()] == ["structured", "jacrev", "vjp"]
    assert PLANS["structured"].per_sample and PLANS["jacrev"].per_sample and not PLANS["vjp"].per_sample
    assert [p.label for p in NO_VMAP] == ["structured+vjp", "vjp"]
    chunked = NO_VMAP[0].chunked(8)
    assert chunked == Plan("structured", "vjp", 8) and chunked.label == "structured+vjp (chunks of 8 samples)"
    assert (PLANS["vjp"].exponent, chunked.exponent, PLANS["jacrev"].exponent) == (2, 1, 1)
    assert "for the whole batch: vjp 2 ms, jacrev 5 ms" in Choice(
        PLANS["vjp"], "auto: vjp", {"jacrev": 5e-3, "vjp": 2e-3}).describe()


def test_what_the_engine_remembers_is_per_model_and_key_and_never_keeps_a_model_alive():
    memo, model = PerModel(), nn.Linear(2, 2)
    memo.put(model, ("a",), Choice(PLANS["vjp"], "why"))
    assert memo.get(model, ("a",)).plan == PLANS["vjp"] and memo.get(model, ("b",)) is None
    assert memo.get(nn.Linear(2, 2), ("a",)) is None
    memo.forget(model, ("a",))
    assert memo.get(model, ("a",)) is None
    memo.put(model, ("a",), 1)
    del model
    gc.collect()
    assert len(memo._facts) == 0


def test_knowledge_keeps_the_fastest_run_and_reads_back_what_it_wrote():
    know = Knowledge()
    know.time(PLANS["structured"], 0.03)
    know.time(PLANS["structured"], 0.02)
    know.time(PLANS["structured"], 0.05)
    chunked = NO_VMAP[1].chunked(6)
    know.predict(chunked, 0.01)
    know.bounds["jacrev"] = 0.5
    know.rule_out(PLANS["jacrev"], "too slow")
    know.chunks["vjp"] = 6
    assert know.timed == {"structured": 0.02} and know.fastest() == 0.02
    assert know.times() == {"structured": 0.02, chunked.label: 0.01}  # a plan ruled out is not listed
    again = Knowledge.from_dict(know.to_dict())
    assert again.to_dict() == know.to_dict() and again.plans[chunked.label] == chunked
    assert (again.measured, again.spent) == (0.0, 0.0)  # this process's budget is not stored


@pytest.mark.parametrize("stored", [
    {},  # keys missing
    {"plans": {"structured": ["structured", "jacrev", 0]}, "timed": {"structured": "fast"}, "predicted": {},
     "bounds": {}, "ruled_out": {}, "chunks": {}, "no_vmap": ""},  # a time that is not a number
    {"plans": {"magic": ["magic", "jacrev", 0]}, "timed": {}, "predicted": {}, "bounds": {}, "ruled_out": {},
     "chunks": {}, "no_vmap": ""},  # a strategy that does not exist
    {"plans": {"jacrev": ["structured", "jacrev", 0]}, "timed": {}, "predicted": {}, "bounds": {}, "ruled_out": {},
     "chunks": {}, "no_vmap": ""},  # a label that names another plan
    {"plans": [], "timed": {}, "predicted": {}, "bounds": {}, "ruled_out": {}, "chunks": {}, "no_vmap": ""},
])
def test_knowledge_refuses_what_it_did_not_write(stored):
    with pytest.raises((TypeError, ValueError, KeyError, AttributeError)):
        Knowledge.from_dict(stored)
