"""What a history's header says about the run besides the measurement settings: its tags and its optimiser.

A history's header (``meta``, :mod:`.history`) holds the tracker's settings; :mod:`.tracker` adds

- ``meta["tags"]``: the user's labels of the run (``{"width": 256, "seed": 3}``), a dict of JSON scalars
  (``{}`` when none), so that runs of a study can be told apart when their histories are read back;
- ``meta["optimizer"]``: the training recipe, ``{"name": type(opt).__name__, **hyper-parameters}`` of the
  optimiser's first parameter group that are JSON scalars (``lr``, ``momentum``, ``weight_decay``, …), or
  ``None`` when the optimiser is not known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import DiagnosticsError

__all__ = ["Tag", "check_tags", "describe_groups", "describe_optimizer"]

#: The value of a tag.
Tag = str | int | float | bool


def check_tags(tags: Mapping[str, Tag] | None) -> dict[str, Tag]:
    """Return ``tags`` as a plain dict (``{}`` for ``None``).

    Keys must be strings, values JSON scalars: strings, integers, finite floats, booleans.
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise DiagnosticsError(f"tags must be a mapping of names to strings or numbers, got {type(tags).__name__}")
    out: dict[str, Tag] = {}
    for key, value in tags.items():
        if not isinstance(key, str):
            raise DiagnosticsError(f"tag names must be strings, got {key!r}")
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
            value = value.item()
        if not isinstance(value, str | int | float | bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise DiagnosticsError(f"tag {key!r} must be a string, an integer, a finite float or a bool, got {value!r}")
        out[key] = value
    return out


def describe_optimizer(optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """Return ``{"name": type(optimizer).__name__, **scalar hyper-parameters of param_groups[0]}``, or ``None``.

    Tuples (Adam's ``betas``), ``None`` entries and the parameters themselves are left out; a 0-d tensor (a
    learning rate kept as a tensor) is read as its number.
    """
    return None if optimizer is None else describe_groups(optimizer)[0]


def describe_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Describe every parameter group as :func:`describe_optimizer` describes the first.

    The form :func:`theory.gradient_descent_premises` reads to decide whether the steps are plain gradient steps
    with one step size.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise DiagnosticsError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return [_describe(type(optimizer).__name__, group) for group in optimizer.param_groups]


def _describe(name: str, group: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    for key, value in group.items():
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            value = value.item()
        if key != "params" and isinstance(value, str | int | float | bool):
            out[key] = value
    return out
