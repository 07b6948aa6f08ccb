"""The frozen feature map ``Ψ`` and the augmented model ``f̃ = f + Ψ u`` (theory/application.md).

:class:`FrozenFeatures` is a deep copy of the model at the switch ``τ``, never trained, whose
tangent features or penultimate features (with random Fourier features of the penultimate
representation appended when D1 needs more columns) form ``Ψ``; :class:`AugmentedModel` adds
``Ψ(x)u`` to the user's model.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..engine import inputs as _inputs
from ..errors import DiagnosticsError

__all__ = ["FEATURE_MAPS", "AugmentedModel", "FrozenFeatures", "RandomFourierFeatures"]

FEATURE_MAPS = ("tangent", "penultimate")


class RandomFourierFeatures(nn.Module):
    """Random Fourier features ``r(h) = a·sqrt(2/p)·cos(h Wᵀ/σ + c)``, fixed, seeded, nested in ``p``.

    ``W ~ N(0, I)`` and ``c ~ U[0, 2π)``.

    For ``p ≥ n`` distinct inputs the ``n × p`` feature matrix has full row rank with probability one
    (the functions ``h ↦ e^{i⟨w, h⟩}`` of distinct points are linearly independent), so D1 then holds
    for every target. ``σ`` is the median nearest-neighbour distance of the training features, which
    keeps the kernel ``E[r(h)ᵀr(h')] = a² exp(−‖h − h'‖²/2σ²)`` well conditioned (a wider bandwidth makes
    ``‖ν‖`` explode); ``a`` is the root-mean-square norm of ``[h, 1]``, so the new features are of the size
    of the output layer's own inputs: extra units of the last hidden layer (S2), not a block that dominates
    the kernel (sized like the tangent rows instead, they take over the fit and the test accuracy drops).
    """

    def __init__(self, weight: torch.Tensor, phase: torch.Tensor, bandwidth: float, amplitude: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("phase", phase)
        self.bandwidth = float(bandwidth)
        self.amplitude = float(amplitude)

    @classmethod
    def draw(cls, width: int, h: torch.Tensor, amplitude: float, seed: int) -> RandomFourierFeatures:
        """Features ``0..width-1`` of the seeded sequence (a wider draw extends a narrower one)."""
        g = torch.Generator().manual_seed(seed)
        blocks_w, blocks_c, drawn = [], [], 0
        while drawn < width:  # fixed 256-feature blocks, so the first columns never change with width
            blocks_w.append(torch.randn(256, h.shape[1], generator=g, dtype=torch.float64))
            blocks_c.append(2 * math.pi * torch.rand(256, generator=g, dtype=torch.float64))
            drawn += 256
        weight = torch.cat(blocks_w)[:width].to(h)
        phase = torch.cat(blocks_c)[:width].to(h)
        return cls(weight, phase, _nearest_neighbour_distance(h, seed), amplitude)

    @property
    def width(self) -> int:
        """Number of features ``p``."""
        return int(self.weight.shape[0])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Features ``(n, width)``."""
        scale = self.amplitude * math.sqrt(2.0 / self.width)
        return scale * torch.cos(h @ self.weight.T / self.bandwidth + self.phase)


class FrozenFeatures(nn.Module):
    """The frozen feature map ``Ψ`` of theory/application.md: a deep copy of the model at ``τ``, never trained.

    The copy stays in eval mode (batch norm uses the running statistics of ``τ``; :meth:`train` cannot
    change that) and its parameters have ``requires_grad=False``. ``forward(coefficients, inputs)``
    returns ``Ψ(x)u`` as an ``(n, m)`` matrix, linear in the coefficients:

    - ``coefficients["tangent"]`` (``d``): ``α J_x(θ_τ) u``, one ``torch.func.jvp`` of the copy
      (``α`` = :attr:`tangent_scale`);
    - ``coefficients["features"]`` (``m × p``): ``U φ(x)`` with ``φ = [h(x; θ_τ), 1, r(h)]`` for the
      penultimate map and ``φ = r(h)`` (random features only) for the tangent map.

    Parameters
    ----------
    model
        The model at the switch (copied; the original is never modified).
    kind
        ``"tangent"`` or ``"penultimate"``.
    head
        Module name of the affine output layer in ``model``.
    """

    def __init__(self, model: nn.Module, kind: str, head: str) -> None:
        super().__init__()
        if kind not in FEATURE_MAPS:
            raise DiagnosticsError(f"feature_map must be one of {FEATURE_MAPS}, got {kind!r}")
        self.kind = kind
        self.head = head
        self.frozen = copy.deepcopy(model)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.random: RandomFourierFeatures | None = None
        self.tangent_scale = 1.0
        self.train(False)

    def train(self, mode: bool = True) -> FrozenFeatures:
        """Stay in eval mode whatever is asked: the frozen copy's batch norm must not move."""
        return super().train(False)

    @property
    def n_features(self) -> int:
        """Width ``p`` of ``φ`` (0 for a tangent map without random features)."""
        base = self.frozen.get_submodule(self.head).in_features + 1 if self.kind == "penultimate" else 0
        return base + (self.random.width if self.random is not None else 0)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the coefficient blocks."""
        out: dict[str, tuple[int, ...]] = {}
        if self.kind == "tangent":
            out["tangent"] = (sum(p.numel() for p in self.frozen.parameters()),)
        if self.n_features:
            out["features"] = (self.frozen.get_submodule(self.head).out_features, self.n_features)
        return out

    @torch.no_grad()
    def penultimate(self, inputs: _inputs.Inputs) -> torch.Tensor:
        """``h(x; θ_τ)``, the input of the frozen head, ``(n, p)``."""
        with _captured_input(self.frozen.get_submodule(self.head)) as box:
            _inputs.call(self.frozen, inputs)
        return box["h"]

    @torch.no_grad()
    def features_from(self, h: torch.Tensor) -> torch.Tensor:
        """``φ`` from the frozen penultimate ``h``: ``[h, 1, r(h)]`` (penultimate) or ``r(h)`` (tangent)."""
        parts = [h, torch.ones_like(h[:, :1])] if self.kind == "penultimate" else []
        if self.random is not None:
            parts.append(self.random(h))
        return torch.cat(parts, dim=1)

    def features(self, inputs: _inputs.Inputs) -> torch.Tensor:
        """``φ(x)`` of shape ``(n, p)``."""
        return self.features_from(self.penultimate(inputs))

    def tangent_product(self, u: torch.Tensor, inputs: _inputs.Inputs) -> torch.Tensor:
        """``α J_x(θ_τ) u`` per sample, ``(n, m)``: a ``jvp`` of the frozen copy, differentiable in ``u``."""
        params = dict(self.frozen.named_parameters())
        buffers = dict(self.frozen.named_buffers())
        sizes = [p.numel() for p in params.values()]
        tangents = {k: t.view_as(p) for (k, p), t in zip(params.items(), torch.split(u, sizes), strict=True)}

        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            state = {**p, **buffers}
            return _inputs.call(lambda *a, **kw: functional_call(self.frozen, state, a, kw), inputs)

        _, out = jvp(f, (params,), (tangents,))
        return self.tangent_scale * out.reshape(out.shape[0], -1)

    def forward(self, coefficients: Mapping[str, torch.Tensor], inputs: _inputs.Inputs) -> torch.Tensor:
        """``Ψ(x)u`` as an ``(n, m)`` matrix."""
        out = 0
        if "tangent" in coefficients:
            out = out + self.tangent_product(coefficients["tangent"], inputs)
        if "features" in coefficients:
            out = out + self.features(inputs) @ coefficients["features"].T
        return out


class AugmentedModel(nn.Module):
    """``f̃(x) = f(x; θ) + Ψ(x) u`` (theory/application.md#construction): for training after ``τ`` and prediction.

    ``model`` is the user's model itself (still trained); ``features`` the frozen map. With full
    coefficients ``u`` is the parameter dict ``coefficients`` (zero at the switch, so ``f̃ = f`` there);
    with rank-one coefficients the extra term is ``s·ψ(x)`` with the buffer ``direction`` (``ψ = Ψν/‖ν‖``,
    computed without gradient) and the scalar parameter ``scale`` ``s``.
    """

    def __init__(
        self,
        model: nn.Module,
        features: FrozenFeatures,
        direction: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.features = features
        like = next(features.frozen.parameters())
        self.direction_names = tuple(direction or ())
        if direction is None:
            self.coefficients = nn.ParameterDict(
                {k: nn.Parameter(torch.zeros(s, dtype=like.dtype, device=like.device))
                 for k, s in features.shapes().items()}
            )
        else:
            self.scale = nn.Parameter(torch.zeros((), dtype=like.dtype, device=like.device))
            for k, v in direction.items():
                self.register_buffer(f"direction_{k}", v.detach().to(like).clone())

    @property
    def rank_one(self) -> bool:
        """Whether the extra term is ``s·ψ(x)``."""
        return bool(self.direction_names)

    def trainable(self) -> list[nn.Parameter]:
        """Return the new parameters ``u`` (or ``s``) to hand to the optimiser."""
        return [self.scale] if self.rank_one else list(self.coefficients.values())

    def extra(self, inputs: _inputs.Inputs) -> torch.Tensor:
        """``Ψ(x)u`` (``(n, m)``)."""
        if self.rank_one:
            with torch.no_grad():
                direction = {k: getattr(self, f"direction_{k}") for k in self.direction_names}
                psi = self.features(direction, inputs)
            return self.scale * psi
        return self.features(dict(self.coefficients), inputs)

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        """``f(x) + Ψ(x)u``, in the shape of ``f(x)``."""
        inputs = _pack(args, kwargs)
        out = _inputs.call(self.model, inputs)
        return out + self.extra(inputs).reshape(out.shape)


def _pack(args: tuple, kwargs: dict) -> _inputs.Inputs:
    """Positional/keyword arguments as the engine's input structure (tensor, tuple or dict)."""
    if args and kwargs:
        raise DiagnosticsError("pass the inputs either positionally or as keywords, not both")
    if kwargs:
        return dict(kwargs)
    return args[0] if len(args) == 1 else tuple(args)


@contextlib.contextmanager
def _captured_input(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the first positional input of ``module`` during the block."""
    box: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
        box["h"] = args[0]

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _nearest_neighbour_distance(h: torch.Tensor, seed: int) -> float:
    """Median distance from (at most 512 seeded) rows of ``h`` to their nearest other row."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(h.shape[0], generator=g)[:512].to(h.device)
    dist = torch.cdist(h[idx].double(), h.double())
    dist[torch.arange(idx.shape[0], device=h.device), idx] = math.inf
    med = float(dist.min(1).values.median()) if h.shape[0] > 1 else 0.0
    return med if math.isfinite(med) and med > 0 else 1.0
