"""The tracker's options, checked before any model or data is seen.

The tracker checks them when it is created, and the callbacks when they are constructed (a misspelt option
or a wrong loss name fails at once, not when training starts).

What depends on the model (``params``, ``output``, ``representation`` names) or the data (``target``) is
checked when the tracker is created on them.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

from ..engine.functional import MODES
from ..engine.measurement import STRATEGIES
from ..errors import DiagnosticsError
from ..targets import LOSSES
from .meta import check_tags
from .reference import check_horizon

__all__ = ["check_names", "check_options"]


def check_names(names: Collection[str], accepted: Collection[str], owner: str) -> None:
    """Refuse option ``names`` that ``owner`` does not take, suggesting the closest accepted name."""
    unknown = [name for name in names if name not in accepted]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(accepted), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DiagnosticsError(f"{owner} takes no option {', '.join(hints)}; its options are "
                               f"{', '.join(sorted(accepted))}")


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse values of the tracker's options that no model could accept (the others are not looked at)."""
    for name, value in options.items():
        check = _CHECKS.get(name)
        if check is not None:
            check(name, value)


def _integer(name: str, value: object, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DiagnosticsError(f"{name} must be an integer ≥ {low}{' or None' if optional else ''}, got {value!r}")


def _choice(choices: Sequence[str]):
    def check(name: str, value: object) -> None:
        if value not in choices:
            raise DiagnosticsError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return check


def _tolerance(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise DiagnosticsError(f"{name} must be a positive number or None, got {value!r}")


def _dtype(name: str, value: object) -> None:
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise DiagnosticsError(f"{name} must be a floating torch.dtype or None, got {value!r}")


def _names(name: str, value: object) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise DiagnosticsError(f"{name} must be a module name or a list of module names, got {value!r}")


def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise DiagnosticsError(f"{name} must be True or False, got {value!r}")


_CHECKS = {
    "every": lambda name, value: _integer(name, value, 1),
    "full_every": lambda name, value: _integer(name, value, 1, optional=True),
    "probe_size": lambda name, value: _integer(name, value, 1, optional=True),
    "data_size": lambda name, value: _integer(name, value, 1, optional=True),
    "seed": lambda name, value: _integer(name, value, 0),
    "memory_budget": lambda name, value: _integer(name, value, 1, optional=True),
    "loss": _choice(LOSSES),
    "mode": _choice(MODES),
    "strategy": _choice(STRATEGIES),
    "dtype": _dtype,
    "representation": _names,
    "rank_tol": _tolerance,
    "residual_tol": _tolerance,
    "tol": _tolerance,
    "horizon": lambda name, value: check_horizon(value),
    "tags": lambda name, value: check_tags(value),
    "progress": _flag,
    "resume": _flag,
}
