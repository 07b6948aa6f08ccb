"""Pure mathematics of Kawaguchi, Zhang & Deng (2022) on measured numbers.

The statements of the working specification (``THEORY.md``) as functions of floats and numpy
arrays, each returning a :class:`~theory.verdicts.Verdict`. No torch, no models: the toolkit
``diagnostics`` measures, ``theory`` judges. The proofs are in the markdown files of this package,
indexed by ``theory/README.md``.
"""

from .verdicts import (
    TINY,
    Verdict,
    alignment_lower_bound,
    application_bound,
    best_convex_bound,
    cms_assessment,
    convergence_rate_check,
    convex_loss_bound,
    counting_bound,
    deep_linear_rank_bound,
    distance_non_increasing,
    embedding,
    excess_gradient_domination,
    gd_step_distance_condition,
    gd_telescoping_bound,
    gradient_domination,
    gradient_flow_rate,
    kernel_movement_trend,
    loss_decomposition,
    necessity_at_global_minimum,
)

__all__ = [
    "TINY",
    "Verdict",
    "alignment_lower_bound",
    "application_bound",
    "best_convex_bound",
    "cms_assessment",
    "convergence_rate_check",
    "convex_loss_bound",
    "counting_bound",
    "deep_linear_rank_bound",
    "distance_non_increasing",
    "embedding",
    "excess_gradient_domination",
    "gd_step_distance_condition",
    "gd_telescoping_bound",
    "gradient_domination",
    "gradient_flow_rate",
    "kernel_movement_trend",
    "loss_decomposition",
    "necessity_at_global_minimum",
]
