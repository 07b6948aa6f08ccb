"""Every verdict function of :mod:`theory`, re-exported from the module of its topic."""

from .alignment import (
    ResidualBounds,
    alignment_condition,
    alignment_from_subset,
    data_level_condition,
    residual_bounds,
    witness_bounds,
)
from .application import (
    application_bound,
    distance_non_increasing,
    frozen_d1_premise,
    gd_distance_identity,
    gd_step_distance_condition,
    gd_telescoping_bound,
)
from .cms import cms_assessment
from .rates import convergence_rate_check, gradient_descent_rate, gradient_flow_rate
from .recipe import UnstablePart, gradient_descent_premises, unstable_part
from .results import (
    alignment_lower_bound,
    best_convex_bound,
    convex_loss_bound,
    d1_premise,
    data_level_premise,
    excess_gradient_domination,
    gradient_domination,
    loss_decomposition,
    necessity_at_global_minimum,
)
from .verdict import HOLDS, NOT_APPLICABLE, NOT_ESTABLISHED, REFUTED, STATUSES, TINY, Premise, Verdict
from .width import counting_bound, deep_linear_rank_bound, embedding, kernel_movement_trend

__all__ = [
    "HOLDS",
    "NOT_APPLICABLE",
    "NOT_ESTABLISHED",
    "REFUTED",
    "STATUSES",
    "TINY",
    "Premise",
    "ResidualBounds",
    "UnstablePart",
    "Verdict",
    "alignment_condition",
    "alignment_from_subset",
    "alignment_lower_bound",
    "application_bound",
    "best_convex_bound",
    "cms_assessment",
    "convergence_rate_check",
    "convex_loss_bound",
    "counting_bound",
    "d1_premise",
    "data_level_condition",
    "data_level_premise",
    "deep_linear_rank_bound",
    "distance_non_increasing",
    "embedding",
    "excess_gradient_domination",
    "frozen_d1_premise",
    "gd_distance_identity",
    "gd_step_distance_condition",
    "gd_telescoping_bound",
    "gradient_descent_premises",
    "gradient_descent_rate",
    "gradient_domination",
    "gradient_flow_rate",
    "kernel_movement_trend",
    "loss_decomposition",
    "necessity_at_global_minimum",
    "residual_bounds",
    "unstable_part",
    "witness_bounds",
]
