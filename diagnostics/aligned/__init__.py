"""Training that keeps the alignment condition D1 by construction (``theory/application.md``).

Train with any optimiser up to a switch iteration ``τ``; from ``τ`` on the model is the augmented model::

    f̃(x; θ, u) = f(x; θ) + Ψ(x) u,     u_τ = 0,

where ``Ψ`` is a *frozen feature map* fixed at ``τ`` (a deep copy of the model, batch norm in eval
mode, parameters never trained) whose training-set matrix contains the target, ``Q ∈ Col(Ψ_X)``
(D1 for the frozen block). The check is made once, at ``τ``, as ``check_alignment`` decides D1: on the bounds of
the exact residual of the block as training recomputes it, against ``residual_tol`` (the question's, in every
dtype; ``theory/application.md#d1-for-the-frozen-block``). Unless it holds (refuted, or not established), random
features are appended and widened until it does (both residuals are recorded); the augmented model is used either
way (``u_τ = 0``: it starts as the base model), and :meth:`AlignedTraining.guarantee` says *theorem* only where D1
holds, *no guarantee* where it is refuted, and *check* with D1 named as not shown where it is not established.
For a model with an affine output layer ``f = W h(x) + b`` and ``ω = (W, b)``, with
``Ψ_X ν = Q`` and ``x = (ω, u)``, ``x* = (0, ν)``, every gradient step on ``x`` satisfies exactly
(``theory/application.md#gradient-descent``, whatever the body parameters do in the same step)::

    ‖x_{k+1} − x*‖² = ‖x_k − x*‖² − 4ηL_k + η²‖∇_{ω,u}L_k‖²     (squared loss),

so the distance never increases while ``η‖∇_{ω,u}L_k‖² ≤ 4L_k``, and under gradient flow
``L(t) ≤ (‖ω_τ‖² + ‖ν‖²)/(4(t − τ))`` (``(…)/(2(t − τ))`` for ``L − L(Q)`` with cross-entropy).
:class:`AlignedTraining` records these quantities at every step after ``τ`` and checks them with the
verdicts of :mod:`theory`.

Feature maps (``feature_map=``)
    ``"tangent"``: ``Ψ(x) = α J_x(θ_τ)``, ``Ψ(x)u`` is one forward-mode product (``torch.func.jvp``) of
    the frozen copy; ``u`` has ``d`` entries and ``Col Ψ_X = Col J(θ_τ)`` (eval mode). The constant
    ``α > 0`` (``tangent_scale=``) changes neither the column space nor the theorem, only the trade-off
    between the constant (``‖ν‖ ∝ 1/α``) and the stable step (``λ_max(Ψ_XΨ_Xᵀ) ∝ α²``); by default
    ``α² = λ_max(ΦΦᵀ)/λ_max(JJᵀ)``, the frozen block as large as the output layer's own kernel
    (on the digits ResNet the whole NTK is about 500 times larger, and ``α = 1`` makes momentum SGD spike).
    ``"penultimate"``: ``Ψ(x)u = U [h(x; θ_τ); 1]``, one forward of the frozen copy without gradient
    and a linear map; ``u = U`` has ``m(p + 1)`` entries. D1 needs about ``n`` features.
    Enlargement appends random Fourier features ``r(h(x; θ_τ))`` of the frozen penultimate features.
Coefficients (``coefficients=``)
    ``"full"``: ``u`` as above (theory/application.md).
    ``"rank-one"``: ``Ψ(x)u`` restricted to the line of ``ν``: ``f̃ = f + s·ψ(x)`` with the frozen
    ``ψ = Ψν/‖ν‖`` and one trainable scalar ``s``. Same constant ``‖ω_τ‖² + ‖ν‖²``, a gradient block no
    larger than the full one, one extra parameter and no backward pass through the frozen copy
    (``theory/application_cheaper.md``).
"""

from .experiments import ExperimentConfig, run_experiment
from .features import FEATURE_MAPS, AugmentedModel, FrozenFeatures
from .reports import GuaranteeReport, SwitchReport
from .solve import AlignmentSolution, solve_alignment
from .trainer import COEFFICIENTS, AlignedTraining

__all__ = [
    "COEFFICIENTS",
    "FEATURE_MAPS",
    "AlignedTraining",
    "AlignmentSolution",
    "AugmentedModel",
    "ExperimentConfig",
    "FrozenFeatures",
    "GuaranteeReport",
    "SwitchReport",
    "run_experiment",
    "solve_alignment",
]
