"""Build a seeded model of a family by name, count its parameters, and scale its learning rate with width."""

from __future__ import annotations

import math

import torch
from torch import nn

from .families import CNN, MLP, BiasFreeReLUNet, DeepLinear, ResNet
from .layers import PARAMETERIZATIONS, check_choice, check_sizes

__all__ = ["FAMILIES", "build_model", "count_parameters", "learning_rate_multiplier"]


_MLP_FAMILIES: dict[str, type[MLP]] = {
    "mlp": MLP,
    "deep-linear": DeepLinear,
    "bias-free-relu": BiasFreeReLUNet,
}

#: Families accepted by :func:`build_model`.
FAMILIES: tuple[str, ...] = ("mlp", "cnn", "resnet", "deep-linear", "bias-free-relu")


def build_model(
    family: str,
    width: int,
    *,
    input_shape: tuple[int, ...],
    n_out: int,
    parameterization: str = "standard",
    seed: int = 0,
    **kwargs,
) -> nn.Module:
    """Build a seeded model of one family, leaving the global RNG untouched.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.
    width : int
        Hidden units (MLP families) or channels (convolutional families).
    input_shape : tuple of int
        Shape of one input, e.g. ``(1, 8, 8)`` or ``(64,)``. The MLP families use its product;
        ``"cnn"`` and ``"resnet"`` need ``(C, H, W)`` and then also accept flat inputs.
    n_out : int
        Outputs ``m``.
    parameterization : str
        ``"standard"``, ``"ntk"`` or ``"mf"`` (``"resnet"``: ``"standard"`` only).
    seed : int
        Seed of the initialisation (the global RNG state is restored afterwards).
    **kwargs
        Further arguments of the family's class (``depth``, ``activation``, ``bias``,
        ``output_activation``, ``n_blocks``).

    Returns
    -------
    torch.nn.Module
        The model, in training mode, float32.
    """
    check_choice("model family", family, FAMILIES)
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    shape = tuple(int(s) for s in input_shape)
    if family in ("cnn", "resnet") and len(shape) != 3:
        raise ValueError(f"family {family!r} needs input_shape (C, H, W), got {tuple(input_shape)}")
    if family == "resnet" and parameterization != "standard":
        raise ValueError("family 'resnet' supports only the 'standard' parameterization")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family in _MLP_FAMILIES:
            cls = _MLP_FAMILIES[family]
            return cls(math.prod(shape), width, n_out, parameterization=parameterization, **kwargs)
        if family == "cnn":
            return CNN(shape[0], width, n_out, shape[1:], parameterization=parameterization, **kwargs)
        return ResNet(shape[0], width, n_out, image_size=shape[1:], **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Count the scalar parameters ``d`` (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def learning_rate_multiplier(parameterization: str, width: int) -> float:
    """Width scaling of the SGD learning rate that keeps training comparable across widths.

    ``lr = lr₀ · learning_rate_multiplier(parameterization, width)`` with a width-independent
    ``lr₀``: ``1/width`` for ``"standard"`` (its NTK grows like the width), ``1`` for ``"ntk"``,
    ``width`` for ``"mf"`` (its NTK shrinks like ``1/width``; theory/width.md#s4-lazy-versus-rich).

    Parameters
    ----------
    parameterization : str
        ``"standard"``, ``"ntk"`` or ``"mf"``.
    width : int
        Hidden width (channels for convolutional models).

    Returns
    -------
    float
    """
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    check_sizes(width=width)
    return {"standard": 1.0 / width, "ntk": 1.0, "mf": float(width)}[parameterization]
