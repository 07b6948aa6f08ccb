"""The result type of every check, :class:`Verdict`, and the few ways the checks build one.

A verdict is three-valued, and says what it rested on:

``holds``
    every premise of the statement was met (or is the caller's to guarantee, see :class:`Premise`)
    and the measured numbers satisfy it within the tolerance;
``refuted``
    the premises were met and the numbers violate it beyond the tolerance: a counterexample;
``not established``
    the evidence cannot decide: the numbers fall within the measurement's own uncertainty, an
    interval contains both answers, or no witness was found where one may exist;
``not applicable``
    a premise was observed to fail, so the statement asserts nothing here (a bound whose premise
    fails is *not applicable*, never "above the bound").

Conventions shared by every verdict
-----------------------------------
- ``lhs`` and ``rhs`` are the two sides of the statement ``lhs ≤ rhs`` (or ``lhs = rhs``);
- ``margin`` is signed room, positive when the statement holds with room; ``holds`` implies
  ``margin ≥ −tolerance`` and ``refuted`` implies ``margin < −tolerance`` (checked when the verdict
  is built);
- ``tolerance`` is absolute, usually ``rtol · max(|lhs|, |rhs|, tiny)`` plus what the measurement
  itself cannot resolve;
- a *sanity* verdict checks the consistency of a measurement (e.g. ``rank J ≤ min(nm, d)``, which a
  measured rank cannot violate): it is reported, never counted as evidence for the theory.

NaN, inf, negative norms, negative counts and empty sequences raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._arguments import flag, nonneg

__all__ = [
    "HOLDS",
    "NOT_APPLICABLE",
    "NOT_ESTABLISHED",
    "REFUTED",
    "STATUSES",
    "TINY",
    "Premise",
    "Verdict",
    "judge",
    "not_applicable",
    "ratio",
    "rel_tol",
    "worst_point",
]

TINY = float(np.finfo(np.float64).tiny)
"""Smallest positive normal float64: the floor of every relative tolerance."""

HOLDS = "holds"
REFUTED = "refuted"
NOT_ESTABLISHED = "not established"
NOT_APPLICABLE = "not applicable"
#: The four answers a verdict can give.
STATUSES = (HOLDS, REFUTED, NOT_ESTABLISHED, NOT_APPLICABLE)


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
class Premise:
    """One premise of a statement and whether it was observed to hold.

    Attributes
    ----------
    name
        The premise in words, e.g. ``"D1: Q ∈ Col J"``.
    met
        ``True`` (observed), ``False`` (observed to fail: the statement is not applicable) or
        ``None`` (not observed either way, see ``undecided``).
    note
        How it was checked, or why it was not.
    undecided
        With ``met=None``: ``False`` when the premise was not checked here and the caller vouches for it
        (*assumed*); ``True`` when it was measured and the measurement could not decide it (*undecided*): a
        statement resting on it can then hold, but a violation is *not established*, never *refuted* (the
        premise itself may be what fails).
    """

    name: str
    met: bool | None
    note: str = ""
    undecided: bool = False

    def __post_init__(self) -> None:
        if self.undecided and self.met is not None:
            raise ValueError("a premise that was decided (met is True or False) cannot be undecided")

    def __str__(self) -> str:
        mark = "undecided" if self.undecided else {True: "met", False: "NOT met", None: "assumed"}[self.met]
        return f"{self.name}: {mark}" + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict:
        """Plain-Python dictionary."""
        return {"name": self.name, "met": self.met, "note": self.note, "undecided": self.undecided}


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one statement of ``theory/`` on measured numbers.

    Attributes
    ----------
    statement
        Short id of the statement: ``"I2"``, ``"I3"``, ``"S1"``, ``"APP"``, ... (see ``theory/README.md``).
    title
        Its name in words.
    status
        One of :data:`STATUSES`: ``"holds"``, ``"refuted"``, ``"not established"``, ``"not applicable"``.
    lhs, rhs
        The two sides of ``lhs ≤ rhs`` (or ``lhs = rhs``, see ``relation``).
    margin
        Signed room, positive when the statement holds with room (usually ``rhs − lhs``).
    tolerance
        Absolute tolerance used for the decision.
    details
        Statement-specific numbers (bound ratio, fitted slope, worst index, the reason, ...).
    lhs_label, rhs_label, relation
        How ``__str__`` names the two sides and the relation between them.
    premises
        The premises the statement needs and whether each was met.
    sanity
        A consistency check of the measurement, not evidence for the theory.
    """

    statement: str
    title: str
    status: str
    lhs: float
    rhs: float
    margin: float
    tolerance: float
    details: dict = field(default_factory=dict)
    lhs_label: str = "lhs"
    rhs_label: str = "rhs"
    relation: str = "≤"
    premises: tuple[Premise, ...] = ()
    sanity: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status == HOLDS and not self.margin >= -self.tolerance:
            raise ValueError(f"inconsistent verdict: holds, but margin {self.margin!r} < −{self.tolerance!r}")
        if self.status == REFUTED and not self.margin < -self.tolerance:
            raise ValueError(f"inconsistent verdict: refuted, but margin {self.margin!r} ≥ −{self.tolerance!r}")
        unmet = any(p.met is False for p in self.premises)
        if unmet != (self.status == NOT_APPLICABLE):
            raise ValueError("a verdict is not applicable exactly when one of its premises is not met")

    @property
    def holds(self) -> bool:
        """The statement was checked and holds."""
        return self.status == HOLDS

    @property
    def refuted(self) -> bool:
        """The statement was checked and is violated: a counterexample."""
        return self.status == REFUTED

    @property
    def applicable(self) -> bool:
        """Every premise was met or assumed."""
        return self.status != NOT_APPLICABLE

    @property
    def evidence(self) -> bool:
        """A decided (``holds`` or ``refuted``) verdict that is not a sanity check."""
        return not self.sanity and self.status in (HOLDS, REFUTED)

    def __bool__(self) -> bool:
        return self.holds

    def __str__(self) -> str:
        tag = " [sanity]" if self.sanity else ""
        if self.status == NOT_APPLICABLE:
            unmet = "; ".join(p.name for p in self.premises if p.met is False)
            return f"{self.statement} {self.title}: not applicable{tag} (premise not met: {unmet})"
        text = (f"{self.statement} {self.title}: {self.status}{tag}  {self.lhs_label}={_fmt(self.lhs)} "
                f"{self.relation} {self.rhs_label}={_fmt(self.rhs)}  (margin {_fmt(self.margin)})")
        reason = self.details.get("reason")
        return text + (f"; {reason}" if self.status == NOT_ESTABLISHED and reason else "")

    def to_dict(self) -> dict:
        """Plain-Python dictionary (numpy values converted), suitable for JSON."""
        return {
            "statement": self.statement,
            "title": self.title,
            "status": self.status,
            "holds": self.holds,
            "lhs": float(self.lhs),
            "rhs": float(self.rhs),
            "margin": float(self.margin),
            "tolerance": float(self.tolerance),
            "relation": self.relation,
            "lhs_label": self.lhs_label,
            "rhs_label": self.rhs_label,
            "premises": [p.to_dict() for p in self.premises],
            "sanity": self.sanity,
            "details": _jsonable(self.details),
        }


def measured_premise(name: str, argument: str, measured: bool | str | None, note: str) -> Premise:
    """Build a premise from a bool, a verdict word (*not established*: undecided) or ``None`` (assumed)."""
    if measured is None:
        return Premise(name, None, note)
    if isinstance(measured, str):
        words = {HOLDS: True, REFUTED: False, NOT_ESTABLISHED: None}
        if measured not in words:
            raise ValueError(f"{argument} must be a bool, one of {sorted(words)} or None, got {measured!r}")
        return Premise(name, words[measured], note, undecided=measured == NOT_ESTABLISHED)
    return Premise(name, flag(argument, measured), note)


def rel_tol(rtol: float, *scales: float) -> float:
    """``rtol · max(|scales|, tiny)``."""
    rtol = nonneg("rtol", rtol)
    return rtol * max([abs(s) for s in scales] + [TINY])


def judge(statement: str, title: str, lhs: float, rhs: float, tolerance: float, details: dict,
          lhs_label: str, rhs_label: str, *, premises: Sequence[Premise] = (), uncertainty: float = 0.0,
          margin: float | None = None, relation: str = "≤", sanity: bool = False) -> Verdict:
    """Decide ``lhs ≤ rhs`` (margin ``rhs − lhs`` unless given) under ``premises``.

    ``not applicable`` when a premise is not met; ``holds`` when ``margin ≥ −tolerance``; ``refuted``
    when ``margin < −(tolerance + uncertainty)`` and every premise was met or assumed; ``not established``
    in between, where the violation is within what the measurement cannot resolve (``uncertainty``), and
    for a violation under an *undecided* premise (it may be the premise that fails).
    """
    premises = tuple(premises)
    margin = rhs - lhs if margin is None else margin
    undecided = [p for p in premises if p.undecided]
    if any(p.met is False for p in premises):
        unmet = "; ".join(p.name for p in premises if p.met is False)
        details = {**details, "reason": f"premise not met: {unmet}"}
        status = NOT_APPLICABLE
    elif margin >= -tolerance:
        status = HOLDS
    elif margin < -(tolerance + nonneg("uncertainty", uncertainty)) and undecided:
        status = NOT_ESTABLISHED
        names = "; ".join(p.name + (f" ({p.note})" if p.note else "") for p in undecided)
        details = {**details, "reason": f"the numbers violate it by {-margin:.3g}, but a premise could not be "
                                        f"decided, and may be what fails: {names}"}
    elif margin < -(tolerance + uncertainty):
        status = REFUTED
    else:
        status = NOT_ESTABLISHED
        details = {**details, "reason": f"the violation {-margin:.3g} is within the measurement's "
                                        f"uncertainty {uncertainty:.3g}"}
    return Verdict(statement, title, status, lhs, rhs, margin, tolerance, details, lhs_label, rhs_label,
                   relation, premises, sanity)


def not_applicable(statement: str, title: str, lhs: float, rhs: float, details: dict, lhs_label: str,
                   rhs_label: str, premises: Sequence[Premise]) -> Verdict:
    """Build the verdict of a statement one of whose ``premises`` is not met: nothing is asserted."""
    return judge(statement, title, lhs, rhs, 0.0, details, lhs_label, rhs_label, premises=premises,
                 margin=math.nan)


def ratio(num: float, den: float) -> float:
    """``num/den`` with ``0/0 = 0`` and ``x/0 = inf`` for ``x > 0``."""
    if den > 0:
        return num / den
    return 0.0 if num <= 0 else math.inf


def worst_point(statement: str, title: str, lhs: np.ndarray, rhs: np.ndarray, tol: np.ndarray,
                details: dict, lhs_label: str, rhs_label: str, *, premises: Sequence[Premise] = ()) -> Verdict:
    """``lhs[k] ≤ rhs[k] + tol[k]`` for every ``k``, reported at the point with the least room."""
    k = int(np.argmin(rhs - lhs + tol))
    details = {**details, "worst_index": k, "n_violations": int(((rhs - lhs + tol) < 0).sum())}
    return judge(statement, title, float(lhs[k]), float(rhs[k]), float(tol[k]), details, lhs_label, rhs_label,
                 premises=premises)
