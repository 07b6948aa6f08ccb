"""Exceptions raised by the toolkit.

Every error names the problem and what the user can do about it. Raising never leaves
the model changed: checks run before any work.
"""

from __future__ import annotations

__all__ = ["DiagnosticsError", "InsufficientMemoryError", "UnsupportedModelError"]


class DiagnosticsError(ValueError):
    """Invalid input: wrong shapes, non-finite values, empty data, targets that do not fit."""


class UnsupportedModelError(DiagnosticsError):
    """A model, layer or operation that the measurement cannot handle exactly."""


class InsufficientMemoryError(MemoryError):
    """A Jacobian, Gram matrix or buffer that would not fit in the memory budget."""


def format_bytes(n_bytes: float) -> str:
    """Human-readable size, e.g. ``'1.5 GiB'``."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")
