"""Verdicts: the statements of THEORY.md checked on measured numbers.

Every function takes plain floats, ints or 1-D arrays that something else measured (a loss, a
gradient norm, a rank, ...) and returns a :class:`Verdict`. Nothing here knows about models: the
maths of each statement, its proof and the corrections to the working specification are in the
markdown files of this package (``theory/README.md`` is the index).

Conventions shared by every verdict
-----------------------------------
- ``lhs`` and ``rhs`` are the two sides of the statement ``lhs ≤ rhs`` (or ``lhs = rhs``);
- ``margin`` is signed room: positive means the statement holds with room, and
  ``holds == (margin >= -tolerance)`` always (checked when the verdict is built);
- ``tolerance`` is absolute, usually ``rtol · max(|lhs|, |rhs|, tiny)``;
- a statement whose premise is not met (e.g. gradient domination on an unaligned point) is
  *vacuous*: ``holds`` is ``True``, ``vacuous`` is ``True`` and ``margin`` is ``+inf``; the
  unasserted numbers stay in ``details``.

NaN, inf, negative norms, negative counts and empty sequences raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Verdict",
    "loss_decomposition",
    "alignment_lower_bound",
    "necessity_at_global_minimum",
    "gradient_domination",
    "excess_gradient_domination",
    "convex_loss_bound",
    "best_convex_bound",
    "gradient_flow_rate",
    "convergence_rate_check",
    "counting_bound",
    "embedding",
    "deep_linear_rank_bound",
    "kernel_movement_trend",
    "application_bound",
    "distance_non_increasing",
    "gd_step_distance_condition",
    "gd_telescoping_bound",
    "cms_assessment",
]

TINY = float(np.finfo(np.float64).tiny)
"""Smallest positive normal float64: the floor of every relative tolerance."""

ArrayLike = Sequence[float] | np.ndarray


# -- the result type -----------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays to plain Python (recursively through dicts, lists and tuples)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one statement of THEORY.md on measured numbers.

    Attributes
    ----------
    statement
        Short id of the statement: ``"I2"``, ``"I3"``, ``"S1"``, ``"APP"``, ... (see ``theory/README.md``).
    title
        Its name in words.
    holds
        Whether the statement holds within ``tolerance`` (``True`` when vacuous).
    lhs, rhs
        The two sides of ``lhs ≤ rhs`` (or ``lhs = rhs``, see ``relation``).
    margin
        Signed room, positive when the statement holds with room; defined per statement
        (usually ``rhs − lhs``) and ``+inf`` when vacuous. ``holds == (margin >= -tolerance)``.
    tolerance
        Absolute tolerance used for the decision.
    details
        Statement-specific numbers (bound ratio, fitted slope, worst index, ...).
    lhs_label, rhs_label, relation
        How ``__str__`` names the two sides and the relation between them.
    vacuous
        The premise of the statement is not met, so nothing is asserted.
    """

    statement: str
    title: str
    holds: bool
    lhs: float
    rhs: float
    margin: float
    tolerance: float
    details: dict = field(default_factory=dict)
    lhs_label: str = "lhs"
    rhs_label: str = "rhs"
    relation: str = "≤"
    vacuous: bool = False

    def __post_init__(self) -> None:
        if self.vacuous and not self.holds:
            raise ValueError("a vacuous verdict holds by definition")
        if not self.vacuous and self.holds != (self.margin >= -self.tolerance):
            raise ValueError(
                f"inconsistent verdict: holds={self.holds} but margin={self.margin!r}, "
                f"tolerance={self.tolerance!r}"
            )

    def __bool__(self) -> bool:
        return self.holds

    def __str__(self) -> str:
        status = "holds (vacuous)" if self.vacuous else ("holds" if self.holds else "FAILS")
        return (
            f"{self.statement} {self.title}: {status}  {self.lhs_label}={_fmt(self.lhs)} {self.relation} "
            f"{self.rhs_label}={_fmt(self.rhs)}  (margin {_fmt(self.margin)})"
        )

    def to_dict(self) -> dict:
        """Plain-Python dictionary (numpy values converted), suitable for JSON."""
        return {
            "statement": self.statement,
            "title": self.title,
            "holds": bool(self.holds),
            "lhs": float(self.lhs),
            "rhs": float(self.rhs),
            "margin": float(self.margin),
            "tolerance": float(self.tolerance),
            "vacuous": bool(self.vacuous),
            "relation": self.relation,
            "lhs_label": self.lhs_label,
            "rhs_label": self.rhs_label,
            "details": _jsonable(self.details),
        }


# -- input validation ----------------------------------------------------------------------------


def _real(name: str, x: float) -> float:
    if isinstance(x, bool | np.bool_):
        raise ValueError(f"{name} must be a real number, got a bool")
    try:
        value = float(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number, got {x!r}") from err
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _nonneg(name: str, x: float) -> float:
    value = _real(name, x)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def _count(name: str, x: int, minimum: int = 0) -> int:
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {x}")
    return int(x)


def _flag(name: str, x: bool) -> bool:
    if not isinstance(x, bool | np.bool_):
        raise ValueError(f"{name} must be a bool, got {x!r}")
    return bool(x)


def _array(name: str, x: ArrayLike, *, nonneg: bool = False, min_len: int = 1) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D array of real numbers") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] < min_len:
        raise ValueError(f"{name} needs at least {min_len} entries, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    if nonneg and (arr < 0).any():
        raise ValueError(f"{name} must be non-negative")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")


def _tol(rtol: float, *scales: float) -> float:
    """``rtol · max(|scales|, tiny)``."""
    rtol = _nonneg("rtol", rtol)
    return rtol * max([abs(s) for s in scales] + [TINY])


def _leq(statement: str, title: str, lhs: float, rhs: float, tolerance: float, details: dict,
         lhs_label: str, rhs_label: str) -> Verdict:
    """``lhs ≤ rhs`` within ``tolerance``; margin ``rhs − lhs``."""
    margin = rhs - lhs
    return Verdict(statement, title, margin >= -tolerance, lhs, rhs, margin, tolerance, details,
                   lhs_label, rhs_label)


def _vacuous(statement: str, title: str, lhs: float, rhs: float, details: dict, lhs_label: str,
             rhs_label: str, reason: str) -> Verdict:
    details = {**details, "asserted": False, "reason": reason}
    return Verdict(statement, title, True, lhs, rhs, math.inf, 0.0, details, lhs_label, rhs_label,
                   vacuous=True)


def _ratio(num: float, den: float) -> float:
    """``num/den`` with ``0/0 = 0`` and ``x/0 = inf`` for ``x > 0``."""
    if den > 0:
        return num / den
    return 0.0 if num <= 0 else math.inf


def _worst_point(statement: str, title: str, lhs: np.ndarray, rhs: np.ndarray, tol: np.ndarray,
                 details: dict, lhs_label: str, rhs_label: str) -> Verdict:
    """``lhs[k] ≤ rhs[k] + tol[k]`` for every ``k``, reported at the point with the least room."""
    k = int(np.argmin(rhs - lhs + tol))
    details = {**details, "worst_index": k,
               "n_violations": int(((rhs - lhs + tol) < 0).sum())}
    return _leq(statement, title, float(lhs[k]), float(rhs[k]), float(tol[k]), details, lhs_label,
                rhs_label)


# -- (I2) loss decomposition -------------------------------------------------------------------


def loss_decomposition(loss: float, projected_residual_sq: float, unexplained_target_sq: float, n: int,
                       rtol: float = 1e-8) -> Verdict:
    r"""(I2) Loss decomposition: ``L = (1/2n)‖P r‖² + (1/2n)‖(I − P) Y‖²`` (THEORY §4).

    Exact under A1 (in fact under the data-level condition ``f_X ∈ Col J`` alone): ``(I−P) r =
    −(I−P) Y`` and Pythagoras. A gap between the two sides measures a violation of ``f_X ∈ Col J``:
    ``gap = (1/2n)(‖(I−P)(f_X−Y)‖² − ‖(I−P)Y‖²)``.

    Parameters
    ----------
    loss
        ``L = (1/2n)‖f_X − Y‖²``.
    projected_residual_sq
        ``‖P r‖²``.
    unexplained_target_sq
        ``‖(I − P) Y‖²``.
    n
        Number of samples (``≥ 1``).
    rtol
        Relative tolerance on the gap.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs`` = the decomposition, ``margin = −|gap|``, ``tolerance = rtol·max(L, tiny)``;
        holds iff ``|gap| ≤ tolerance``. ``details``: ``gap``, ``relative_gap``, ``fitted_part``
        ``(1/2n)‖Pr‖²``, ``floor`` ``(1/2n)‖(I−P)Y‖²``.
    """
    loss = _nonneg("loss", loss)
    p = _nonneg("projected_residual_sq", projected_residual_sq)
    u = _nonneg("unexplained_target_sq", unexplained_target_sq)
    n = _count("n", n, 1)
    rhs = (p + u) / (2 * n)
    gap = loss - rhs
    tolerance = _tol(rtol, loss)
    details = {"gap": gap, "relative_gap": gap / max(loss, TINY), "fitted_part": p / (2 * n),
               "floor": u / (2 * n), "n": n}
    return Verdict("I2", "loss decomposition", abs(gap) <= tolerance, loss, rhs, 0.0 - abs(gap), tolerance,
                   details, "L", "‖Pr‖²/2n+‖(I−P)Y‖²/2n", "=")


def alignment_lower_bound(loss: float, unexplained_target_sq: float, n: int, rtol: float = 1e-8) -> Verdict:
    r"""(I2, consequence) The alignment residual lower-bounds the loss: ``L ≥ (1/2n)‖(I − P) Y‖²``.

    THEORY §4. Equivalently ``a(θ) ≤ sqrt(2nL)/‖Y‖`` for the alignment residual ``a``.

    Parameters
    ----------
    loss
        ``L(θ)``.
    unexplained_target_sq
        ``‖(I − P_{J(θ)}) Y‖²``.
    n
        Number of samples.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = (1/2n)‖(I−P)Y‖²``, ``rhs = L``, ``margin = L − lhs``; ``details['floor_fraction']`` is
        ``lhs / L`` (the share of the loss no training of the coefficients can remove at this ``J``).
    """
    loss = _nonneg("loss", loss)
    u = _nonneg("unexplained_target_sq", unexplained_target_sq)
    n = _count("n", n, 1)
    floor = u / (2 * n)
    details = {"floor_fraction": _ratio(floor, loss), "n": n}
    return _leq("I2.lower", "alignment lower bound", floor, loss, _tol(rtol, loss, floor), details,
                "‖(I−P)Y‖²/2n", "L")


def necessity_at_global_minimum(loss: float, alignment_residual: float, loss_tol: float = 1e-10,
                                residual_tol: float = 1e-6, *, n: int | None = None,
                                target_norm_sq: float | None = None) -> Verdict:
    r"""(I2, consequence) Necessity of D1 for global optimality: ``L(θ*) = 0 ⇒ Y ∈ Col J(θ*)``.

    THEORY §4. Numerically: if ``L ≤ loss_tol`` then the alignment residual ``a = ‖(I−P)Y‖/‖Y‖`` must be
    ``≤ residual_tol``. When ``L > loss_tol`` the premise fails and the verdict is vacuous. The
    quantitative form ``a ≤ sqrt(2nL)/‖Y‖`` (from I2) is reported in ``details`` when ``n`` and
    ``target_norm_sq = ‖Y‖²`` are given.

    Parameters
    ----------
    loss
        ``L(θ)``.
    alignment_residual
        ``a(θ) = ‖(I − P) Y‖ / ‖Y‖``.
    loss_tol
        ``L ≤ loss_tol`` counts as a global minimum.
    residual_tol
        ``a ≤ residual_tol`` counts as aligned.
    n, target_norm_sq
        Optional, for the quantitative bound ``a ≤ sqrt(2nL/‖Y‖²)``.

    Returns
    -------
    Verdict
        ``lhs = a``, ``rhs = residual_tol``, ``margin = residual_tol − a`` (``+inf`` when vacuous).
    """
    loss = _nonneg("loss", loss)
    a = _nonneg("alignment_residual", alignment_residual)
    loss_tol = _nonneg("loss_tol", loss_tol)
    residual_tol = _nonneg("residual_tol", residual_tol)
    details: dict = {"loss": loss, "loss_tol": loss_tol}
    if (n is None) != (target_norm_sq is None):
        raise ValueError("give both n and target_norm_sq, or neither")
    if n is not None:
        n = _count("n", n, 1)
        y2 = _nonneg("target_norm_sq", target_norm_sq)
        if y2 == 0:
            raise ValueError("target_norm_sq must be positive: the residual a = ‖(I−P)Y‖/‖Y‖ needs Y ≠ 0")
        details["residual_upper_bound"] = math.sqrt(2 * n * loss / y2)
    if loss > loss_tol:
        return _vacuous("I2.necessity", "necessity at a global minimum", a, residual_tol, details, "a",
                        "tol", f"L = {loss:.3g} > loss_tol = {loss_tol:.3g}: not a global minimum, "
                        "nothing is asserted")
    details["asserted"] = True
    return _leq("I2.necessity", "necessity at a global minimum", a, residual_tol, 0.0, details, "a", "tol")


# -- (I3) gradient domination ------------------------------------------------------------------


def gradient_domination(loss: float, grad_norm: float, certificate: float, aligned: bool,
                        rtol: float = 1e-6) -> Verdict:
    r"""(I3) Gradient domination when aligned: ``L ≤ ½ ‖∇L‖ · B`` with ``B = ‖J⁺ r‖`` (THEORY §4).

    Under A1 and ``Y ∈ Col J``: ``2L = ⟨∇L, J⁺ r⟩ ≤ ‖∇L‖ ‖J⁺ r‖``. Asserted only when ``aligned``;
    otherwise vacuous. Equality holds iff ``r`` is an eigenvector of ``K = JJᵀ`` (see
    ``theory/results.md``). The *bound ratio* ``L / (½‖∇L‖B)`` is in ``details``; above 1 on an
    aligned CMS model it is a bug.

    Parameters
    ----------
    loss
        ``L(θ)`` (squared loss).
    grad_norm
        ``‖∇L(θ)‖``.
    certificate
        ``B(θ) = ‖J⁺ r‖ = sqrt(rᵀ K⁺ r)``.
    aligned
        Whether D1 (``Y ∈ Col J(θ)``) holds at ``θ``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs = ½‖∇L‖B``, ``margin = rhs − lhs``.
    """
    loss = _nonneg("loss", loss)
    g = _nonneg("grad_norm", grad_norm)
    b = _nonneg("certificate", certificate)
    aligned = _flag("aligned", aligned)
    rhs = 0.5 * g * b
    details = {"bound_ratio": _ratio(loss, rhs)}
    if not aligned:
        return _vacuous("I3", "gradient domination", loss, rhs, details, "L", "½‖∇L‖B",
                        "D1 does not hold at this point: nothing is asserted")
    details["asserted"] = True
    return _leq("I3", "gradient domination", loss, rhs, _tol(rtol, loss, rhs), details, "L", "½‖∇L‖B")


def excess_gradient_domination(projected_residual_sq: float, n: int, grad_norm: float, certificate: float,
                               rtol: float = 1e-6) -> Verdict:
    r"""(I3, general form) ``(1/2n)‖P r‖² ≤ ½ ‖∇L‖ · ‖J⁺ r‖``, always (no assumption).

    ``(1/n)‖P r‖² = ⟨(1/n)Jᵀr, J⁺r⟩ ≤ ‖∇L‖ ‖J⁺r‖`` by Cauchy–Schwarz. Under the data-level
    condition the left side is ``L − (1/2n)‖(I−P)Y‖²`` (I2), so the excess loss above the alignment
    floor is gradient-dominated even where D1 fails (``theory/results.md``).

    Parameters
    ----------
    projected_residual_sq
        ``‖P r‖²``.
    n
        Number of samples.
    grad_norm
        ``‖∇L‖``.
    certificate
        ``‖J⁺ r‖``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = (1/2n)‖Pr‖²``, ``rhs = ½‖∇L‖‖J⁺r‖``, ``margin = rhs − lhs``.
    """
    p = _nonneg("projected_residual_sq", projected_residual_sq)
    n = _count("n", n, 1)
    g = _nonneg("grad_norm", grad_norm)
    b = _nonneg("certificate", certificate)
    lhs, rhs = p / (2 * n), 0.5 * g * b
    return _leq("I3.general", "excess-loss gradient domination", lhs, rhs, _tol(rtol, lhs, rhs),
                {"bound_ratio": _ratio(lhs, rhs)}, "‖Pr‖²/2n", "½‖∇L‖‖J⁺r‖")


# -- (I4) convex losses --------------------------------------------------------------------------


def convex_loss_bound(loss: float, target_loss: float, grad_norm: float, distance: float, aligned: bool,
                      rtol: float = 1e-6) -> Verdict:
    r"""(I4) Convex losses: ``L(θ) − L(Q) ≤ ‖∇L(θ)‖ · ‖R(θ) − ν‖`` when ``Q ∈ Col J`` (THEORY §4).

    Convexity of ``ℓ`` gives ``L(θ) − L(Q) ≤ ⟨g, f_X − Q⟩ = ⟨∇L, R − ν⟩`` for every ``ν`` with
    ``Jν = Q``; the smallest distance over such ``ν`` is ``‖J⁺(f_X − Q)‖``.

    Parameters
    ----------
    loss
        ``L(θ)`` (any convex loss; may be negative for general ``ℓ``).
    target_loss
        ``L(Q) = (1/n) Σ ℓ(q_i, y_i)``.
    grad_norm
        ``‖∇L(θ)‖``.
    distance
        ``‖R(θ) − ν‖`` for some ``ν`` with ``Jν = Q`` (best: ``‖J⁺(f_X − Q)‖``).
    aligned
        Whether ``Q ∈ Col J(θ)``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L − L(Q)``, ``rhs = ‖∇L‖·‖R − ν‖``, ``margin = rhs − lhs`` (vacuous when not aligned).
    """
    loss = _real("loss", loss)
    lq = _real("target_loss", target_loss)
    g = _nonneg("grad_norm", grad_norm)
    dist = _nonneg("distance", distance)
    aligned = _flag("aligned", aligned)
    lhs, rhs = loss - lq, g * dist
    details = {"bound_ratio": _ratio(lhs, rhs), "loss": loss, "target_loss": lq}
    if not aligned:
        return _vacuous("I4", "convex-loss bound", lhs, rhs, details, "L−L(Q)", "‖∇L‖‖R−ν‖",
                        "Q ∉ Col J at this point: nothing is asserted")
    details["asserted"] = True
    return _leq("I4", "convex-loss bound", lhs, rhs, _tol(rtol, lhs, rhs), details, "L−L(Q)", "‖∇L‖‖R−ν‖")


def best_convex_bound(loss: float, grad_norm: float, scales: ArrayLike, target_losses: ArrayLike,
                      distances: ArrayLike, aligned: bool, rtol: float = 1e-6) -> Verdict:
    r"""(I4) The best bound ``L(θ) ≤ min_c [L(cQ₀) + ‖∇L‖ · ‖R − ν_c‖]`` over a grid of scales ``c``.

    THEORY §4: a larger ``c`` lowers ``L(cQ₀)`` and raises ``‖ν_c‖ = c‖ν₁‖``; membership of
    ``cQ₀`` in ``Col J`` does not depend on ``c > 0``, so one ``aligned`` flag serves the grid.

    Parameters
    ----------
    loss
        ``L(θ)``.
    grad_norm
        ``‖∇L(θ)‖``.
    scales
        The grid ``c``.
    target_losses
        ``L(cQ₀)`` per scale.
    distances
        ``‖R − ν_c‖`` per scale.
    aligned
        Whether ``Q₀ ∈ Col J(θ)``.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L``, ``rhs`` = the smallest bound; ``details``: ``best_scale``, ``best_index``,
        ``bounds`` (per scale).
    """
    loss = _real("loss", loss)
    g = _nonneg("grad_norm", grad_norm)
    c = _array("scales", scales)
    lq = _array("target_losses", target_losses)
    dist = _array("distances", distances, nonneg=True)
    _same_length(scales=c, target_losses=lq, distances=dist)
    if (c <= 0).any():
        raise ValueError("scales must be positive")
    aligned = _flag("aligned", aligned)
    bounds = lq + g * dist
    k = int(np.argmin(bounds))
    rhs = float(bounds[k])
    details = {"best_scale": float(c[k]), "best_index": k, "bounds": bounds, "scales": c,
               "bound_ratio": _ratio(loss, rhs)}
    if not aligned:
        return _vacuous("I4.best", "best convex-loss bound", loss, rhs, details, "L", "min_c bound",
                        "Q₀ ∉ Col J at this point: nothing is asserted")
    details["asserted"] = True
    return _leq("I4.best", "best convex-loss bound", loss, rhs, _tol(rtol, loss, rhs), details, "L",
                "min_c bound")


# -- (I3) gradient-flow rate -------------------------------------------------------------------


def gradient_flow_rate(loss_T: float, certificate_bar: float, elapsed: float) -> float:
    r"""Return the gradient-flow bound ``L(T + s) ≤ L_T / (1 + 4 L_T s / B̄²)`` (THEORY §4, I3).

    Valid when D1 holds on ``[T, T+s]`` with ``B(θ_t) ≤ B̄``: then ``dL/dt = −‖∇L‖² ≤ −4L²/B̄²``.
    It is at most ``B̄²/(4s)``.

    Parameters
    ----------
    loss_T
        ``L(θ_T) ≥ 0``.
    certificate_bar
        ``B̄ ≥ sup_{[T, T+s]} B(θ_t)``. ``B̄ = 0`` is only consistent with ``L_T = 0``.
    elapsed
        ``s = t − T ≥ 0``.

    Returns
    -------
    float
        The bound on ``L(T + s)``.
    """
    lt = _nonneg("loss_T", loss_T)
    b = _nonneg("certificate_bar", certificate_bar)
    s = _nonneg("elapsed", elapsed)
    if lt == 0:
        return 0.0
    if b == 0:
        raise ValueError("certificate_bar = 0 with loss_T > 0 is impossible under D1 (B = 0 forces r = 0)")
    return lt / (1 + 4 * lt * s / b**2)


def convergence_rate_check(times: ArrayLike, losses: ArrayLike, certificate_bar: float | ArrayLike,
                           rtol: float = 1e-6) -> Verdict:
    r"""(I3) A measured trajectory against ``L(t) ≤ L(t₀)/(1 + 4 L(t₀)(t − t₀)/B̄²)`` (THEORY §4).

    Parameters
    ----------
    times
        Non-decreasing times ``t₀ ≤ t₁ ≤ …`` (for gradient descent: ``η`` × step index).
    losses
        ``L(θ_{t_k})``.
    certificate_bar
        ``B̄``: a float, or the measured ``B(θ_{t_k})`` along the trajectory (their maximum is used;
        the theorem needs a bound over the whole interval, so sample densely).
    rtol
        Relative tolerance per point.

    Returns
    -------
    Verdict
        Reported at the point with the least room: ``lhs = L(t_k)``, ``rhs`` = the bound there,
        ``margin = rhs − lhs``. ``details``: ``bounds``, ``max_ratio`` ``max_k L_k/bound_k``,
        ``worst_index``, ``monotone`` (whether the measured loss is non-increasing within tolerance),
        ``certificate_bar``.
    """
    t = _array("times", times)
    loss = _array("losses", losses, nonneg=True)
    _same_length(times=t, losses=loss)
    if (np.diff(t) < 0).any():
        raise ValueError("times must be non-decreasing")
    b_arr = _array("certificate_bar", np.atleast_1d(np.asarray(certificate_bar, dtype=np.float64)),
                   nonneg=True)
    b = float(b_arr.max())
    bounds = np.array([gradient_flow_rate(loss[0], b, s) for s in t - t[0]])
    tol = np.array([_tol(rtol, bk, lk) for bk, lk in zip(bounds, loss, strict=True)])
    ratios = np.array([_ratio(lk, bk) for bk, lk in zip(bounds, loss, strict=True)])
    details = {"bounds": bounds, "max_ratio": float(ratios.max()), "certificate_bar": b,
               "monotone": bool((np.diff(loss) <= tol[1:]).all())}
    return _worst_point("I3.rate", "gradient-flow rate", loss, bounds, tol, details, "L(t)",
                        "L_T/(1+4L_T(t−T)/B̄²)")


# -- (S1)–(S4) network size ----------------------------------------------------------------------


def counting_bound(rank: int, n_outputs: int, n_params: int) -> Verdict:
    r"""(S1) Counting: ``rank J ≤ min(nm, d)`` (THEORY §5).

    With ``d < nm`` the image of ``θ ↦ f_X(θ)`` has measure zero, so generic targets cannot be
    interpolated (``L(θ) > 0`` at every ``θ`` for almost every ``Y``); see ``theory/width.md`` for why
    "bounded away from 0" needs more.

    Parameters
    ----------
    rank
        Measured ``rank J``.
    n_outputs
        ``nm``, the number of stacked outputs.
    n_params
        ``d``.

    Returns
    -------
    Verdict
        ``lhs = rank``, ``rhs = min(nm, d)``, ``margin = rhs − rank``; ``details``:
        ``underparameterised`` (``d < nm``), ``generic_interpolation_impossible`` (same),
        ``full_row_rank`` (``rank = nm``: D1 holds for every target, S3a).
    """
    rank = _count("rank", rank)
    nm = _count("n_outputs", n_outputs, 1)
    d = _count("n_params", n_params, 1)
    bound = min(nm, d)
    details = {"underparameterised": d < nm, "generic_interpolation_impossible": d < nm,
               "full_row_rank": rank == nm, "n_outputs": nm, "n_params": d}
    return _leq("S1", "counting bound", float(rank), float(bound), 0.0, details, "rank J", "min(nm,d)")


def embedding(residual_narrow: float, residual_wide: float, atol: float = 1e-8) -> Verdict:
    r"""(S2) Embedding: at matched points, the wide network's alignment residual is ≤ the narrow one's.

    ``Col J_narrow ⊆ Col J_wide`` when the wide network contains the narrow one with zero outgoing
    weights on the extra units (THEORY §5), so ``‖(I−P_wide)Q‖ ≤ ‖(I−P_narrow)Q‖``. Numerically the
    two rank tolerances differ (``λ_max`` of the wide Gram is larger), hence ``atol``.

    Parameters
    ----------
    residual_narrow, residual_wide
        Alignment residuals ``‖(I−P)Q‖/‖Q‖`` of the two networks at the matched point.
    atol
        Absolute tolerance.

    Returns
    -------
    Verdict
        ``lhs`` = wide, ``rhs`` = narrow, ``margin = narrow − wide``.
    """
    narrow = _nonneg("residual_narrow", residual_narrow)
    wide = _nonneg("residual_wide", residual_wide)
    atol = _nonneg("atol", atol)
    return _leq("S2", "embedding", wide, narrow, atol, {"improvement": narrow - wide}, "a_wide", "a_narrow")


def deep_linear_rank_bound(rank: int, n_out: int, d_in: int, bias: bool = False,
                           n_samples: int | None = None) -> Verdict:
    r"""(S3b) Deep linear networks: ``rank J ≤ m·d_x`` (``m·(d_x+1)`` with biases), at any width and depth.

    Every Jacobian column is ``(B x_i + c)_i`` for some ``B ∈ R^{m×d_x}`` (``c = 0`` without biases);
    with ``n`` samples the bound is ``m·rank[X, 1] ≤ m·min(n, d_x + 1)`` (THEORY §5, ``theory/width.md``).

    Parameters
    ----------
    rank
        Measured ``rank J``.
    n_out
        ``m``.
    d_in
        ``d_x``.
    bias
        Whether the network has biases.
    n_samples
        Optional ``n``: tightens the bound to ``m·min(n, d_x + bias)`` and decides
        ``details['width_cannot_help']`` (``n > d_x + bias``: the bound is below ``nm``, so D1 fails
        for generic targets at every width).

    Returns
    -------
    Verdict
        ``lhs = rank``, ``rhs`` = the bound, ``margin = rhs − rank``.
    """
    rank = _count("rank", rank)
    m = _count("n_out", n_out, 1)
    dx = _count("d_in", d_in, 1)
    bias = _flag("bias", bias)
    eff = dx + int(bias)
    details: dict = {"effective_input_dim": eff}
    if n_samples is not None:
        n = _count("n_samples", n_samples, 1)
        eff = min(n, eff)
        details["width_cannot_help"] = n > dx + int(bias)
        details["n_outputs"] = n * m
    bound = m * eff
    return _leq("S3b", "deep linear rank bound", float(rank), float(bound), 0.0, details, "rank J",
                "m·(d_x+bias)" if n_samples is None else "m·min(n,d_x+bias)")


def kernel_movement_trend(widths: ArrayLike, movements: ArrayLike, expect: str = "decreasing",
                          slope_tol: float = 0.25) -> Verdict:
    r"""(S4) Lazy versus rich: the log-log slope of kernel (or parameter) movement against width.

    Fits ``log Δ = α log w + β`` by least squares. NTK parameterisation: ``Δ = O(w^{-1/2})``, so
    ``α ≈ −½`` (``expect="decreasing"``: holds iff ``α ≤ −slope_tol``). Mean-field / maximal-update:
    ``Δ = Θ(1)``, so ``α ≈ 0`` (``expect="order-one"``: holds iff ``|α| ≤ slope_tol``). THEORY §5.

    Parameters
    ----------
    widths
        Positive widths, at least two distinct values.
    movements
        Positive movements ``‖K_t − K_0‖_F/‖K_0‖_F`` (or ``‖θ_t − θ_0‖/‖θ_0‖``) at a fixed time.
    expect
        ``"decreasing"`` or ``"order-one"``.
    slope_tol
        Threshold on the slope (default ``0.25``, half of the NTK exponent).

    Returns
    -------
    Verdict
        decreasing: ``lhs = α``, ``rhs = −slope_tol``, ``margin = −slope_tol − α``;
        order-one: ``lhs = |α|``, ``rhs = slope_tol``, ``margin = slope_tol − |α|``.
        ``details``: ``slope``, ``intercept``, ``ntk_slope`` (−½), ``expect``.
    """
    w = _array("widths", widths, min_len=2)
    mv = _array("movements", movements, min_len=2)
    _same_length(widths=w, movements=mv)
    if (w <= 0).any() or (mv <= 0).any():
        raise ValueError("widths and movements must be positive (the fit is in log-log)")
    if np.unique(w).shape[0] < 2:
        raise ValueError("need at least two distinct widths to fit a slope")
    slope_tol = _nonneg("slope_tol", slope_tol)
    slope, intercept = np.polyfit(np.log(w), np.log(mv), 1)
    slope, intercept = float(slope), float(intercept)
    details = {"slope": slope, "intercept": intercept, "ntk_slope": -0.5, "expect": expect}
    if expect == "decreasing":
        return _leq("S4", "kernel movement shrinks with width", slope, -slope_tol, 0.0, details, "slope",
                    "−slope_tol")
    if expect == "order-one":
        return _leq("S4", "kernel movement stays order one", abs(slope), slope_tol, 0.0, details, "|slope|",
                    "slope_tol")
    raise ValueError(f"expect must be 'decreasing' or 'order-one', got {expect!r}")


# -- §6 application --------------------------------------------------------------------------------


def application_bound(loss: float, omega_tau_sq: float, nu_tau_sq: float, elapsed: float,
                      convex: bool = False, target_loss: float = 0.0, rtol: float = 1e-6) -> Verdict:
    r"""(§6) The augmented model's rate: ``L(t) ≤ (‖ω_τ‖² + ‖ν_τ‖²) / (4(t − τ))``.

    For a convex loss and target ``Q = Ψ_X ν_Q``: ``L(t) − L(Q) ≤ (‖ω_τ‖² + ‖ν_Q‖²) / (2(t − τ))``.
    Gradient flow on all parameters of ``f̃ = f + Ψ u`` (``u_τ = 0``), see ``theory/application.md``.

    Parameters
    ----------
    loss
        ``L(t)``.
    omega_tau_sq
        ``‖ω_τ‖²``, output-layer weights and bias at the switch.
    nu_tau_sq
        ``‖ν‖²`` for the ``ν`` with ``Ψ_X ν = Y`` (or ``Q``); least norm is best.
    elapsed
        ``t − τ ≥ 0`` (gradient descent: ``η`` × steps; see ``gd_telescoping_bound`` for the exact
        discrete statement). ``0`` gives an infinite bound.
    convex
        Use the convex-loss form.
    target_loss
        ``L(Q)`` (convex form only; must be 0 for the squared loss).
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = L`` (``L − L(Q)`` when convex), ``rhs`` = the bound, ``margin = rhs − lhs``.
    """
    loss = _real("loss", loss) if convex else _nonneg("loss", loss)
    w2 = _nonneg("omega_tau_sq", omega_tau_sq)
    v2 = _nonneg("nu_tau_sq", nu_tau_sq)
    s = _nonneg("elapsed", elapsed)
    convex = _flag("convex", convex)
    lq = _real("target_loss", target_loss)
    if not convex and lq != 0:
        raise ValueError("target_loss is only used with convex=True (the squared-loss bound is on L itself)")
    lhs = loss - lq
    factor = 2.0 if convex else 4.0
    rhs = (w2 + v2) / (factor * s) if s > 0 else math.inf
    details = {"B_bar_sq": w2 + v2, "elapsed": s, "convex": convex, "target_loss": lq,
               "bound_ratio": _ratio(lhs, rhs) if math.isfinite(rhs) else 0.0}
    tolerance = _tol(rtol, lhs, rhs) if math.isfinite(rhs) else 0.0
    label = "(‖ω‖²+‖ν‖²)/2(t−τ)" if convex else "(‖ω‖²+‖ν‖²)/4(t−τ)"
    return _leq("APP", "augmented-model rate", lhs, rhs, tolerance, details, "L−L(Q)" if convex else "L",
                label)


def distance_non_increasing(distances: ArrayLike, atol_rel: float = 1e-6) -> Verdict:
    r"""(§6) The recorded distance ``‖(ω_k, u_k − ν)‖`` never increases.

    Gradient flow (squared loss): ``½ d/dt ‖(ω, u − ν)‖² = −2L ≤ 0``. Gradient descent: see
    :func:`gd_step_distance_condition`. Convex losses: non-increasing only while ``L ≥ L(Q)``.

    Parameters
    ----------
    distances
        The sequence ``d_0, d_1, …`` (at least two entries).
    atol_rel
        Tolerance on each increase, relative to ``d_0``: ``d_{k+1} − d_k ≤ atol_rel · d_0``.

    Returns
    -------
    Verdict
        ``lhs`` = the largest increase ``max_k (d_{k+1} − d_k)``, ``rhs = 0``, ``margin = −lhs``;
        ``details``: ``worst_step``, ``n_increases`` (beyond tolerance), ``first``, ``last``.
    """
    d = _array("distances", distances, nonneg=True, min_len=2)
    tolerance = _tol(_nonneg("atol_rel", atol_rel), d[0])
    inc = np.diff(d)
    k = int(np.argmax(inc))
    details = {"worst_step": k, "n_increases": int((inc > tolerance).sum()), "first": float(d[0]),
               "last": float(d[-1])}
    return _leq("APP.distance", "distance non-increasing", float(inc[k]), 0.0, tolerance, details,
                "max Δd", "0")


def gd_step_distance_condition(step_size: float, grad_norm_sq: float, loss: float,
                               target_loss: float | None = None, rtol: float = 1e-6) -> Verdict:
    r"""(§6, discrete) One gradient-descent step does not increase ``‖(ω, u − ν)‖`` iff ``η‖∇_{ω,u}L‖² ≤ 4L``.

    Exact identity for the squared loss (the body parameters may move in the same step):
    ``‖x_{k+1} − x*‖² = ‖x_k − x*‖² − 4ηL_k + η²‖∇_{ω,u}L_k‖²`` with ``x = (ω, u)``, ``x* = (0, ν)``.
    For a convex loss with target ``Q`` (``target_loss = L(Q)``) the condition
    ``η‖∇_{ω,u}L‖² ≤ 2(L − L(Q))`` is sufficient, not necessary.

    Parameters
    ----------
    step_size
        ``η > 0``.
    grad_norm_sq
        ``‖∇_{ω,u} L_k‖²`` — the gradient block of the output layer and ``u`` only, not the body.
    loss
        ``L_k``.
    target_loss
        ``L(Q)`` for the convex-loss form; ``None`` for the squared loss.
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs = η‖∇‖²``, ``rhs = 4L`` (or ``2(L − L(Q))``), ``margin = rhs − lhs``; ``details``:
        ``max_step`` (the largest ``η`` satisfying the condition), ``squared_distance_change``
        (exact for the squared loss).
    """
    eta = _nonneg("step_size", step_size)
    if eta == 0:
        raise ValueError("step_size must be positive")
    g2 = _nonneg("grad_norm_sq", grad_norm_sq)
    if target_loss is None:
        loss = _nonneg("loss", loss)
        rhs, exact = 4 * loss, True
    else:
        loss = _real("loss", loss)
        rhs, exact = 2 * (loss - _real("target_loss", target_loss)), False
    lhs = eta * g2
    details = {"exact": exact, "max_step": _ratio(rhs, g2) if rhs >= 0 else 0.0}
    if exact:
        details["squared_distance_change"] = -4 * eta * loss + eta**2 * g2
    return _leq("APP.gd-step", "GD step keeps the distance", lhs, rhs, _tol(rtol, lhs, rhs), details,
                "η‖∇_{ω,u}L‖²", "4L" if exact else "2(L−L(Q))")


def gd_telescoping_bound(losses: ArrayLike, grad_norms_sq: ArrayLike, step_size: float, omega_tau_sq: float,
                         nu_tau_sq: float, rtol: float = 1e-6) -> Verdict:
    r"""(§6, discrete) ``Σ_{k<K} η(4L_k − η‖∇_{ω,u}L_k‖²) ≤ ‖ω_τ‖² + ‖ν‖²`` for any step size.

    Summing the exact one-step identity: the left side equals ``‖x_0 − x*‖² − ‖x_K − x*‖²``. If every
    step has ``η‖∇_{ω,u}L_k‖² ≤ 4γL_k`` with ``γ < 1``, then ``min_{k<K} L_k ≤ (1/K)Σ L_k ≤
    (‖ω_τ‖² + ‖ν‖²)/(4(1−γ)ηK)`` — the discrete form of ``t − τ = ηK`` (``theory/application.md``).

    Parameters
    ----------
    losses
        ``L_0, …, L_{K−1}`` at the iterates the steps were taken from (squared loss).
    grad_norms_sq
        ``‖∇_{ω,u} L_k‖²`` at the same iterates.
    step_size
        ``η > 0``.
    omega_tau_sq, nu_tau_sq
        ``‖ω_τ‖²`` and ``‖ν‖²`` (so ``‖x_0 − x*‖² = ‖ω_τ‖² + ‖ν‖²`` since ``u_τ = 0``).
    rtol
        Relative tolerance.

    Returns
    -------
    Verdict
        ``lhs`` = the sum, ``rhs = ‖ω_τ‖² + ‖ν‖²``, ``margin = rhs − lhs`` (= ``‖x_K − x*‖²`` exactly);
        ``details``: ``gamma`` ``max_k η‖∇_k‖²/(4L_k)``, ``average_loss``, ``average_loss_bound``
        (``inf`` when ``γ ≥ 1``), ``steps``.
    """
    loss = _array("losses", losses, nonneg=True)
    g2 = _array("grad_norms_sq", grad_norms_sq, nonneg=True)
    _same_length(losses=loss, grad_norms_sq=g2)
    eta = _nonneg("step_size", step_size)
    if eta == 0:
        raise ValueError("step_size must be positive")
    b2 = _nonneg("omega_tau_sq", omega_tau_sq) + _nonneg("nu_tau_sq", nu_tau_sq)
    lhs = float(np.sum(eta * (4 * loss - eta * g2)))
    gamma = max(_ratio(eta * gk, 4 * lk) for gk, lk in zip(g2, loss, strict=True))
    steps = int(loss.shape[0])
    avg_bound = b2 / (4 * (1 - gamma) * eta * steps) if gamma < 1 else math.inf
    details = {"gamma": gamma, "average_loss": float(loss.mean()), "average_loss_bound": avg_bound,
               "min_loss": float(loss.min()), "steps": steps}
    return _leq("APP.gd-sum", "GD telescoping bound", lhs, b2, _tol(rtol, lhs, b2), details,
                "Σ η(4L−η‖∇‖²)", "‖ω_τ‖²+‖ν‖²")


# -- A1: combining the three tests -------------------------------------------------------------


def cms_assessment(candidate_error: float, data_residual: float, transfer_error: float | None = None,
                   rank_fit: int | None = None, rank_union: int | None = None, tol: float = 1e-6) -> Verdict:
    r"""(A1) The verdict on the common model structure assumption from the three tests of THEORY §2.

    The verdict rests on test 1 (candidate identity ``‖f − J R‖/‖f‖`` on fresh inputs) with test 2
    (``‖(I−P)f_X‖/‖f_X‖``) as a necessary condition. Test 3 (least-norm transfer
    ``‖f_B − J_B J_A⁺ f_A‖/‖f_B‖``) can refute A1 only when it is *conclusive*:
    ``rank J_A = rank [J_A; J_B]`` (then A1 forces a zero transfer error); otherwise a failing
    transfer is inconclusive because ``J_A⁺ f_A`` is only determined modulo ``null J_A``
    (``theory/cms.md``).

    Parameters
    ----------
    candidate_error
        Test 1, relative error of the best candidate ``R`` on inputs not used to choose it.
    data_residual
        Test 2, ``‖(I−P)f_X‖/‖f_X‖``.
    transfer_error
        Test 3, or ``None`` if not run.
    rank_fit, rank_union
        ``rank J_A`` and ``rank [J_A; J_B]`` (needed to call a failing transfer conclusive).
    tol
        Threshold for all three relative errors.

    Returns
    -------
    Verdict
        ``lhs`` = the largest error among the tests that count (1, 2, and 3 when it is conclusive),
        ``rhs = tol``, ``margin = tol − lhs``; ``details['transfer']`` is ``"passed"``,
        ``"failed (conclusive)"``, ``"failed (inconclusive)"`` or ``"not run"``; ``details['status']``
        is ``"established"`` (``holds``), ``"refuted"`` (test 2 fails, or test 3 fails conclusively:
        no ``R`` can exist) or ``"not established"`` (test 1 fails but nothing refutes A1: some other
        ``R`` than the candidates may work).
    """
    e1 = _nonneg("candidate_error", candidate_error)
    e2 = _nonneg("data_residual", data_residual)
    tol = _nonneg("tol", tol)
    counted = [e1, e2]
    details: dict = {"candidate_error": e1, "data_residual": e2,
                     "data_level_note": "necessary, not sufficient"}
    if (rank_fit is None) != (rank_union is None):
        raise ValueError("give both rank_fit and rank_union, or neither")
    conclusive = False
    if rank_fit is not None:
        rf, ru = _count("rank_fit", rank_fit), _count("rank_union", rank_union)
        if rf > ru:
            raise ValueError(f"rank_fit = {rf} cannot exceed rank_union = {ru}")
        conclusive = rf == ru
        details["transfer_conclusive"] = conclusive
    if transfer_error is None:
        details["transfer"] = "not run"
    else:
        e3 = _nonneg("transfer_error", transfer_error)
        details["transfer_error"] = e3
        if e3 <= tol:
            details["transfer"] = "passed"
        elif conclusive:
            details["transfer"] = "failed (conclusive)"
            counted.append(e3)
        else:
            details["transfer"] = "failed (inconclusive)"
    refuted = e2 > tol or details["transfer"] == "failed (conclusive)"
    details["status"] = "refuted" if refuted else ("established" if e1 <= tol else "not established")
    return _leq("A1", "common model structure", max(counted), tol, 0.0, details, "max error", "tol")
