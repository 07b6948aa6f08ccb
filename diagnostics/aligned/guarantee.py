"""The steps after the switch and the aligned-training guarantee they are checked against (theory/application.md).

:class:`Trajectory` holds one :class:`StepRecord` per optimiser step after ``τ`` and the constants of
the guarantee (``‖ω_τ‖²``, ``‖ν‖²``, the target scales for cross-entropy); it turns them into the
per-step history (:meth:`Trajectory.history`) and the :class:`~diagnostics.aligned.reports.GuaranteeReport`
(:meth:`Trajectory.report`), judging every statement with :mod:`theory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

import theory
from theory.verdict import ratio

from ..targets import CE_SCALES, Targets, best_scale
from .reports import GuaranteeReport

__all__ = ["HISTORY_COLUMNS", "StepRecord", "Trajectory", "scale_for_loss"]

#: Columns of :meth:`Trajectory.history`.
HISTORY_COLUMNS = ("iteration", "step", "loss", "grad_sq", "lr", "elapsed", "distance", "distance_next", "bound",
                   "margin", "bound_ratio", "bound_holds", "step_margin", "step_ok", "update_error", "update_ok")


@dataclass
class StepRecord:
    """One optimiser step after ``τ``: its loss, ``‖∇_{ω,u}L‖²``, step size, the distance before and after.

    ``update_error`` is ``‖x_{k+1} − x_k + η∇_{ω,u}L_k‖`` for the update the optimiser actually applied to
    ``x = (ω, u)``, ``update_size`` ``‖η∇_{ω,u}L_k‖``, ``rounding`` what the parameters' precision allows the
    former to be, and ``x_norm`` ``‖x_{k+1}‖``. ``outside_change`` is ``‖x_k − x_k'‖`` between the parameters the
    step started from and those the previous step left (an outside write; 0 when the two are the same),
    ``eps`` the machine epsilon of the recorded numbers (the coarser of the parameters' and the loss's dtype), and
    ``training_loss`` the loss of the whole training set at ``x_k`` when it was measured (``nan`` otherwise).
    """

    iteration: int
    step: int
    loss: float
    grad_sq: float
    lr: float
    distance_sq: float
    distance_next_sq: float
    update_error: float = 0.0
    update_size: float = 0.0
    rounding: float = 0.0
    x_norm: float = 0.0
    outside_change: float = 0.0
    eps: float = float(np.finfo(np.float32).eps)
    training_loss: float = math.nan

    @property
    def plain_step(self) -> bool:
        """The applied update is ``−η∇_{ω,u}L`` up to rounding."""
        return math.isfinite(self.update_error) and self.update_error <= self.rounding + 1e-9 * self.update_size

    @property
    def identity_rounding(self) -> float:
        """What rounding allows the one-step identity to miss by: the parameters' and the losses' arithmetic."""
        return (2 * math.sqrt(self.distance_next_sq) * (self.rounding + 2 * self.eps * self.x_norm)
                + 2 * self.eps * (4 * self.lr * abs(self.loss) + self.lr**2 * self.grad_sq))

    @property
    def diverged(self) -> bool:
        """Whether the run has diverged by this step.

        A recorded number is infinite or not a number (a loss merely not given, ``nan``, does not count), or the
        identity's rounding overflows.
        """
        numbers = (self.grad_sq, self.distance_sq, self.distance_next_sq, self.x_norm, self.update_size)
        if math.isinf(self.loss) or not all(math.isfinite(x) for x in numbers):
            return True
        return math.isfinite(self.loss) and math.isfinite(self.lr) and not math.isfinite(self.identity_rounding)


def scale_for_loss(target_loss: float, m: int) -> float:
    """``c`` with ``L(cQ₀) = log(1 + (m−1)e^{−c}) = target_loss`` for the centred one-hot ``Q₀``."""
    return math.log((m - 1) / math.expm1(target_loss))


class Trajectory:
    """The recorded steps after ``τ`` with the constants of the aligned-training guarantee.

    Parameters
    ----------
    targets
        The training targets (``Q₀``, the loss).
    omega_sq, nu_sq
        ``‖ω_τ‖²`` and ``‖ν₀‖²`` (``Ψ_Xν₀ = Q₀``).
    distance_scale
        ``c`` of the target ``cQ₀`` to which the distance is recorded (1 for the squared loss).
    """

    def __init__(self, targets: Targets, omega_sq: float, nu_sq: float, distance_scale: float) -> None:
        self.targets = targets
        self.loss = targets.loss
        self.omega_sq = omega_sq
        self.nu_sq = nu_sq
        self.distance_scale = distance_scale
        if self.loss == "mse":
            self.scales, self.scale_losses = np.array([1.0]), np.array([0.0])
        else:
            self.scales = np.concatenate([CE_SCALES, [distance_scale]])
            self.scale_losses = targets.scaled_target_losses(self.scales)
        self.distance_target_loss = self.loss_at_scale(distance_scale)
        self.records: list[StepRecord] = []

    def loss_at_scale(self, c: float) -> float:
        """``L(cQ₀)`` (0 for the squared loss, whose bound is on ``L`` itself)."""
        return 0.0 if self.loss == "mse" else float(self.targets.scaled_target_losses([c])[0])

    def bound(self, loss: float, elapsed: float) -> tuple[theory.Verdict, float]:
        """Check the guarantee's bound at ``t − τ = elapsed`` (best target scale for ce); return it and ``L(Q)``."""
        if self.loss == "mse":
            return theory.application_bound(loss, self.omega_sq, self.nu_sq, elapsed), 0.0
        if elapsed > 0:
            k = best_scale(self.scale_losses, (self.omega_sq + self.scales**2 * self.nu_sq) / (2 * elapsed))
        else:
            k = len(self.scales) - 1
        c, lq = float(self.scales[k]), float(self.scale_losses[k])
        verdict = theory.application_bound(loss, self.omega_sq, c**2 * self.nu_sq, elapsed, convex=True,
                                           target_loss=lq)
        return verdict, lq

    def history(self) -> pd.DataFrame:
        """One row per step after ``τ``.

        Columns: ``iteration``, ``step`` ``k`` (steps since ``τ``), ``loss`` ``L_k``, ``grad_sq``
        ``‖∇_{ω,u}L_k‖²``, ``lr`` ``η_k`` (NaN when ``ω`` and ``u`` have different step sizes), ``elapsed``
        ``t_k − τ = Σ_{j<k} η_j``, ``distance`` ``‖x_k − x*‖`` and ``distance_next`` ``‖x_{k+1} − x*‖``,
        ``bound`` (on ``L_k``; ``inf`` at ``k = 0``), ``margin`` ``bound − L_k``, ``bound_ratio``
        ``(L_k − L(Q))/(bound − L(Q))`` (``L(Q) = 0`` for mse; ``≤ 1`` when the bound holds), ``bound_holds``,
        ``step_margin`` ``4L_k − η‖∇‖²`` (ce: ``2(L_k − L(cQ₀)) − η‖∇‖²``) and ``step_ok``.
        """
        rows, elapsed = [], 0.0
        for r in self.records:
            row = {"iteration": r.iteration, "step": r.step, "loss": r.loss, "grad_sq": r.grad_sq, "lr": r.lr,
                   "elapsed": elapsed, "distance": math.sqrt(r.distance_sq),
                   "distance_next": math.sqrt(r.distance_next_sq)}
            if math.isfinite(r.loss) and math.isfinite(elapsed):
                verdict, lq = self.bound(r.loss, elapsed)
                row.update(bound=verdict.rhs + lq, margin=verdict.margin,
                           bound_ratio=verdict.details["bound_ratio"], bound_holds=verdict.holds)
            else:
                row.update(bound=math.nan, margin=math.nan, bound_ratio=math.nan, bound_holds=False)
            if math.isfinite(r.loss) and math.isfinite(r.lr) and r.lr > 0 and math.isfinite(r.grad_sq):
                step = theory.gd_step_distance_condition(
                    r.lr, r.grad_sq, r.loss, target_loss=None if self.loss == "mse" else self.distance_target_loss)
                row.update(step_margin=step.margin, step_ok=step.holds)
            else:
                row.update(step_margin=math.nan, step_ok=False)
            row.update(update_error=ratio(r.update_error, r.update_size), update_ok=r.plain_step)
            rows.append(row)
            elapsed += r.lr
        return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))

    def finite_records(self) -> list[StepRecord]:
        """Return the records before the first that :attr:`~StepRecord.diverged` (all of them if none did)."""
        out = []
        for r in self.records:
            if r.diverged:
                break
            out.append(r)
        return out

    def identity(self, aligned: bool | str | None) -> theory.Verdict | None:
        """Judge the one-step identity (squared loss) or inequality (convex loss) at every finite recorded step.

        The rounding allowed at a step is that of the dtype its numbers were computed in (:attr:`StepRecord.eps`).
        """
        rows = self.finite_records()
        if not rows or any(not (math.isfinite(r.lr) and math.isfinite(r.loss)) for r in rows):
            return None
        d2 = [r.distance_sq for r in rows] + [rows[-1].distance_next_sq]
        return theory.gd_distance_identity(
            d2, [r.loss for r in rows], [r.grad_sq for r in rows], [r.lr for r in rows],
            target_loss=None if self.loss == "mse" else self.distance_target_loss,
            rounding=[r.identity_rounding for r in rows], aligned=aligned)

    def report(self, frozen_d1: theory.Verdict, departures: list[str], full_batch: bool) -> GuaranteeReport:
        """Check the guarantee on the recorded steps (see :class:`~diagnostics.aligned.reports.GuaranteeReport`).

        ``theorem`` is earned, not assumed: D1 for the frozen block holds (``frozen_d1``), no departure of the
        optimiser's configuration, every applied update ``−η∇_{ω,u}L`` up to rounding, no outside write between
        steps, the one-step identity (inequality for cross-entropy) at every step, the step condition at every
        step, and a declared full batch observed (else listed as assumed). Otherwise ``check``, with every premise
        that failed named and the step where it first did, and D1 named as not shown when it is not established;
        ``no guarantee`` when D1 is refuted. A run that diverged is checked on its steps before the divergence.
        """
        aligned = frozen_d1.status
        finite = self.finite_records()
        hist = self.history().iloc[:len(finite)]
        later = hist[hist.step >= 1]
        bounded = later[np.isfinite(later.margin)]
        worst_margin = float(bounded.margin.min()) if len(bounded) else math.nan
        worst_ratio = float(bounded.bound_ratio.max()) if len(bounded) else math.nan
        steps_ok = hist.step_ok.to_numpy(dtype=bool)
        distances = [math.sqrt(r.distance_sq) for r in finite] + [math.sqrt(finite[-1].distance_next_sq)] * bool(finite)
        distance = (theory.distance_non_increasing(distances, step_condition=bool(steps_ok.all()))
                    if len(distances) >= 2 else None)
        identity = self.identity(aligned)
        telescoping = None
        lrs = hist.lr.to_numpy()
        if len(hist) and np.isfinite(hist.loss).all() and np.all(lrs == lrs[0]) and math.isfinite(lrs[0]):
            telescoping = theory.gd_telescoping_bound(
                hist.loss.to_numpy(), hist.grad_sq.to_numpy(), float(lrs[0]), self.omega_sq,
                self.distance_scale**2 * self.nu_sq, finite[-1].distance_next_sq,
                target_loss=None if self.loss == "mse" else self.distance_target_loss, aligned=aligned)
        departures = list(departures) + self._divergence(finite) + self._outside_writes()
        observed_batch, batch_departure = self._full_batch(full_batch)
        departures += batch_departure
        first_update = next((r.step for r in finite if not r.plain_step), None)
        if first_update is not None:
            r = self.records[first_update]
            departures.append(
                f"the update applied to (ω, u) differs from −η∇L at step {first_update} (relative error "
                f"{ratio(r.update_error, r.update_size):.2g}): not a plain gradient step")
        if identity is not None and identity.refuted:  # not established: D1 for the frozen block may be the cause
            k = identity.details["first_failure"]
            departures.append(
                f"the one-step distance identity fails from step {k} (relative error up to "
                f"{identity.details['max_relative_error']:.2g}): the gradient applied is not ∇L of the recorded loss "
                "(gradient clipping, gradient or loss scaling, or a loss other than the one recorded)")
        elif identity is None and finite:
            departures.append("the one-step identity cannot be checked: some steps lack their loss or step size")
        if len(steps_ok) and not steps_ok.all():
            departures.append(f"the step condition η‖∇_(ω,u)L‖² ≤ {'4L' if self.loss == 'mse' else '2(L−L(Q))'} "
                              f"fails at {int((~steps_ok).sum())} of {len(steps_ok)} steps, first at step "
                              f"{int(np.flatnonzero(~steps_ok)[0])}")
        if frozen_d1.refuted:
            status = "no guarantee"
        else:
            status = "check" if departures or not frozen_d1.holds else "theorem"
        assumed = () if not full_batch or observed_batch else (
            "full batch (declared full_batch=True, not observed: the loss was passed after the user's own step)",)
        losses = hist.loss.to_numpy()
        return GuaranteeReport(
            status=status,
            departures=tuple(dict.fromkeys(departures)),
            full_batch=full_batch,
            loss=self.loss,
            records=len(later),
            bound_holds=int(later.bound_holds.sum()),
            worst_margin=worst_margin,
            max_bound_ratio=worst_ratio,
            distance=distance,
            identity=identity,
            step_condition_failures=int((~steps_ok).sum()),
            telescoping=telescoping,
            monotone_loss=bool(np.all(np.diff(losses) <= 0)) if len(losses) > 1 else True,
            assumed=assumed,
            frozen_d1=frozen_d1,
        )

    def _divergence(self, finite: list[StepRecord]) -> list[str]:
        """Name a divergence: a number that stopped being finite, or ``‖x − x*‖`` larger at the end than at ``τ``."""
        if len(finite) < len(self.records):
            r = self.records[len(finite)]
            return [f"the run diverged at step {r.step} (loss {r.loss:.3g}, ‖∇_(ω,u)L‖² {r.grad_sq:.3g}): its numbers "
                    f"are no longer finite, so the statements are checked on the {len(finite)} steps before"]
        if finite and finite[-1].distance_next_sq > finite[0].distance_sq:
            first, last = finite[0], finite[-1]
            return [f"‖x − x*‖ grew from {math.sqrt(first.distance_sq):.3g} at τ to "
                    f"{math.sqrt(last.distance_next_sq):.3g} and the loss from {first.loss:.3g} to {last.loss:.3g}: "
                    "the run diverges from x* instead of approaching it"]
        return []

    def _outside_writes(self) -> list[str]:
        """Name the first step whose parameters differ from those the previous step left."""
        r = next((r for r in self.records if r.outside_change > 0), None)
        if r is None:
            return []
        return [f"(ω, u) at the start of step {r.step} differ from what step {r.step - 1} left (‖Δ‖ = "
                f"{r.outside_change:.3g}): the parameters were written outside the optimiser between steps"]

    def _full_batch(self, full_batch: bool) -> tuple[bool, list[str]]:
        """Whether a declared full batch was observed, and the first step whose loss is not the training loss."""
        observed = [r for r in self.records if math.isfinite(r.training_loss)]
        if not full_batch or not observed:
            return False, []
        for r in observed:
            if abs(r.loss - r.training_loss) > math.sqrt(r.eps) * max(abs(r.training_loss), theory.TINY):
                return True, [
                    f"full_batch=True, but at step {r.step} the closure's loss {r.loss:.6g} differs from the training "
                    f"loss {r.training_loss:.6g} by {ratio(abs(r.loss - r.training_loss), r.training_loss):.2%}: "
                    "minibatches, or a loss other than L"]
        return True, []
