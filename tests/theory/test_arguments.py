"""Every verdict function refuses invalid inputs with ValueError (the checks of ``theory/_arguments.py``)."""

from __future__ import annotations

import pytest

import theory


@pytest.mark.parametrize(
    "call",
    [
        lambda: theory.loss_decomposition(float("nan"), 1.0, 1.0, 2),
        lambda: theory.loss_decomposition(1.0, -1.0, 1.0, 2),
        lambda: theory.loss_decomposition(1.0, 1.0, 1.0, 0),
        lambda: theory.loss_decomposition(1.0, 1.0, 1.0, 2, rtol=-1.0),
        lambda: theory.alignment_lower_bound(1.0, float("inf"), 2),
        lambda: theory.necessity_at_global_minimum(0.0, float("nan"), 4, 1.0),
        lambda: theory.necessity_at_global_minimum(0.1, 0.1, 4, 0.0),
        lambda: theory.gradient_domination(1.0, -0.1, 1.0, True),
        lambda: theory.gradient_domination(1.0, 0.1, float("nan"), True),
        lambda: theory.gradient_domination(1.0, 0.1, 1.0, "yes"),
        lambda: theory.excess_gradient_domination(1.0, 2, float("nan"), 1.0),
        lambda: theory.convex_loss_bound(1.0, float("nan"), 1.0, 1.0, True),
        lambda: theory.convex_loss_bound(1.0, 0.0, 1.0, -1.0, True),
        lambda: theory.best_convex_bound(1.0, 1.0, [1.0], [float("nan")], [1.0], True),
        lambda: theory.gradient_flow_rate(float("nan"), 1.0, 1.0),
        lambda: theory.convergence_rate_check([0.0, 1.0], [1.0, float("nan")], 1.0),
        lambda: theory.convergence_rate_check([0.0, 1.0], [1.0, 0.5], -1.0),
        lambda: theory.counting_bound(1, 0, 4),
        lambda: theory.embedding(float("nan"), 0.1),
        lambda: theory.embedding(-0.1, 0.1),
        lambda: theory.deep_linear_rank_bound(1, 2, 0),
        lambda: theory.kernel_movement_trend([1.0, float("inf")], [0.1, 0.2]),
        lambda: theory.application_bound(float("nan"), 1.0, 1.0, 1.0),
        lambda: theory.application_bound(0.1, -1.0, 1.0, 1.0),
        lambda: theory.application_bound(0.1, 1.0, 1.0, -1.0),
        lambda: theory.distance_non_increasing([1.0, float("nan")]),
        lambda: theory.distance_non_increasing([1.0, -0.5]),
        lambda: theory.gd_step_distance_condition(0.1, float("inf"), 1.0),
        lambda: theory.gd_telescoping_bound([1.0], [1.0, 2.0], 0.1, 1.0, 1.0, 1.0),
        lambda: theory.gd_distance_identity([1.0, 0.9, 0.8], [1.0], [1.0], [0.1]),
        lambda: theory.gd_distance_identity([1.0, 0.9], [1.0], [1.0], [0.1], rounding=-1.0),
        lambda: theory.alignment_condition(float("nan"), 1e-8),
        lambda: theory.kernel_movement_trend([1.0, 2.0, 4.0], [0.1, 0.2, 0.3], level=1.5),
        lambda: theory.kernel_movement_trend([1.0, 2.0, 4.0], [0.1, 0.2, 0.3], groups=[0, 1]),
        lambda: theory.cms_assessment(float("nan"), 0.0),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()
