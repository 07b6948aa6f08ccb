"""auto's cost model and plans (diagnostics/engine/choice.py): exact on the shapes it assumes."""

import gc

import pytest
from torch import nn

from diagnostics.engine.choice import NO_VMAP, PLANS, Choice, ChoiceCache, Plan, predict


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


def test_the_cache_holds_choices_per_model_and_key_without_keeping_models_alive():
    cache, model = ChoiceCache(), nn.Linear(2, 2)
    cache.put(model, ("a",), Choice(PLANS["vjp"], "why"))
    assert cache.get(model, ("a",)).plan == PLANS["vjp"] and cache.get(model, ("b",)) is None
    assert cache.get(nn.Linear(2, 2), ("a",)) is None
    del model
    gc.collect()
    assert len(cache._choices) == 0
