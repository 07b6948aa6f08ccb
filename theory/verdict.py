"""The result type of every check, :class:`Verdict`, and the few ways the checks build one.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._arguments import nonneg

__all__ = ["TINY", "Verdict", "leq", "ratio", "rel_tol", "vacuous", "worst_point"]

TINY = float(np.finfo(np.float64).tiny)
"""Smallest positive normal float64: the floor of every relative tolerance."""


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


def rel_tol(rtol: float, *scales: float) -> float:
    """``rtol · max(|scales|, tiny)``."""
    rtol = nonneg("rtol", rtol)
    return rtol * max([abs(s) for s in scales] + [TINY])


def leq(statement: str, title: str, lhs: float, rhs: float, tolerance: float, details: dict,
         lhs_label: str, rhs_label: str) -> Verdict:
    """``lhs ≤ rhs`` within ``tolerance``; margin ``rhs − lhs``."""
    margin = rhs - lhs
    return Verdict(statement, title, margin >= -tolerance, lhs, rhs, margin, tolerance, details,
                   lhs_label, rhs_label)


def vacuous(statement: str, title: str, lhs: float, rhs: float, details: dict, lhs_label: str,
            rhs_label: str, reason: str) -> Verdict:
    """Build the verdict of a statement whose premise is not met: nothing is asserted, ``reason`` says why."""
    details = {**details, "asserted": False, "reason": reason}
    return Verdict(statement, title, True, lhs, rhs, math.inf, 0.0, details, lhs_label, rhs_label,
                   vacuous=True)


def ratio(num: float, den: float) -> float:
    """``num/den`` with ``0/0 = 0`` and ``x/0 = inf`` for ``x > 0``."""
    if den > 0:
        return num / den
    return 0.0 if num <= 0 else math.inf


def worst_point(statement: str, title: str, lhs: np.ndarray, rhs: np.ndarray, tol: np.ndarray,
                 details: dict, lhs_label: str, rhs_label: str) -> Verdict:
    """``lhs[k] ≤ rhs[k] + tol[k]`` for every ``k``, reported at the point with the least room."""
    k = int(np.argmin(rhs - lhs + tol))
    details = {**details, "worst_index": k,
               "n_violations": int(((rhs - lhs + tol) < 0).sum())}
    return leq(statement, title, float(lhs[k]), float(rhs[k]), float(tol[k]), details, lhs_label,
                rhs_label)
