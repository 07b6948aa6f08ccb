"""Every verdict function of ``theory`` says *refuted* on a constructed counterexample.

A check that cannot fail is a defect: for each statement the numbers below violate it (by hand), and the
verdict must say so. Where a statement has premises, a case where a premise fails must be *not applicable*;
where the evidence can be inconclusive, a case must be *not established*. A new verdict function without a
counterexample here fails ``test_every_verdict_function_has_a_counterexample``.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import theory

WIDTHS = np.repeat([16.0, 32.0, 64.0, 128.0], 3)
SEEDS = np.tile([0, 1, 2], 4)

#: statement function → a call on numbers that violate it.
COUNTEREXAMPLES = {
    "alignment_condition": lambda: theory.alignment_condition(0.1, 1e-8),
    "loss_decomposition": lambda: theory.loss_decomposition(1.0, 1.0, 0.0, 1),  # L = 1 ≠ (1 + 0)/2
    "alignment_lower_bound": lambda: theory.alignment_lower_bound(0.1, 1.0, 1),  # floor 0.5 > L
    # (I2) allows a ≤ sqrt(2·100·1e-11/100) = 4.47e-6 at L = 1e-11, n = 100, ‖Y‖² = 100
    "necessity_at_global_minimum": lambda: theory.necessity_at_global_minimum(1e-11, 5e-6, 100, 100.0),
    "gradient_domination": lambda: theory.gradient_domination(1.0, 0.1, 1.0, aligned=True),
    "excess_gradient_domination": lambda: theory.excess_gradient_domination(2.0, 1, 0.1, 1.0),
    "convex_loss_bound": lambda: theory.convex_loss_bound(1.0, 0.0, 0.1, 1.0, aligned=True),
    "best_convex_bound": lambda: theory.best_convex_bound(1.0, 0.1, [1.0], [0.5], [1.0], aligned=True),
    "convergence_rate_check": lambda: theory.convergence_rate_check([0.0, 1.0], [1.0, 1.0], 1.0),
    # τ₂ = 0.02/4 = 0.005 with B̄ = 0.01 allows L₂ ≤ 1/(1 + 4·0.005/1e-4) ≈ 0.005, far below 0.98
    "gradient_descent_rate": lambda: theory.gradient_descent_rate(1.0, [1.0, 0.99, 0.98], [4.0, 4.0], 0.01),
    "counting_bound": lambda: theory.counting_bound(7, 6, 10),
    "embedding": lambda: theory.embedding(0.1, 0.3),
    "deep_linear_rank_bound": lambda: theory.deep_linear_rank_bound(10, 2, 3),
    "kernel_movement_trend": lambda: theory.kernel_movement_trend(
        WIDTHS, WIDTHS**0.5 * (1 + 0.01 * SEEDS), expect="decreasing", groups=SEEDS),
    "application_bound": lambda: theory.application_bound(0.3, 3.0, 1.0, 5.0),
    "distance_non_increasing": lambda: theory.distance_non_increasing([3.0, 2.0, 2.5, 1.0]),
    "gd_step_distance_condition": lambda: theory.gd_step_distance_condition(0.2, 10.0, 0.25),
    # recorded change −0.01 where −4ηL + η²‖∇‖² = −0.4 + 0.01: a step that was not the gradient step
    "gd_distance_identity": lambda: theory.gd_distance_identity([2.0, 1.99], [1.0], [1.0], [0.1]),
    # Σ η(4L − η‖∇‖²) = 0.39, but ‖ω_τ‖² + ‖ν‖² − ‖x_K − x*‖² = 2 − 1.99 = 0.01
    "gd_telescoping_bound": lambda: theory.gd_telescoping_bound([1.0], [1.0], 0.1, 1.0, 1.0, 1.99),
    "cms_assessment": lambda: theory.cms_assessment(None, 0.2),
    "data_level_condition": lambda: theory.data_level_condition(0.1, 1e-8),
    # the probe's residual is at least 0.1, so the data's is at least 0.1·sqrt(100/1000) > 1e-8
    "alignment_from_subset": lambda: theory.alignment_from_subset(
        theory.alignment_condition(0.1, 1e-8), probe_rows=100, data_rows=1000, n_params=50, probe_norm_sq=100.0,
        data_norm_sq=1000.0),
}

#: statement function → a call whose premise is observed to fail.
NOT_APPLICABLE = {
    "alignment_lower_bound": lambda: theory.alignment_lower_bound(0.1, 1.0, 1, cms=False),
    "necessity_at_global_minimum": lambda: theory.necessity_at_global_minimum(1e-11, 5e-6, 100, 100.0, cms=False),
    "gradient_domination": lambda: theory.gradient_domination(1.0, 0.1, 1.0, aligned=False),
    "convex_loss_bound": lambda: theory.convex_loss_bound(1.0, 0.0, 0.1, 1.0, aligned=False),
    "best_convex_bound": lambda: theory.best_convex_bound(1.0, 0.1, [1.0], [0.5], [1.0], aligned=False),
    "convergence_rate_check": lambda: theory.convergence_rate_check([0.0, 1.0], [1.0, 1.0], 1.0,
                                                                    aligned=[True, False]),
    "gradient_descent_rate": lambda: theory.gradient_descent_rate(1.0, [1.0, 0.99, 0.98], [4.0, 4.0], 0.01,
                                                                  aligned=[True, False, True]),
    "application_bound": lambda: theory.application_bound(0.3, 3.0, 1.0, 5.0, aligned=False),
    "distance_non_increasing": lambda: theory.distance_non_increasing([3.0, 2.0, 2.5], step_condition=False),
    "gd_distance_identity": lambda: theory.gd_distance_identity([2.0, 1.99], [1.0], [1.0], [0.1], aligned=False),
    "gd_telescoping_bound": lambda: theory.gd_telescoping_bound([1.0], [1.0], 0.1, 1.0, 1.0, 1.99, aligned=False),
}

#: statement function → a call on evidence that cannot decide.
UNRESOLVED = theory.residual_bounds(6e-8, rows=1000, n_params=3466, kept_rank=990, resolution=1e-10,
                                    smallest_kept=1e-9, largest_discarded=1e-10, pinv_norm=1.0)
NOT_ESTABLISHED = {
    # a residual above the tolerance in the discarded directions, 10 of which may belong to Col J (990 < 1000)
    "alignment_condition": lambda: theory.alignment_condition(6e-8, 1.5e-8, bounds=UNRESOLVED),
    "data_level_condition": lambda: theory.data_level_condition(6e-8, 1.5e-8, bounds=UNRESOLVED),
    # a probe that holds says nothing about the rest of the data
    "alignment_from_subset": lambda: theory.alignment_from_subset(
        theory.alignment_condition(0.0, 1e-8), probe_rows=100, data_rows=1000, n_params=500, probe_norm_sq=100.0,
        data_norm_sq=1000.0),
    "loss_decomposition": lambda: theory.loss_decomposition(1.0, 1.0, 0.0, 1, uncertainty=1.0),
    "kernel_movement_trend": lambda: theory.kernel_movement_trend([16.0, 64.0], [1.0, 0.7], expect="decreasing"),
    "cms_assessment": lambda: theory.cms_assessment(0.5, 1e-12),
    # the wide residual looks larger, but the exact one may be as low as 0 (directions below the resolution)
    "embedding": lambda: theory.embedding(0.1, 0.3, wide_bounds=theory.ResidualBounds(0.0, 0.3)),
}


#: training recipes the gradient-descent statements do not describe → a premise ``gradient_descent_premises`` must
#: observe to fail (theory/recipe.md), which makes the statement not applicable.
NOT_GRADIENT_DESCENT = {
    "momentum": lambda: theory.gradient_descent_premises("horizon", {"name": "SGD", "lr": 0.1, "momentum": 0.9}),
    "Adam": lambda: theory.gradient_descent_premises("linearised", {"name": "Adam", "lr": 0.1}),
    "unstable step": lambda: theory.gradient_descent_premises("linearised", step_size=1.0, lambda_max=30.0, n=10),
    "minibatch": lambda: theory.gradient_descent_premises("horizon", full_batch=False),
    "cross-entropy": lambda: theory.gradient_descent_premises("linearised", squared_loss=False),
    "minibatch losses for the rate": lambda: theory.gradient_descent_premises("rate", full_batch=False),
}


def _verdict_functions() -> set[str]:
    names = set()
    for name in theory.__all__:
        obj = getattr(theory, name)
        if inspect.isfunction(obj) and inspect.signature(obj).return_annotation in ("Verdict", theory.Verdict):
            names.add(name)
    return names


def test_every_verdict_function_has_a_counterexample():
    assert _verdict_functions() == set(COUNTEREXAMPLES)


@pytest.mark.parametrize("name", sorted(COUNTEREXAMPLES))
def test_the_counterexample_is_refuted(name):
    v = COUNTEREXAMPLES[name]()
    assert v.status == theory.REFUTED, str(v)
    assert v.margin < -v.tolerance and not v.holds and str(v).split(":")[1].strip().startswith("refuted")


@pytest.mark.parametrize("name", sorted(NOT_APPLICABLE))
def test_a_failed_premise_makes_it_not_applicable(name):
    v = NOT_APPLICABLE[name]()
    assert v.status == theory.NOT_APPLICABLE and not v.evidence, str(v)
    assert any(p.met is False for p in v.premises)


@pytest.mark.parametrize("name", sorted(NOT_ESTABLISHED))
def test_inconclusive_evidence_is_not_established(name):
    v = NOT_ESTABLISHED[name]()
    assert v.status == theory.NOT_ESTABLISHED and v.details.get("reason"), str(v)


@pytest.mark.parametrize("name", sorted(NOT_GRADIENT_DESCENT))
def test_a_recipe_other_than_plain_full_batch_gradient_descent_makes_the_statements_not_applicable(name):
    premises = NOT_GRADIENT_DESCENT[name]()
    assert any(p.met is False for p in premises), [str(p) for p in premises]
    v = theory.gradient_descent_rate(1.0, [1.0, 0.5], [1.0], 1.0, recipe=premises)
    assert v.status == theory.NOT_APPLICABLE and not v.evidence


def test_the_necessity_bound_follows_i2_not_a_fixed_threshold():
    # the former check used a fixed 1e-6 at L ≤ 1e-10 and failed a = 4e-6 although (I2) allows 4.47e-6
    v = theory.necessity_at_global_minimum(1e-11, 4e-6, 100, 100.0)
    assert v.holds and v.rhs == pytest.approx(np.sqrt(2e-11))
    assert theory.necessity_at_global_minimum(0.5, 0.9, 100, 100.0).holds  # applies at every θ, not only at L ≈ 0


def test_counting_and_cauchy_schwarz_checks_are_sanity_not_evidence():
    assert theory.counting_bound(4, 6, 10).sanity and not theory.counting_bound(4, 6, 10).evidence
    assert theory.excess_gradient_domination(1.0, 1, 2.0, 1.0).sanity


def test_the_necessity_bound_is_not_refuted_by_an_upper_bound_on_the_residual():
    # a truncated solve gives a ≤ 5e-6 only: the violation of a ≤ sqrt(2nL)/‖Y‖ = 4.47e-6 cannot be shown
    v = theory.necessity_at_global_minimum(1e-11, 5e-6, 100, 100.0, uncertainty=5e-6)
    assert v.status == theory.NOT_ESTABLISHED and "uncertainty" in v.details["reason"]
