"""Hidden-layer representations: linear CKA between activations (``theory/setup.md#representation``).

The tangent features ``φ_θ(x) = ∂f(x,θ)/∂θ`` are the representation the paper studies; the
activations ``h_l(x)`` of hidden layers are the familiar one. Their movement during training is
summarised by the linear centred kernel alignment (Kornblith et al., 2019) between the activations
of a layer now and at a reference point (initialisation), on the same inputs::

    CKA(X, Y) = ⟨H X Xᵀ H, H Y Yᵀ H⟩_F / (‖H X Xᵀ H‖_F ‖H Y Yᵀ H‖_F),     H = I − (1/n) 𝟙𝟙ᵀ,

for ``X ∈ R^{n×p}``, ``Y ∈ R^{n×q}`` (per-sample activations flattened). It lies in ``[0, 1]``, is
``1`` for identical representations and is invariant to orthogonal transformations and isotropic
scaling of either side. Only the centred ``n × n`` Gram of each side is needed, so the reference
costs ``n²`` numbers per layer whatever the layer's width.

Activations are captured with forward hooks on the model's own modules, registered for one
forward pass and always removed afterwards; the model is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .errors import DiagnosticsError

__all__ = ["centred_gram", "cka_from_grams", "linear_cka", "capture_grams"]


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    """``H X Xᵀ H`` in float64 for per-sample features ``X`` of shape ``(n, ...)`` (flattened per sample).

    The features are centred over samples before the product (more accurate than centring the
    Gram); the product runs in the features' dtype, the result is float64.
    """
    X = features.detach().reshape(features.shape[0], -1)
    X = X - X.mean(0, keepdim=True)
    return (X @ X.T).to(torch.float64)


def cka_from_grams(K: torch.Tensor, L: torch.Tensor) -> float:
    """Linear CKA ``⟨K, L⟩_F / (‖K‖_F ‖L‖_F)`` of two centred Grams (``nan`` if either is zero)."""
    if K.shape != L.shape or K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise DiagnosticsError(
            f"CKA needs two Grams of the same square shape, got {tuple(K.shape)} and {tuple(L.shape)}"
        )
    K, L = K.to(torch.float64), L.to(K.device, torch.float64)
    denom = float(K.norm() * L.norm())
    return float((K * L).sum()) / denom if denom > 0 else math.nan


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA between two sets of per-sample features ``X`` ``(n, ...)`` and ``Y`` ``(n, ...)``."""
    if X.shape[0] != Y.shape[0]:
        raise DiagnosticsError(f"CKA compares the same samples: got {X.shape[0]} and {Y.shape[0]} rows")
    return cka_from_grams(centred_gram(X), centred_gram(Y))


@contextmanager
def capture_grams(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, record the centred Gram of the output of each named module of ``model``.

    Yields a dict that is filled, on exit, with ``{name: H A Aᵀ H}`` (float64) for each module's
    output ``A`` (the first tensor when a module returns a tuple). Each module must run exactly
    once inside the block. The Gram is computed inside the hook, before later in-place operations
    (``ReLU(inplace=True)``) could alter the output. Hooks are removed on exit, whatever happens.

    Raises
    ------
    DiagnosticsError
        For an unknown module name, or a module that ran zero or several times.
    """
    modules = dict(model.named_modules())
    missing = [k for k in names if k not in modules]
    if missing:
        raise DiagnosticsError(
            f"no module named {', '.join(map(repr, missing))}; modules are: "
            f"{', '.join(repr(k) for k in modules if k)}"
        )
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in names}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            tensor = _first_tensor(output)
            if tensor is None or tensor.ndim == 0:
                raise DiagnosticsError(f"module {name!r} returned no batched tensor to compare")
            seen[name].append(centred_gram(tensor))

        return hook

    handles = [modules[k].register_forward_hook(hook_for(k)) for k in names]
    grams: dict[str, torch.Tensor] = {}
    try:
        yield grams
    finally:
        for handle in handles:
            handle.remove()
    for name, found in seen.items():
        if len(found) != 1:
            raise DiagnosticsError(
                f"module {name!r} ran {len(found)} times in one forward pass; CKA needs a module that "
                "runs exactly once (choose another module)"
            )
        grams[name] = found[0]


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in output if isinstance(t, torch.Tensor)), None)
    return None
