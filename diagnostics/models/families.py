"""The model families: MLP and its linear and bias-free variants, a CNN and a ResNet with batch norm.

Every family ends in an affine output layer reachable as ``model.head``; ``model.features(x)``
returns the head's input (the penultimate representation).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    ACTIVATIONS,
    OUTPUT_ACTIVATIONS,
    PARAMETERIZATIONS,
    as_images,
    check_choice,
    check_sizes,
    conv,
    image_hw,
    linear,
)

__all__ = ["CNN", "MLP", "BiasFreeReLUNet", "DeepLinear", "ResNet", "ResidualBlock"]


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
        check_sizes(d_in=d_in, width=width, n_out=n_out, depth=depth)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        if output_activation is not None:
            check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        fans = [d_in] + [width] * depth
        self.parameterization = parameterization
        self.layers = nn.ModuleList(linear(fans[i], width, bias, parameterization) for i in range(depth))
        self.activation = ACTIVATIONS[activation]()
        self.head = linear(fans[-1], n_out, bias, parameterization, output=True)
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

    Its Jacobian columns lie in ``{(A x_i + c)_i}`` at any width and depth
    (theory/width.md#s3b-deep-linear-networks), so width never raises its rank above ``m·(d_in + 1)``.

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
    ``⟨∂f/∂θ, θ⟩ = H f`` holds: A1 with ``R(θ) = θ/H`` (theory/cms.md#a1). The constant multipliers of the
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
        check_sizes(in_channels=in_channels, width=width, n_out=n_out)
        check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        self.image_size = image_hw(image_size)
        if min(self.image_size) < 4:
            raise ValueError(f"CNN pools twice by 2: image_size must be at least 4, got {image_size!r}")
        self.in_channels = in_channels
        self.parameterization = parameterization
        self.conv1 = conv(in_channels, width, parameterization)
        self.conv2 = conv(width, width, parameterization)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        n_features = width * (self.image_size[0] // 4) * (self.image_size[1] // 4)
        self.head = linear(n_features, n_out, True, parameterization, output=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened pooled feature maps (the head's input)."""
        h = as_images(x, self.in_channels, self.image_size)
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
    parameterisation only; the head makes it satisfy A1 (theory/cms.md#affine-output-layer).

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
        check_sizes(in_channels=in_channels, width=width, n_out=n_out, n_blocks=n_blocks)
        self.in_channels = in_channels
        self.image_size = image_hw(image_size) if image_size is not None else None
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(n_blocks)))
        self.head = nn.Linear(width, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled feature maps ``(n, width)`` (the head's input)."""
        h = self.relu(self.bn(self.stem(as_images(x, self.in_channels, self.image_size))))
        return self.blocks(h).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the outputs ``(n, n_out)``."""
        return self.head(self.features(x))
