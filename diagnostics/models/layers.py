"""Layers with a constant multiplier, and the checks and helpers the model families share.

The multiplier is a python float (neither parameter nor buffer), so the parameters stay ordinary
``weight``/``bias`` tensors and the output stays linear in ``(head.weight, head.bias)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "OUTPUT_ACTIVATIONS",
    "PARAMETERIZATIONS",
    "ScaledConv2d",
    "ScaledLinear",
    "as_images",
    "check_choice",
    "check_sizes",
    "conv",
    "image_hw",
    "linear",
]

PARAMETERIZATIONS: tuple[str, ...] = ("standard", "ntk", "mf")

#: Hidden-layer activations of :class:`MLP`.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "linear": nn.Identity,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}

#: Non-linearities after the head; each breaks A1 in general (THEORY §2, violations).
OUTPUT_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),
}


class _Scaled:
    """A layer whose parameters are ``N(0, 1)`` and whose output is multiplied by a constant ``c``.

    The constant is a python float (neither parameter nor buffer), so the parameters stay ordinary
    ``weight``/``bias`` tensors.
    """

    multiplier: float
    weight: torch.Tensor
    bias: torch.Tensor | None

    def reset_parameters(self) -> None:
        """Draw every parameter from ``N(0, 1)``; the multiplier carries the scale."""
        for p in (self.weight, self.bias):
            if p is not None:
                nn.init.normal_(p)

    def extra_repr(self) -> str:
        """Describe the layer, multiplier included."""
        return f"{super().extra_repr()}, multiplier={self.multiplier:.4g}"


class ScaledLinear(_Scaled, nn.Linear):
    """Affine layer with a constant multiplier: ``y = c·(x Wᵀ + b)``, parameters ``N(0, 1)``.

    Parameters
    ----------
    in_features, out_features : int
        Layer sizes.
    bias : bool
        Whether the layer has a bias.
    multiplier : float
        The constant ``c`` (a python float: not a parameter, not a buffer).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, multiplier: float) -> None:
        super().__init__(in_features, out_features, bias)
        self.multiplier = float(multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``c·(x Wᵀ + b)``."""
        return self.multiplier * F.linear(x, self.weight, self.bias)


class ScaledConv2d(_Scaled, nn.Conv2d):
    """2-D convolution with a constant multiplier: ``y = c·(W ⋆ x + b)``, parameters ``N(0, 1)``.

    Takes the arguments of :class:`torch.nn.Conv2d` and the keyword ``multiplier`` (a python float).
    """

    def __init__(self, *args, multiplier: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.multiplier = float(multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``c·(W ⋆ x + b)``."""
        return self.multiplier * self._conv_forward(x, self.weight, self.bias)


def _multiplier(parameterization: str, fan_in: int, output: bool) -> float:
    return 1.0 / fan_in if parameterization == "mf" and output else 1.0 / math.sqrt(fan_in)


def linear(fan_in: int, fan_out: int, bias: bool, parameterization: str, output: bool = False) -> nn.Linear:
    """Build an affine layer in the given parameterisation (``output``: the head, scaled ``1/fan_in`` under mf)."""
    if parameterization == "standard":
        return nn.Linear(fan_in, fan_out, bias)
    return ScaledLinear(fan_in, fan_out, bias, multiplier=_multiplier(parameterization, fan_in, output))


def conv(in_channels: int, out_channels: int, parameterization: str) -> nn.Conv2d:
    """Build a 3×3 convolution with padding 1 in the given parameterisation."""
    if parameterization == "standard":
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    scale = _multiplier(parameterization, in_channels * 9, output=False)
    return ScaledConv2d(in_channels, out_channels, 3, padding=1, multiplier=scale)


def check_choice(what: str, value: object, choices) -> None:
    """Refuse a value that is not one of ``choices``, naming them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(map(str, choices))}")


def check_sizes(**sizes: int) -> None:
    """Refuse sizes that are not positive integers (``depth`` and ``n_blocks`` may be 0)."""
    for name, value in sizes.items():
        low = 0 if name in ("depth", "n_blocks") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``(H, W)`` from an int or a pair."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(s, int) and s >= 1 for s in hw):
        raise ValueError(f"image_size must be a positive int or a pair (H, W), got {image_size!r}")
    return hw


def as_images(x: torch.Tensor, channels: int, hw: tuple[int, int] | None) -> torch.Tensor:
    """Image batches pass through; flat batches ``(n, C·H·W)`` are reshaped to ``(n, C, H, W)``."""
    if x.ndim == 4:
        return x
    if x.ndim == 2 and hw is not None:
        return x.reshape(x.shape[0], channels, *hw)
    hint = " (flat inputs (n, C·H·W) need the model's image_size)" if hw is None and x.ndim == 2 else ""
    raise ValueError(f"expected inputs (n, C, H, W) or (n, C·H·W), got shape {tuple(x.shape)}{hint}")
