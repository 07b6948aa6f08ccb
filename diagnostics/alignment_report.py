"""The report of :func:`~diagnostics.alignment.check_alignment`: the numbers of D1 and what they say.

The quantities are those of ``theory/alignment.md``; every pass/fail word comes from a
:class:`theory.Verdict` (D1, (I2), (I3)/(I4)), which names its premises and says *holds*, *refuted*,
*not established* or *not applicable*.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass, field

import numpy as np

import theory

from .engine.manifest import MeasurementManifest

__all__ = ["AlignmentReport"]


@dataclass
class AlignmentReport:
    """Result of :func:`~diagnostics.check_alignment`. Scalars are floats; arrays are numpy.

    Attributes
    ----------
    verdict
        The D1 verdict on the measured samples (:func:`theory.alignment_condition`): *holds*, *refuted*, or
        *not established* when the measurement's resolution cannot decide (``verdict.details`` gives the bounds
        on the exact residual and the reason, ``theory/alignment.md#resolution``).
    aligned
        ``verdict.holds``.
    data_verdict
        When the measured samples are a probe of larger data: D1 on the data given
        (:func:`theory.alignment_from_subset`): *refuted* when the probe's residual, rescaled, still exceeds
        the tolerance, else *not established* with the counting bound and what would decide it. ``None`` when
        the whole data was measured (or its size is unknown).
    n_data
        Samples in the data given (``None`` when unknown, e.g. an iterable ``DataLoader``).
    data_level
        The data-level condition ``f_X ∈ Col J`` (:func:`theory.data_level_condition`), the premise of
        (I2)–(I4), decided like D1.
    residual
        ``a = ‖(I−P)Q‖/‖Q‖`` with ``P`` the projector onto the eigen-directions of ``K`` above ``rank_tol``.
    verdicts
        Every statement checked on this measurement: D1, and for the squared loss (I2) and its necessity
        form and (I3) gradient domination; for cross-entropy (I4). A bound whose premise fails is
        *not applicable*.
    rank, n_outputs, n_params
        ``rank J``, ``nm`` and ``d``.
    certificate
        ``B = ‖J⁺(f_X − Q*)‖`` (``Q* = Y`` for mse; the best-scaled target for ce).
    nu_norm
        ``‖ν‖ = ‖J⁺Q‖`` for the target ``Q`` (its scale as given, or 1 for ce).
    bound, bound_ratio
        The (I3)/(I4) right-hand side and ``(L − L(Q*)) / (bound − L(Q*))`` (judged by ``verdicts``).
    decomposition_gap
        ``(1/2n)‖f−Q‖² − (1/2n)‖P(f−Q)‖² − (1/2n)‖(I−P)Q‖²`` (I2): zero when ``f_X`` lies in the kept
        eigen-directions; read it with ``output_residual``.
    output_residual
        ``‖(I−P)f_X‖/‖f_X‖``, the data-level A1 condition ``f_X ∈ Col J`` (``theory/cms.md``, test 2) under the
        same rank tolerance: the premise of (I2)–(I4).
    loss_lower_bound
        ``(1/2n)‖(I−P)Q‖²``: under ``f_X ∈ Col J`` the squared loss is never below it (I2).
    target_norm_sq
        ``‖Q‖²`` on the measured samples.
    eigenvalues, alignment_curve
        The eigenvalues ``λ_1 ≥ λ_2 ≥ …`` of ``K`` and the alignment curve
        ``a(λ_k) = ‖(I − P_{≥λ_k})Q‖/‖Q‖``: the residual when only the directions with eigenvalue ``≥ λ_k`` are
        kept, tolerance-free (``theory/alignment.md``). On the matrix-free path only the top eigenpairs.
    resolution
        The smallest eigenvalue, relative to ``λ_max``, that the compute dtype resolves: ``nm · eps``.
    horizon, horizon_residual, horizon_loss_floor
        The training horizon ``(η, T)`` if one was given; the part of ``Q`` in the eigen-directions that
        gradient descent on ``(1/2n)‖f − Q‖²`` with step ``η`` cannot fit in ``T`` steps (``ηλT/n < 1``, and those
        the rank rule discards), as ``‖(I − P_T)Q‖/‖Q‖``, and its loss floor ``(1/2n)‖(I − P_T)Q‖²``, never below
        ``loss_lower_bound``; ``nan`` without a horizon, or when it is not applicable. At any step: directions
        with ``ηλ/n > 2`` are not counted in it but named (``horizon_unstable``).
    horizon_premises
        What the horizon assumes of the training (:func:`theory.gradient_descent_premises`): plain full-batch
        gradient steps on the squared loss. One not met (cross-entropy, an optimiser other than plain gradient
        descent) makes the horizon *not applicable*.
    horizon_unstable
        The eigen-directions the horizon's step does not fit but grows, ``ηλ/n > 2`` (:func:`theory.unstable_part`):
        how many, their share of ``‖Q‖²``, the growth per step of the top one. The floor speaks of the slow
        directions whatever these do (``theory/alignment.md#horizon-residual``); ``None`` without an applicable
        horizon.
    precision_note
        How the dtype of the measurement bore on the D1 verdict (a float64 re-measurement; empty when none).
    manifest
        What was measured (:class:`~diagnostics.engine.manifest.MeasurementManifest`); ``None`` for reports
        built from a Gram.
    path
        ``"dense"`` (eigen-decomposition of ``K``) or ``"matrix-free"`` (products with ``J``); on the
        matrix-free path ``rank`` is ``-1`` and ``λ_min``, the effective rank and the kernel-target
        alignment are ``nan``, except with the exact parameter-space Gram (``solver="gram"``), which has them.
    solver
        On the matrix-free path, the solver: ``"lsqr"`` (LSQR and Lanczos on ``J``), ``"gram"`` or ``"sketch"``
        (LSQR preconditioned by the exact or sketched ``JᵀJ``, ``theory/alignment.md#preconditioned``); empty on
        the dense path.
    """

    verdict: theory.Verdict
    residual: float
    residual_tol: float
    verdicts: tuple[theory.Verdict, ...]
    rank: int
    n_samples: int
    n_outputs: int
    n_params: int
    rank_tol: float
    rank_rule: str
    loss_name: str
    loss: float
    grad_norm: float
    certificate: float
    nu_norm: float
    bound: float
    bound_ratio: float
    target_scale: float
    target_loss: float
    decomposition_gap: float
    loss_lower_bound: float
    output_residual: float
    kernel_target_alignment: float
    top_k_capture: dict[int, float]
    min_eigenvalue: float
    smallest_kept_eigenvalue: float
    effective_rank: float
    resolution: float
    eigenvalues: np.ndarray = field(repr=False)
    alignment_curve: np.ndarray = field(repr=False)
    horizon: tuple[float, int] | None = None
    horizon_residual: float = math.nan
    horizon_loss_floor: float = math.nan
    horizon_premises: tuple[theory.Premise, ...] = ()
    horizon_unstable: theory.UnstablePart | None = None
    precision_note: str = ""
    target_norm_sq: float = math.nan
    data_level: theory.Verdict | None = None
    data_verdict: theory.Verdict | None = None
    n_data: int | None = None
    manifest: MeasurementManifest | None = field(default=None, repr=False)
    mode: str = "eval"
    dtype: str = "float32"
    strategy: str = "auto"
    elapsed_s: float = float("nan")
    path: str = "dense"
    solver: str = ""

    @property
    def aligned(self) -> bool:
        """The D1 verdict holds."""
        return self.verdict.holds

    @property
    def residual_bounds(self) -> theory.ResidualBounds:
        """Where the exact residual lies, given this measurement (``theory/alignment.md#resolution``)."""
        details = self.verdict.details
        return theory.ResidualBounds(details.get("lower", self.residual), details.get("upper", self.residual))

    @property
    def full_rank(self) -> bool:
        """``rank J = nm``: every target is in ``Col(J)``; read the alignment curve instead."""
        return self.rank == self.n_outputs

    def curve_at(self, relative_threshold: float) -> float:
        """Return ``a(t·λ_max)``, the residual when the directions with eigenvalue ``≥ t·λ_max`` are kept.

        ``nan`` below the computed eigenvalues on the matrix-free path.
        """
        lam_max = float(self.eigenvalues[0])
        kept = int(np.searchsorted(-self.eigenvalues, -relative_threshold * lam_max, side="right"))
        if kept == 0:
            return 1.0
        if kept == len(self.eigenvalues) and self.path == "matrix-free":
            return math.nan
        return float(self.alignment_curve[kept - 1])

    def to_dict(self) -> dict:
        """Plain-Python dictionary (arrays as lists, verdicts as dicts), ready for JSON."""
        out = asdict(self)
        out["aligned"] = self.aligned
        out["verdict"] = self.verdict.to_dict()
        out["verdicts"] = [v.to_dict() for v in self.verdicts]
        for name in ("data_level", "data_verdict"):
            verdict = getattr(self, name)
            out[name] = verdict.to_dict() if verdict is not None else None
        out["eigenvalues"] = self.eigenvalues.tolist()
        out["alignment_curve"] = {"eigenvalue": self.eigenvalues.tolist(), "residual": self.alignment_curve.tolist()}
        out["top_k_capture"] = {int(k): float(v) for k, v in self.top_k_capture.items()}
        out["horizon"] = list(self.horizon) if self.horizon is not None else None
        out["horizon_premises"] = [p.to_dict() for p in self.horizon_premises]
        out["horizon_unstable"] = self.horizon_unstable.to_dict() if self.horizon_unstable is not None else None
        out["manifest"] = self.manifest.to_dict() if self.manifest is not None else None
        return out

    def __str__(self) -> str:
        m = self.n_outputs // self.n_samples
        probe = self.data_verdict is not None
        there = " on the probe: every target is in Col J there" if probe else ": every target is in Col(J)"
        note = f"  (J has full row rank{there})" if self.full_rank and self.aligned else ""
        scope = f" on a probe of {self.n_samples:,} of the {self.n_data:,} samples" if probe else ""
        lines = [f"Alignment condition D1 (Q ∈ Col J){scope}: {self.verdict.status}{note}"]
        if self.verdict.status == theory.NOT_ESTABLISHED:
            lines.append(_wrapped(f"  why: {self.verdict.details['reason']}"))
        if probe:
            data = self.data_verdict
            lines.append(_wrapped(f"  on all {self.n_data:,} samples given: {data.status}"
                                  + (f" — {data.details['reason']}" if data.status == theory.NOT_ESTABLISHED else
                                     f" (a ≥ a_probe‖Q_probe‖/‖Q‖ = {data.lhs:.3e} > {data.rhs:.1e})")))
        lines += [
            f"  {'probe' if probe else 'measured'}: n={self.n_samples} samples × m={m} outputs = {self.n_outputs} "
            f"rows; d={self.n_params:,} parameters; mode={self.mode}, {self.dtype}",
            f"  rank J = {self.rank} / {self.n_outputs}  (rank_tol {self.rank_tol:.3g} = {self.rank_rule})"
            if self.rank >= 0
            else f"  rank J not computed (matrix-free; rank_tol {self.rank_tol:.3g} = {self.rank_rule})",
            f"  alignment residual ‖(I−P)Q‖/‖Q‖ = {self.residual:.3e}  (aligned if ≤ {self.residual_tol:.1e})",
        ]
        if self.precision_note:
            lines.append(f"  precision: {self.precision_note}")
        lines.append("  alignment curve a(λ) = ‖(I − P_{≥λ})Q‖/‖Q‖, tolerance-free:")
        lines += ["    " + row for row in self._curve_rows()]
        if self.horizon is not None:
            lines.append(self._horizon_line())
        lines.append(
            f"  loss ({self.loss_name}) = {self.loss:.6g}   ‖∇L‖ = {self.grad_norm:.4g}   "
            f"B = {self.certificate:.4g}   ‖ν‖ = ‖J⁺Q‖ = {self.nu_norm:.4g}"
        )
        lines.append("  statements checked on this measurement:")
        lines += [f"    {v}" for v in self.verdicts[1:]]
        premise = f" (f_X ∈ Col J: {self.data_level.status})" if self.data_level is not None else ""
        lines.append(
            f"  f_X outside the kept directions: ‖(I−P)f‖/‖f‖ = {self.output_residual:.2e}{premise}; (I2) gap "
            f"{self.decomposition_gap:.2e}; loss floor (1/2n)‖(I−P)Q‖² = {self.loss_lower_bound:.4g}"
        )
        cap = ", ".join(f"top-{k}: {100 * v:.1f}%" for k, v in self.top_k_capture.items())
        lines += [
            f"  spectrum: λ_max {self.eigenvalues[0]:.4g}, smallest kept {self.smallest_kept_eigenvalue:.3g}, "
            f"λ_min {self.min_eigenvalue:.3g}, effective rank {self.effective_rank:.1f}",
            f"  Q carried by {cap}; kernel-target alignment {self.kernel_target_alignment:.3f}",
            f"  measured in {self.elapsed_s:.2f} s (strategy {self.strategy}, {self.path} path)",
        ]
        if self.manifest is not None:
            lines.append(str(self.manifest))
        return "\n".join(lines)

    @property
    def horizon_applicable(self) -> bool:
        """A horizon was given and none of its premises is observed to fail."""
        return self.horizon is not None and all(p.met is not False for p in self.horizon_premises)

    @property
    def horizon_note(self) -> str:
        """The horizon in words: premises not met (it is not applicable), else its unstable part and what is assumed."""
        unmet = [f"{p.name} ({p.note})" if p.note else p.name for p in self.horizon_premises if p.met is False]
        if unmet:
            return "not applicable (premise not met: " + "; ".join(unmet) + ")"
        parts = [str(self.horizon_unstable)] if self.horizon_unstable and self.horizon_unstable.directions else []
        assumed = [p.name for p in self.horizon_premises if p.met is None]
        return "; ".join(parts + (["assumed: " + "; ".join(assumed)] if assumed else []))

    def _horizon_line(self) -> str:
        lr, steps = self.horizon
        head = f"  horizon (η={lr:g}, T={steps}): "
        if not self.horizon_applicable:
            return _wrapped(head + self.horizon_note)
        assumed = [p.name for p in self.horizon_premises if p.met is None]
        note = f" (assumed: {'; '.join(assumed)})" if assumed else ""
        if math.isnan(self.horizon_residual):
            threshold, lowest = self.n_samples / (lr * steps), float(self.eigenvalues[-1])
            return _wrapped(head + f"not computed: the {len(self.eigenvalues)} eigenpairs of K computed "
                            f"matrix-free reach down to λ = {lowest:.4g}, above the horizon's threshold n/(ηT) = "
                            f"{threshold:.4g} (the exact Gram, solver={{'method': 'gram'}} for a tall J, has them "
                            f"all){note}")
        line = _wrapped(head + f"residual {self.horizon_residual:.3e} in directions with ηλT/n < 1; loss floor "
                        f"(1/2n)‖(I−P_T)Q‖² = {self.horizon_loss_floor:.4g}{note}")
        unstable = self.horizon_unstable
        return line + ("\n" + _wrapped(f"    {unstable}") if unstable is not None and unstable.directions else "")

    def _curve_rows(self) -> list[str]:
        """``a(t·λ_max)`` at decades of ``t`` down to below the resolution limit (marked); equal runs merged."""
        lam_max = float(self.eigenvalues[0])
        if lam_max <= 0:
            return ["K = 0: no direction is kept, a = 1"]
        smallest = max(float(self.eigenvalues[self.eigenvalues > 0][-1]) / lam_max, 1e-300)
        lowest = max(min(self.resolution, smallest) / 10, 1e-18)
        points: list[tuple[int, float]] = []
        decade = 1
        while 10.0**-decade >= lowest:
            points.append((decade, self.curve_at(10.0**-decade)))
            decade += 1
        limit = self.resolution
        rows: list[str] = []
        start = 0
        while start < len(points):
            end = start
            above = 10.0 ** -points[start][0] >= limit
            while (end + 1 < len(points) and _same(points[end + 1][1], points[start][1])
                   and (10.0 ** -points[end + 1][0] >= limit) == above):
                end += 1
            if not above and (not rows or "resolution limit" not in rows[-1]) and not any(
                    "resolution limit" in r for r in rows):
                rows.append(f"-- resolution limit of {self.dtype}: λ/λ_max = nm·eps = {limit:.1e} --")
            span = (f"1e-{points[start][0]}" if start == end else f"1e-{points[start][0]} … 1e-{points[end][0]}")
            value = points[start][1]
            rows.append(f"λ ≥ {span}·λ_max: a = {value:.3e}" if math.isfinite(value)
                        else f"λ ≥ {span}·λ_max: not computed (matrix-free: top eigenpairs only)")
            start = end + 1
        return rows


def _wrapped(line: str, width: int = 116) -> str:
    """Wrap a long report line at ``width``, indenting its continuation under its text."""
    return textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
