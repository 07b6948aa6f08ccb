"""Model families for the tests, the width-scaling report and the training framework.

Every family ends in an affine output layer reachable as ``model.head``, so it satisfies the
common model structure assumption A1 with ``R(θ)`` = the head's coordinates (theory/cms.md#a1), unless
built with a non-linear ``output_activation`` (the deliberate violations). ``model.features(x)``
returns the input of the head (the penultimate representation of theory/application.md).

Parameterisations (theory/width.md#s4-lazy-versus-rich), for :class:`MLP` and :class:`CNN` and the MLP-based families
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

from .build import FAMILIES, build_model, count_parameters, learning_rate_multiplier
from .families import CNN, MLP, BiasFreeReLUNet, DeepLinear, ResidualBlock, ResNet
from .layers import ACTIVATIONS, OUTPUT_ACTIVATIONS, PARAMETERIZATIONS, ScaledConv2d, ScaledLinear

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
