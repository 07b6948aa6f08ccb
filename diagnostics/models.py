"""Model families for the tests, the width-scaling report and the training framework.

Every family ends in an affine output layer reachable as ``model.head``, so it satisfies the
common model structure assumption A1 with ``R(θ)`` = the head's coordinates (THEORY §2), unless
built with a non-linear ``output_activation`` (the deliberate violations). ``model.features(x)``
returns the input of the head (the penultimate representation of THEORY §6).

Parameterisations (THEORY §5, S4), for :class:`MLP` and :class:`CNN` and the MLP-based families
:class:`DeepLinear` and :class:`BiasFreeReLUNet`:

``"standard"``
    PyTorch's default initialisation, no multipliers. The empirical NTK grows like the width, so
    the stable SGD learning rate shrinks like ``1/width``.
``"ntk"``
    All weights and biases ``N(0, 1)``; every layer's pre-activation is multiplied by
    ``1/sqrt(fan_in)``: ``z = (W x + b)/sqrt(fan_in)``. The NTK has a width-independent limit, so
    the learning rate stays ``O(1)``; kernel and parameter movement shrink with width (lazy
    regime, representation frozen).
``"mf"``
    Mean-field / maximal-update style: as ``"ntk"`` for the hidden layers, but the output layer is
    multiplied by ``1/fan_in``: ``f = (W h + b)/width``. The output at initialisation shrinks like
    ``1/sqrt(width)`` and the NTK like ``1/width``, so the learning rate must be scaled *up* by the
    width (``lr = lr₀·width``); the kernel then moves by ``O(1)`` at every width (rich regime,
    representation learned).

:func:`learning_rate_multiplier` returns these factors. Multipliers live in
:class:`ScaledLinear`/:class:`ScaledConv2d` as python floats, so the parameters stay ordinary
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
    "CNN",
    "FAMILIES",
    "MLP",
    "OUTPUT_ACTIVATIONS",
    "PARAMETERIZATIONS",
    "BiasFreeReLUNet",
    "DeepLinear",
    "ResNet",
    "ResidualBlock",
    "ScaledConv2d",
    "ScaledLinear",
    "build_model",
    "count_parameters",
    "learning_rate_multiplier",
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


class ScaledLinear(nn.Linear):
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

    def reset_parameters(self) -> None:
        """Draw every parameter from ``N(0, 1)``; the multiplier carries the scale."""
        for p in (self.weight, self.bias):
            if p is not None:
                nn.init.normal_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``c·(x Wᵀ + b)``."""
        return self.multiplier * F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """Describe the layer, multiplier included."""
        return f"{super().extra_repr()}, multiplier={self.multiplier:.4g}"


class ScaledConv2d(nn.Conv2d):
    """2-D convolution with a constant multiplier: ``y = c·(W ⋆ x + b)``, parameters ``N(0, 1)``.

    Takes the arguments of :class:`torch.nn.Conv2d` and the keyword ``multiplier`` (a python float).
    """

    def __init__(self, *args, multiplier: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.multiplier = float(multiplier)

    def reset_parameters(self) -> None:
        """Draw every parameter from ``N(0, 1)``; the multiplier carries the scale."""
        for p in (self.weight, self.bias):
            if p is not None:
                nn.init.normal_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``c·(W ⋆ x + b)``."""
        return self.multiplier * self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """Describe the layer, multiplier included."""
        return f"{super().extra_repr()}, multiplier={self.multiplier:.4g}"


def _multiplier(parameterization: str, fan_in: int, output: bool) -> float:
    return 1.0 / fan_in if parameterization == "mf" and output else 1.0 / math.sqrt(fan_in)


def _linear(fan_in: int, fan_out: int, bias: bool, parameterization: str, output: bool = False) -> nn.Linear:
    if parameterization == "standard":
        return nn.Linear(fan_in, fan_out, bias)
    return ScaledLinear(fan_in, fan_out, bias, multiplier=_multiplier(parameterization, fan_in, output))


def _conv(in_channels: int, out_channels: int, parameterization: str) -> nn.Conv2d:
    """Build a 3×3 convolution with padding 1 in the given parameterisation."""
    if parameterization == "standard":
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    scale = _multiplier(parameterization, in_channels * 9, output=False)
    return ScaledConv2d(in_channels, out_channels, 3, padding=1, multiplier=scale)


def _check_choice(what: str, value: object, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(map(str, choices))}")


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        low = 0 if name in ("depth", "n_blocks") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(s, int) and s >= 1 for s in hw):
        raise ValueError(f"image_size must be a positive int or a pair (H, W), got {image_size!r}")
    return hw


def _as_images(x: torch.Tensor, channels: int, hw: tuple[int, int] | None) -> torch.Tensor:
    """Image batches pass through; flat batches ``(n, C·H·W)`` are reshaped to ``(n, C, H, W)``."""
    if x.ndim == 4:
        return x
    if x.ndim == 2 and hw is not None:
        return x.reshape(x.shape[0], channels, *hw)
    hint = " (flat inputs (n, C·H·W) need the model's image_size)" if hw is None and x.ndim == 2 else ""
    raise ValueError(f"expected inputs (n, C, H, W) or (n, C·H·W), got shape {tuple(x.shape)}{hint}")


class MLP(nn.Module):
    """Fully connected network ``f(x) = head(σ(L_depth(… σ(L_1(x)))))``.

    Parameters
    ----------
    d_in : int
        Input dimension; inputs of any shape ``(n, …)`` are flattened with ``x.flatten(1)``.
    width : int
        Units per hidden layer.
    n_out : int
        Outputs ``m``.
    depth : int
        Number of hidden layers (0 gives an affine model).
    activation : str
        Hidden activation, one of :data:`ACTIVATIONS`.
    bias : bool
        Whether the layers have biases.
    parameterization : str
        ``"standard"``, ``"ntk"`` or ``"mf"`` (see the module docstring for the learning-rate scaling
        that goes with each).
    output_activation : str, optional
        ``None`` (default, affine output: A1 holds) or one of :data:`OUTPUT_ACTIVATIONS`, which
        apply a non-linearity after the head (A1 violations for tests).

    Attributes
    ----------
    layers : torch.nn.ModuleList
        The hidden affine layers.
    head : torch.nn.Linear
        The output layer; ``f`` is linear in ``(head.weight, head.bias)`` when
        ``output_activation`` is ``None``.
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        n_out: int,
        depth: int = 2,
        activation: str = "relu",
        bias: bool = True,
        parameterization: str = "standard",
        output_activation: str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(d_in=d_in, width=width, n_out=n_out, depth=depth)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        if output_activation is not None:
            _check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        fans = [d_in] + [width] * depth
        self.parameterization = parameterization
        self.layers = nn.ModuleList(_linear(fans[i], width, bias, parameterization) for i in range(depth))
        self.activation = ACTIVATIONS[activation]()
        self.head = _linear(fans[-1], n_out, bias, parameterization, output=True)
        self.output_activation = OUTPUT_ACTIVATIONS[output_activation]() if output_activation else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation ``h(x)`` (the head's input), shape ``(n, width)``."""
        h = x.flatten(1)
        for layer in self.layers:
            h = self.activation(layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the outputs ``(n, n_out)``."""
        f = self.head(self.features(x))
        return f if self.output_activation is None else self.output_activation(f)


class DeepLinear(MLP):
    """Deep linear network ``f(x) = W_{depth+1} ⋯ W_1 x`` (biases optional).

    Its Jacobian columns lie in ``{(A x_i + c)_i}`` at any width and depth (THEORY §5, S3b), so
    width never raises its rank above ``m·(d_in + 1)``.

    Parameters
    ----------
    d_in, width, n_out : int
        Input dimension, hidden width, outputs.
    depth : int
        Number of hidden layers (``depth + 1`` weight matrices).
    bias : bool
        Whether the layers have biases.
    parameterization : str
        ``"standard"``, ``"ntk"`` or ``"mf"``.
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        n_out: int,
        depth: int = 2,
        bias: bool = False,
        parameterization: str = "standard",
    ) -> None:
        super().__init__(d_in, width, n_out, depth, "linear", bias, parameterization)

    def end_to_end(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the affine map ``(A, c)`` with ``f(x) = A x + c``: ``A`` is ``(n_out, d_in)``."""
        p = self.head.weight
        d_in = self.layers[0].in_features if len(self.layers) else self.head.in_features
        with torch.no_grad():
            c = self(torch.zeros(1, d_in, dtype=p.dtype, device=p.device))
            A = self(torch.eye(d_in, dtype=p.dtype, device=p.device)) - c
        return A.T, c[0]


class BiasFreeReLUNet(MLP):
    """Bias-free ReLU network, positively homogeneous of degree ``H = depth + 1`` in all of θ.

    No biases and no normalisation, so ``f(x, αθ) = α^H f(x, θ)`` for ``α > 0`` and Euler's identity
    ``⟨∂f/∂θ, θ⟩ = H f`` holds: A1 with ``R(θ) = θ/H`` (THEORY §2). The constant multipliers of the
    ``"ntk"``/``"mf"`` parameterisations keep the degree.

    Parameters
    ----------
    d_in, width, n_out : int
        Input dimension, hidden width, outputs.
    depth : int
        Number of hidden layers (``H = depth + 1`` weight layers).
    parameterization : str
        ``"standard"``, ``"ntk"`` or ``"mf"``.
    """

    def __init__(
        self, d_in: int, width: int, n_out: int, depth: int = 2, parameterization: str = "standard"
    ) -> None:
        super().__init__(d_in, width, n_out, depth, "relu", False, parameterization)

    @property
    def degree(self) -> int:
        """The homogeneity degree ``H = depth + 1``."""
        return len(self.layers) + 1


class CNN(nn.Module):
    """Two 3×3 convolutions with ReLU and 2×2 max-pooling, then a linear head.

    ``conv1 → ReLU → pool → conv2 → ReLU → pool → flatten → head``; the head sees
    ``width·⌊H/4⌋·⌊W/4⌋`` features.

    Parameters
    ----------
    in_channels : int
        Input channels ``C``.
    width : int
        Channels of both convolutions.
    n_out : int
        Outputs ``m``.
    image_size : int or tuple of int
        ``H = W`` or ``(H, W)``, at least 4; flat inputs ``(n, C·H·W)`` are reshaped with it.
    parameterization : str
        ``"standard"``, ``"ntk"`` or ``"mf"`` (fan-in of a convolution: ``C_in·9``).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        n_out: int,
        image_size: int | tuple[int, int],
        parameterization: str = "standard",
    ) -> None:
        super().__init__()
        _check_sizes(in_channels=in_channels, width=width, n_out=n_out)
        _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        self.image_size = _image_hw(image_size)
        if min(self.image_size) < 4:
            raise ValueError(f"CNN pools twice by 2: image_size must be at least 4, got {image_size!r}")
        self.in_channels = in_channels
        self.parameterization = parameterization
        self.conv1 = _conv(in_channels, width, parameterization)
        self.conv2 = _conv(width, width, parameterization)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        n_features = width * (self.image_size[0] // 4) * (self.image_size[1] // 4)
        self.head = _linear(n_features, n_out, True, parameterization, output=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened pooled feature maps (the head's input)."""
        h = _as_images(x, self.in_channels, self.image_size)
        h = self.pool(self.relu(self.conv1(h)))
        h = self.pool(self.relu(self.conv2(h)))
        return h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the outputs ``(n, n_out)``."""
        return self.head(self.features(x))


class ResidualBlock(nn.Module):
    """Basic residual block ``ReLU(x + BN(conv(ReLU(BN(conv(x))))))`` at constant width.

    Parameters
    ----------
    width : int
        Channels in and out.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x``."""
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    """Small residual network: conv stem, residual blocks with batch norm, global average pool, head.

    ``stem (conv 3×3, BN, ReLU) → n_blocks × ResidualBlock → mean over H, W → head``. Standard
    parameterisation only; the head makes it satisfy A1 (THEORY §2, affine output layer).

    Parameters
    ----------
    in_channels : int
        Input channels ``C``.
    width : int
        Channels of every convolution.
    n_out : int
        Outputs ``m``.
    n_blocks : int
        Number of residual blocks.
    image_size : int or tuple of int, optional
        ``H = W`` or ``(H, W)``; needed only to accept flat inputs ``(n, C·H·W)``.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        n_out: int,
        n_blocks: int = 2,
        image_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(in_channels=in_channels, width=width, n_out=n_out, n_blocks=n_blocks)
        self.in_channels = in_channels
        self.image_size = _image_hw(image_size) if image_size is not None else None
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(n_blocks)))
        self.head = nn.Linear(width, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled feature maps ``(n, width)`` (the head's input)."""
        h = self.relu(self.bn(self.stem(_as_images(x, self.in_channels, self.image_size))))
        return self.blocks(h).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the outputs ``(n, n_out)``."""
        return self.head(self.features(x))


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
    _check_choice("model family", family, FAMILIES)
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
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
    ``width`` for ``"mf"`` (its NTK shrinks like ``1/width``). THEORY §5, S4.

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
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    _check_sizes(width=width)
    return {"standard": 1.0 / width, "ntk": 1.0, "mf": float(width)}[parameterization]
