"""Exceptions raised by the toolkit.

Every error names the problem and what the user can do about it. Raising never leaves
the model changed: checks run before any work.
"""

from __future__ import annotations

import warnings
from typing import TypeVar

__all__ = ["DiagnosticsError", "InsufficientMemoryError", "UnsupportedModelError", "renamed_argument"]

T = TypeVar("T")


class DiagnosticsError(ValueError):
    """Invalid input: wrong shapes, non-finite values, empty data, targets that do not fit."""


class UnsupportedModelError(DiagnosticsError):
    """A model, layer or operation that the measurement cannot handle exactly."""


class InsufficientMemoryError(MemoryError):
    """A Jacobian, Gram matrix or buffer that would not fit in the memory budget."""


def renamed_argument(value: T | None, old_value: T | None, old: str, new: str) -> T | None:
    """Accept a renamed keyword argument under its old name for a while, with a ``DeprecationWarning``.

    Returns the value to use: ``value`` (the new name's) unless only the old name was given.
    """
    if old_value is None:
        return value
    if value is not None:
        raise DiagnosticsError(f"pass {new}= only; {old}= is its former name")
    warnings.warn(f"{old}= is deprecated; it is now called {new}=", DeprecationWarning, stacklevel=3)
    return old_value


def format_bytes(n_bytes: float) -> str:
    """Human-readable size, e.g. ``'1.5 GiB'``."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")
