"""Validation of the measured numbers every verdict function takes: clear ``ValueError`` on anything unusable."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["ArrayLike", "array", "count", "flag", "nonneg", "real", "same_length"]

ArrayLike = Sequence[float] | np.ndarray


def real(name: str, x: float) -> float:
    if isinstance(x, bool | np.bool_):
        raise ValueError(f"{name} must be a real number, got a bool")
    try:
        value = float(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number, got {x!r}") from err
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def nonneg(name: str, x: float) -> float:
    value = real(name, x)
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return value


def count(name: str, x: int, minimum: int = 0) -> int:
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {x}")
    return int(x)


def flag(name: str, x: bool) -> bool:
    if not isinstance(x, bool | np.bool_):
        raise ValueError(f"{name} must be a bool, got {x!r}")
    return bool(x)


def array(name: str, x: ArrayLike, *, nonneg: bool = False, min_len: int = 1) -> np.ndarray:
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


def same_length(**arrays: np.ndarray) -> None:
    lengths = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")
