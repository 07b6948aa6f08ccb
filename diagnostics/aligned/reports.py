"""What aligned training reports: the switch (:class:`SwitchReport`) and the guarantee (:class:`GuaranteeReport`)."""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, fields

import theory

__all__ = ["GuaranteeReport", "SwitchReport"]


@dataclass
class SwitchReport:
    """What happened at the switch ``τ``: the D1 check of the frozen block, enlargement, ``ν``.

    Attributes
    ----------
    iteration
        ``τ`` (optimiser steps taken before the switch).
    residual_before, residual, rounding
        ``‖Q − Ψ_Xν‖/‖Q‖`` for the base feature map (rounding allowance included) and after enlargement
        (float64), and the rounding allowance of the final ``ν`` (:class:`AlignmentSolution`).
    aligned
        D1 for the frozen block holds (``verdict.holds``).
    verdict
        D1 for the frozen block (:func:`theory.alignment_condition` on the bounds of the exact residual of the block
        as training recomputes it, ``theory/application.md#d1-for-the-frozen-block``): *holds*, *refuted*, or *not
        established* with the reason in ``verdict.details``.
    enlargements
        ``(random features, residual, rank)`` for every width tried.
    omega_norm_sq, nu_norm_sq
        ``‖ω_τ‖²`` and ``‖ν₀‖²`` (``Ψ_Xν₀ = Q₀``: ``Y`` for mse, centred one-hot for ce).
    distance_scale, distance_target_loss
        ``c`` of the target ``Q = cQ₀`` used for the recorded distance (1 for mse), and ``L(cQ₀)``.
    n_coefficients
        Trainable entries added (``q`` for full coefficients, 1 for rank-one).
    tangent_scale
        ``α`` of the tangent map ``Ψ = α J_x(θ_τ)`` (1 for the penultimate map).
    """

    iteration: int
    feature_map: str
    coefficients: str
    loss: str
    n_samples: int
    n_outputs: int
    n_features: int
    n_coefficients: int
    rank: int
    residual_before: float
    residual: float
    rounding: float
    residual_tol: float
    aligned: bool
    enlargements: list[tuple[int, float, int]]
    random_features: int
    omega_norm_sq: float
    nu_norm_sq: float
    distance_scale: float
    distance_target_loss: float
    check_seconds: float
    tangent_scale: float = 1.0
    verdict: theory.Verdict | None = None

    def __str__(self) -> str:
        verdict = self.verdict.status if self.verdict is not None else ("holds" if self.aligned else "refuted")
        lines = [
            f"Switch at iteration {self.iteration}: feature map {self.feature_map!r}, {self.coefficients} "
            f"coefficients ({self.n_coefficients:,} trainable), loss {self.loss}",
            f"  D1 for the frozen block on n={self.n_samples} samples × m={self.n_outputs}: {verdict}; "
            f"residual {self.residual_before:.3e} → {self.residual:.3e} + rounding {self.rounding:.1e} "
            f"(tol {self.residual_tol:.1e}), "
            f"rank {self.rank}",
        ]
        if self.verdict is not None and "reason" in self.verdict.details:
            lines.append(textwrap.fill(f"    why: {self.verdict.details['reason']}", 116, subsequent_indent="      "))
        if self.enlargements:
            tried = ", ".join(f"{w} → {r:.2e}" for w, r, _ in self.enlargements)
            lines.append(f"  enlarged with random features (width → residual): {tried}")
        if self.feature_map == "tangent":
            lines.append(f"  tangent features scaled by α = {self.tangent_scale:.3g}")
        lines.append(
            f"  ‖ω_τ‖² = {self.omega_norm_sq:.4g}, ‖ν‖² = {self.nu_norm_sq:.4g}; "
            f"check took {self.check_seconds:.2f} s"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable fields."""
        out = {**asdict(self), "enlargements": [list(e) for e in self.enlargements]}
        out["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        return out


@dataclass
class GuaranteeReport:
    """The aligned-training guarantee checked on the recorded trajectory after ``τ`` (``theory/application.md``).

    Attributes
    ----------
    status
        ``"theorem"``, earned: D1 holds for the frozen block, the optimiser takes plain gradient steps on
        ``(ω, u)`` with one step size, every applied update was observed to be ``−η∇_{ω,u}L`` up to
        rounding, no outside write changed ``(ω, u)`` between steps, the one-step identity (squared loss) or
        inequality (convex loss) held at every step with the recorded distances, and so did the step
        condition; a declared full batch was observed (or is listed in ``assumed``). Then the summed identity
        and the average-loss bound are theorems for this run (the body may do anything).
        ``"check"``: some premise failed (``departures`` names each, with the step where it first did, a divergence
        included) or D1 for the frozen block is not established (``frozen_d1`` says why), and every number is a
        check. ``"no guarantee"``: D1 is refuted for the frozen block.
    departures
        Plain statements of how the run departs from the theorem.
    loss
        ``"mse"`` or ``"ce"``.
    bound_holds, records
        Records (``k ≥ 1``) within the gradient-flow form of the bound ``(‖ω_τ‖² + ‖ν‖²)/(4ηk)``, and their
        number (a check in discrete time: the exact statements are ``identity`` and ``telescoping``).
    worst_margin, max_bound_ratio
        Smallest ``bound − L`` and largest ``(L − L(Q))/(bound − L(Q))`` over the records.
    distance
        :func:`theory.distance_non_increasing` on ``d_0, d_1, …`` (not applicable when the step condition fails).
    identity
        :func:`theory.gd_distance_identity` at every step, with the recorded distances.
    step_condition_failures
        Steps with ``η‖∇_{ω,u}L‖² > 4L`` (``> 2(L − L(Q))`` for ce).
    telescoping
        :func:`theory.gd_telescoping_bound` with the recorded final distance (constant step), else ``None``.
    monotone_loss
        Whether the recorded loss never increased (needed for a last-iterate bound under GD).
    assumed
        Premises taken on the caller's word rather than observed: a declared ``full_batch=True`` when the loss was
        passed after the user's own step (with a closure it is observed: the closure's loss against the training
        loss). ``theorem`` then says so instead of "every premise observed".
    frozen_d1
        The switch's D1 verdict for the frozen block (what was shown of it, or why it was not).
    """

    status: str
    departures: tuple[str, ...]
    full_batch: bool
    loss: str
    records: int
    bound_holds: int
    worst_margin: float
    max_bound_ratio: float
    distance: theory.Verdict | None
    identity: theory.Verdict | None
    step_condition_failures: int
    telescoping: theory.Verdict | None
    monotone_loss: bool
    assumed: tuple[str, ...] = ()
    frozen_d1: theory.Verdict | None = None

    @property
    def all_bounds_hold(self) -> bool:
        """Every record satisfies the bound."""
        return self.bound_holds == self.records

    def __str__(self) -> str:
        observed = "every premise observed" if not self.assumed else "assumed, not observed: " + "; ".join(self.assumed)
        undecided = self.frozen_d1 is not None and self.frozen_d1.status == theory.NOT_ESTABLISHED
        why = [w for w, on in (("this run departs from the theorem", bool(self.departures)),
                               ("D1 for the frozen block is not established", undecided)) if on]
        head = {
            "theorem": f"THEOREM: gradient descent on (ω, u) with D1 for the frozen block, {observed}",
            "check": f"CHECK ONLY: {' and '.join(why) or 'a premise is not shown'}; the numbers below are checks",
            "no guarantee": "NO GUARANTEE: D1 fails for the frozen block",
        }[self.status]
        lines = [head]
        if self.frozen_d1 is not None:
            d1 = self.frozen_d1
            lines.append(f"  D1 for the frozen block (Q ∈ Col Ψ_X): {d1.status}; its exact residual lies in "
                         f"[{d1.details['lower']:.2e}, {d1.details['upper']:.2e}] (tol {d1.rhs:.1e})")
        if undecided:
            lines.append(textwrap.fill(f"  not shown: D1 for the frozen block — {self.frozen_d1.details['reason']}",
                                       116, subsequent_indent="    "))
        lines += [f"  departs: {d}" for d in self.departures]
        if not self.full_batch:
            lines.append("  minibatch losses: the identity holds per batch, not for the training loss")
        if self.identity is not None:
            lines.append(f"  {self.identity}")
        if self.telescoping is not None:
            lines.append(f"  {self.telescoping}")
        condition = "4L" if self.loss == "mse" else "2(L−L(Q))"
        lines.append(f"  steps above the condition η‖∇_(ω,u)L‖² ≤ {condition}: {self.step_condition_failures}")
        if self.distance is not None:
            lines.append(f"  {self.distance}")
        lines.append(
            f"  gradient-flow form L ≤ (‖ω_τ‖²+‖ν‖²)/(4ηk) (a check): {self.bound_holds}/{self.records} records "
            f"(worst margin {self.worst_margin:.3g}, largest ratio {self.max_bound_ratio:.3g})"
        )
        lines.append(f"  loss monotone after τ: {self.monotone_loss}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable fields (the verdicts as their own ``to_dict()``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["departures"] = list(self.departures)
        out["assumed"] = list(self.assumed)
        for key in ("distance", "identity", "telescoping", "frozen_d1"):
            out[key] = out[key].to_dict() if out[key] is not None else None
        return out
