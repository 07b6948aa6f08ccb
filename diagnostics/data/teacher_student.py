"""A synthetic regression task: targets produced by a seeded random teacher network (works anywhere)."""

from __future__ import annotations

from typing import Any

import torch

from ..models import build_model
from .split import DataSplit

__all__ = ["TEACHER_DEFAULTS", "teacher_student"]

TEACHER_DEFAULTS: dict[str, Any] = {
    "d_in": 8,
    "m": 3,
    "teacher_width": 16,
    "teacher_depth": 1,
    "activation": "tanh",
    "noise": 0.0,
}


def teacher_student(n_train: int, n_test: int, seed: int, dtype: torch.dtype, options: dict) -> DataSplit:
    """``y = teacher(x) + noise·ε`` with ``x ~ N(0, I)`` and a seeded NTK-parameterised teacher MLP."""
    unknown = set(options) - set(TEACHER_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown teacher-student options {sorted(unknown)}; known: {', '.join(TEACHER_DEFAULTS)}"
        )
    opt = {**TEACHER_DEFAULTS, **options}
    for k in ("d_in", "m", "teacher_width"):
        if isinstance(opt[k], bool) or not isinstance(opt[k], int) or opt[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {opt[k]!r}")
    if opt["noise"] < 0:
        raise ValueError(f"noise must be non-negative, got {opt['noise']!r}")
    teacher = build_model(
        "mlp",
        opt["teacher_width"],
        input_shape=(opt["d_in"],),
        n_out=opt["m"],
        parameterization="ntk",
        seed=seed,
        depth=opt["teacher_depth"],
        activation=opt["activation"],
    ).double()
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n_train + n_test, opt["d_in"], generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(X)
    y = y + opt["noise"] * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    X, y = X.to(dtype), y.to(dtype)
    return DataSplit(
        name="teacher-student",
        X_train=X[:n_train],
        y_train=y[:n_train],
        X_test=X[n_train:],
        y_test=y[n_train:],
        n_classes=None,
        input_shape=(opt["d_in"],),
        task="regression",
    )
