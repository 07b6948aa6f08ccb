r"""Training that keeps the alignment condition D1 by construction (THEORY §6).

Train with any optimiser up to a switch iteration ``τ``; from ``τ`` on the model is the augmented model

.. math::

    \\tilde f(x; θ, u) = f(x; θ) + Ψ(x)\\,u, \\qquad u_τ = 0,

where ``Ψ`` is a *frozen feature map* fixed at ``τ`` (a deep copy of the model, batch norm in eval
mode, parameters never trained) whose training-set matrix contains the target, ``Q ∈ Col(Ψ_X)``
(D1 for the frozen block). The check is made once, at ``τ``; when it fails, random features are
appended and widened until the residual ``‖Q − Ψ_X ν‖/‖Q‖`` is at most ``tol`` (both residuals are
recorded). For a model with an affine output layer ``f = W h(x) + b`` and ``ω = (W, b)``, with
``Ψ_X ν = Q`` and ``x = (ω, u)``, ``x* = (0, ν)``, every gradient step on ``x`` satisfies exactly
(``theory/application.md``, whatever the body parameters do in the same step)

.. math::

    ‖x_{k+1} − x^*‖^2 = ‖x_k − x^*‖^2 − 4ηL_k + η^2‖∇_{ω,u}L_k‖^2   \\quad\\text{(squared loss)},

so the distance never increases while ``η‖∇_{ω,u}L_k‖² ≤ 4L_k``, and under gradient flow
``L(t) ≤ (‖ω_τ‖² + ‖ν‖²)/(4(t − τ))`` (``(…)/(2(t − τ))`` for ``L − L(Q)`` with cross-entropy).
:class:`AlignedTraining` records these quantities at every step after ``τ`` and checks them with the
verdicts of :mod:`theory`.

Feature maps (``feature_map=``)
    ``"tangent"``: ``Ψ(x) = α J_x(θ_τ)``, ``Ψ(x)u`` is one forward-mode product (``torch.func.jvp``) of
    the frozen copy; ``u`` has ``d`` entries and ``Col Ψ_X = Col J(θ_τ)`` (eval mode). The constant
    ``α > 0`` (``tangent_scale=``) changes neither the column space nor the theorem, only the trade-off
    between the constant (``‖ν‖ ∝ 1/α``) and the stable step (``λ_max(Ψ_XΨ_Xᵀ) ∝ α²``); by default
    ``α² = λ_max(ΦΦᵀ)/λ_max(JJᵀ)``, the frozen block as large as the output layer's own kernel
    (on the digits ResNet the whole NTK is about 500 times larger, and ``α = 1`` makes momentum SGD spike).
    ``"penultimate"``: ``Ψ(x)u = U [h(x; θ_τ); 1]``, one forward of the frozen copy without gradient
    and a linear map; ``u = U`` has ``m(p + 1)`` entries. D1 needs about ``n`` features.
    Enlargement appends random Fourier features ``r(h(x; θ_τ))`` of the frozen penultimate features.
Coefficients (``coefficients=``)
    ``"full"``: ``u`` as above (THEORY §6).
    ``"rank-one"``: ``Ψ(x)u`` restricted to the line of ``ν``: ``f̃ = f + s·ψ(x)`` with the frozen
    ``ψ = Ψν/‖ν‖`` and one trainable scalar ``s``. Same constant ``‖ω_τ‖² + ‖ν‖²``, a gradient block no
    larger than the full one, one extra parameter and no backward pass through the frozen copy
    (``theory/application_cheaper.md``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import svds
from torch import nn
from torch.func import functional_call, jvp

import theory

from . import _inputs, _memory
from ._model import FunctionalModel
from .alignment import CE_SCALES
from .errors import DiagnosticsError, UnsupportedModelError
from .jacobian import jacobian
from .spectral import Spectrum
from .targets import Targets

__all__ = [
    "COEFFICIENTS",
    "FEATURE_MAPS",
    "AlignedTraining",
    "AugmentedModel",
    "FrozenFeatures",
    "GuaranteeReport",
    "SwitchReport",
    "solve_alignment",
    "AlignmentSolution",
]

FEATURE_MAPS = ("tangent", "penultimate")
COEFFICIENTS = ("full", "rank-one")
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

_CHUNK = 1024  # samples per forward pass when features are computed on the whole training set


# ----------------------------------------------------------------------------------------------
# D1 for a frozen block: least-norm solutions from the smaller Gram, one absolute rank rule.


class _Block:
    """A float64 matrix ``A`` with the eigen-decomposition of its smaller Gram (``AAᵀ`` or ``AᵀA``)."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A = A
        self.primal = A.shape[0] <= A.shape[1]
        self.spectrum = Spectrum.of(A @ A.T if self.primal else A.T @ A, source_dtype=torch.float64)

    @property
    def lam_max(self) -> float:
        return max(float(self.spectrum.eigenvalues[0]), 0.0)

    def set_tol(self, tol: float, rule: str) -> None:
        self.spectrum = replace(self.spectrum, tol=tol, tol_rule=rule)

    def _kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.spectrum.rank
        vecs = self.spectrum.eigenvectors[:, :r]
        lam = torch.as_tensor(self.spectrum.eigenvalues[:r], dtype=vecs.dtype, device=vecs.device)
        return vecs, lam

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """Least-norm ``X`` with ``AX = P_A B`` (columns of ``B`` solved at once)."""
        vecs, lam = self._kept()
        if self.primal:
            return self.A.T @ (vecs @ ((vecs.T @ B) / lam[:, None]))
        return vecs @ ((vecs.T @ (self.A.T @ B)) / lam[:, None])

    def complement(self) -> torch.Tensor:
        """Orthonormal basis of the orthogonal complement of the kept column space of ``A``."""
        r = self.spectrum.rank
        if self.primal:  # the eigenvectors of AAᵀ span the whole row space
            return self.spectrum.eigenvectors[:, r:]
        vecs, lam = self._kept()
        basis = (self.A @ vecs) / lam.sqrt()
        return torch.linalg.qr(basis, mode="complete").Q[:, r:]


@dataclass(frozen=True)
class AlignmentSolution:
    """``Ψ_X ν ≈ Q`` for the frozen block ``Ψ_X = [J, I_m ⊗ Φ]`` (see :func:`solve_alignment`).

    Attributes
    ----------
    nu_tangent, nu_features
        ``ν_J`` (``d``) and ``ν_Φ`` (``m × p``, so that ``Ψ(x)ν_Φ = ν_Φ φ(x)``), float64, or ``None``.
    residual
        ``‖Q − Ψ_X ν‖/‖Q‖`` in float64, computed directly.
    rounding
        ``eps(source) · σ_max(Ψ_X) · ‖ν‖/‖Q‖``: how much the residual may grow when training recomputes
        ``Ψ_X`` in the model's dtype (rounding of the features, relative size ``eps``).
    rank
        Rank of ``Ψ_X`` (rank rule ``λ > λ̄ · nm · eps(float64)``, ``λ̄ = λ_max(JJᵀ) + λ_max(ΦΦᵀ)``).
    sigma_max_sq
        ``λ̄ ≥ λ_max(Ψ_XΨ_Xᵀ)``.
    """

    nu_tangent: torch.Tensor | None
    nu_features: torch.Tensor | None
    residual: float
    rounding: float
    rank: int
    sigma_max_sq: float

    @property
    def nu_norm_sq(self) -> float:
        """``‖ν‖²``."""
        return sum(float((v**2).sum()) for v in (self.nu_tangent, self.nu_features) if v is not None)

    @property
    def effective_residual(self) -> float:
        """``residual + rounding``: what D1 is decided on."""
        return self.residual + self.rounding


def solve_alignment(
    Q: torch.Tensor,
    *,
    features: torch.Tensor | None = None,
    tangent: torch.Tensor | None = None,
    source_dtype: torch.dtype = torch.float32,
) -> AlignmentSolution:
    r"""Solve ``Ψ_X ν = Q`` for the frozen block ``Ψ_X = [J, I_m ⊗ Φ]`` and measure the D1 residual.

    Parameters
    ----------
    Q
        Target ``(n, m)``.
    features
        ``Φ`` of shape ``(n, p)``: the block ``Ψ(x)u = U φ(x)`` (penultimate and random features).
    tangent
        ``J`` of shape ``(n·m, d)`` (sample-major rows, THEORY §1): the block ``Ψ(x)u = J_x u``.
    source_dtype
        Dtype the blocks were computed in (for the rounding allowance).

    Returns
    -------
    AlignmentSolution
        ``ν`` (float64), the residual ``‖Q − Ψ_X ν‖/‖Q‖``, its rounding allowance and the rank.

    Notes
    -----
    The features are computed once in the model's dtype and are then exact numbers for the frozen map,
    so the linear algebra is float64 with the float64 rank rule of THEORY §3 (``λ > λ̄ · nm · eps``), applied
    with one absolute threshold to every sub-problem. The engine's rule for measured Jacobians,
    ``eps`` of the source dtype, would call ``Ψ_X`` rank-deficient at a relative eigenvalue of
    ``nm · eps(float32) ≈ 1.5·10⁻³`` for ``nm ≈ 13 000``; what the source dtype does matter for is the
    recomputation of ``Ψ_X`` during training, accounted for by ``rounding``.

    With one block, ``ν = Ψ_X⁺Q`` is the least-norm solution, from the eigen-decomposition of the smaller
    of the two Grams (``d × d`` instead of ``nm × nm`` when the model has fewer parameters than rows).
    With both blocks, ``ν_J = J'⁺Q'`` with ``J' = (I − P_Φ)J`` and ``Q' = (I − P_Φ)Q`` (``P_Φ`` acting on the
    sample index), then ``ν_Φ = Φ⁺(Q − Jν_J)``: an exact solution whenever ``Q ∈ Col(Ψ_X)``, since
    ``Q − Jν_J = P_Φ(Q − Jν_J)`` then, though not always the least-norm one (when ``Φ`` has full row rank,
    ``J' = 0`` and ``ν = (0, Φ⁺Q)``; on the digits the joint least-norm ``‖ν‖²`` is about 30 % smaller).
    Every ``ν`` with ``Ψ_Xν = Q`` gives the guarantee; its norm enters the constant and is reported.
    """
    if features is None and tangent is None:
        raise DiagnosticsError("the frozen block is empty: pass features, tangent or both")
    Q = Q.to(torch.float64)
    return _solve(Q, None if features is None else _Block(features.to(Q)),
                  None if tangent is None else _Block(tangent.to(Q)), source_dtype)


def _solve(Q: torch.Tensor, features: _Block | None, tangent: _Block | None,
           source_dtype: torch.dtype) -> AlignmentSolution:
    """:func:`solve_alignment` on decomposed blocks (the tangent block is reused across enlargements)."""
    n, m = Q.shape
    blocks = {k: b for k, b in (("features", features), ("tangent", tangent)) if b is not None}
    lam_bar = sum(b.lam_max for b in blocks.values())
    tol = lam_bar * n * m * torch.finfo(torch.float64).eps
    rule = "(λ_max(JJᵀ) + λ_max(ΦΦᵀ)) · nm · eps(float64)"
    for b in blocks.values():
        b.set_tol(tol, rule)
    nu_t = nu_f = None
    rest = Q
    rank = 0
    full_features = "features" in blocks and blocks["features"].spectrum.rank == n
    if "tangent" in blocks and full_features:  # P_Φ = I: J' = 0, so ν_J = 0 and Φ carries Q alone
        nu_t = torch.zeros(blocks["tangent"].A.shape[1], dtype=Q.dtype, device=Q.device)
    elif "tangent" in blocks:
        J = blocks["tangent"]
        target = Q
        if "features" in blocks:
            # J'⁺Q' through the complement C of Col Φ (n × (n − r)): J' = (C ⊗ I)J'' with
            # J'' = (Cᵀ ⊗ I)J, so J'⁺Q' = J''⁺(Cᵀ ⊗ I)Q, a Gram of (n − r)m rows instead of nm
            C = blocks["features"].complement()
            J = _Block(torch.einsum("ik,icd->kcd", C, J.A.reshape(n, m, -1)).reshape(-1, J.A.shape[1]))
            J.set_tol(tol, rule)
            target = C.T @ Q
        nu_t = J.solve(target.reshape(-1, 1)).reshape(-1)
        rest = Q - (blocks["tangent"].A @ nu_t).reshape(n, m)
        rank += J.spectrum.rank
    if "features" in blocks:
        Phi = blocks["features"]
        nu_f = Phi.solve(rest).T.contiguous()
        rest = rest - Phi.A @ nu_f.T
        rank += m * Phi.spectrum.rank  # I_m ⊗ Φ
    q_norm = float(Q.norm())
    nu_norm = math.sqrt(sum(float((v**2).sum()) for v in (nu_t, nu_f) if v is not None))
    rounding = torch.finfo(source_dtype).eps * math.sqrt(lam_bar) * nu_norm / q_norm
    return AlignmentSolution(nu_t, nu_f, float(rest.norm()) / q_norm, rounding, rank, lam_bar)


# ----------------------------------------------------------------------------------------------
# The frozen feature map Ψ and the augmented model f̃ = f + Ψ u.


class _RandomFourierFeatures(nn.Module):
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
    def draw(cls, width: int, h: torch.Tensor, amplitude: float, seed: int) -> _RandomFourierFeatures:
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
    """The frozen feature map ``Ψ`` of THEORY §6: a deep copy of the model at ``τ``, never trained.

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
        self.random: _RandomFourierFeatures | None = None
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
    """``f̃(x) = f(x; θ) + Ψ(x) u`` (THEORY §6, step 3): call it for training after ``τ`` and for prediction.

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


# ----------------------------------------------------------------------------------------------
# Reports.


@dataclass
class SwitchReport:
    """What happened at the switch ``τ``: the D1 check of the frozen block, enlargement, ``ν``.

    Attributes
    ----------
    iteration
        ``τ`` (optimiser steps taken before the switch).
    residual_before, residual, rounding
        ``‖Q − Ψ_Xν‖/‖Q‖`` for the base feature map (rounding allowance included) and after enlargement
        (float64), and the rounding allowance of the final ``ν`` (:class:`AlignmentSolution`).
    aligned
        ``residual + rounding ≤ residual_tol``.
    enlargements
        ``(random features, residual, rank)`` for every width tried.
    omega_norm_sq, nu_norm_sq
        ``‖ω_τ‖²`` and ``‖ν₀‖²`` (``Ψ_Xν₀ = Q₀``: ``Y`` for mse, centred one-hot for ce).
    distance_scale, distance_target_loss
        ``c`` of the target ``Q = cQ₀`` used for the recorded distance (1 for mse), and ``L(cQ₀)``.
    n_coefficients
        Trainable entries added (``q`` for full coefficients, 1 for rank-one).
    tangent_scale
        ``α`` of the tangent map ``Ψ = α J_x(θ_τ)`` (1 for the penultimate map).
    """

    iteration: int
    feature_map: str
    coefficients: str
    loss: str
    n_samples: int
    n_outputs: int
    n_features: int
    n_coefficients: int
    rank: int
    residual_before: float
    residual: float
    rounding: float
    residual_tol: float
    aligned: bool
    enlargements: list[tuple[int, float, int]]
    random_features: int
    omega_norm_sq: float
    nu_norm_sq: float
    distance_scale: float
    distance_target_loss: float
    check_seconds: float
    tangent_scale: float = 1.0

    def __str__(self) -> str:
        verdict = "holds" if self.aligned else "FAILS"
        lines = [
            f"Switch at iteration {self.iteration}: feature map {self.feature_map!r}, {self.coefficients} "
            f"coefficients ({self.n_coefficients:,} trainable), loss {self.loss}",
            f"  D1 for the frozen block on n={self.n_samples} samples × m={self.n_outputs}: {verdict}; "
            f"residual {self.residual_before:.3e} → {self.residual:.3e} + rounding {self.rounding:.1e} "
            f"(tol {self.residual_tol:.1e}), "
            f"rank {self.rank}",
        ]
        if self.enlargements:
            tried = ", ".join(f"{w} → {r:.2e}" for w, r, _ in self.enlargements)
            lines.append(f"  enlarged with random features (width → residual): {tried}")
        if self.feature_map == "tangent":
            lines.append(f"  tangent features scaled by α = {self.tangent_scale:.3g}")
        lines.append(
            f"  ‖ω_τ‖² = {self.omega_norm_sq:.4g}, ‖ν‖² = {self.nu_norm_sq:.4g}; "
            f"check took {self.check_seconds:.2f} s"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable fields."""
        return {**asdict(self), "enlargements": [list(e) for e in self.enlargements]}


@dataclass
class GuaranteeReport:
    """The §6 guarantee checked on the recorded trajectory after ``τ``.

    Attributes
    ----------
    status
        ``"theorem"``: D1 holds for the frozen block and ``(ω, u)`` took plain gradient steps with one
        step size, so the per-step distance identity and the summed bound are theorems (the body may do
        anything); the per-record bound ``(‖ω_τ‖² + ‖ν‖²)/(4η k)`` is the flow form, checked.
        ``"check"``: the run departs from the theorem (``departures`` says how); every number is a check.
        ``"no guarantee"``: D1 fails for the frozen block.
    departures
        Plain statements of how the run departs from the theorem.
    bound_holds, records
        Records (``k ≥ 1``) whose loss is within the bound, and their number.
    worst_margin, max_bound_ratio
        Smallest ``bound − L`` and largest ``(L − L(Q))/(bound − L(Q))`` over the records.
    distance
        ``theory.distance_non_increasing`` on ``d_0, d_1, …``.
    step_condition_failures
        Steps with ``η‖∇_{ω,u}L‖² > 4L`` (``> 2(L − L(Q))`` for ce: sufficient, not necessary).
    telescoping
        ``theory.gd_telescoping_bound`` (squared loss, constant step), else ``None``.
    monotone_loss
        Whether the recorded loss never increased (needed for the last-iterate bound under GD).
    """

    status: str
    departures: tuple[str, ...]
    full_batch: bool
    records: int
    bound_holds: int
    worst_margin: float
    max_bound_ratio: float
    distance: theory.Verdict | None
    step_condition_failures: int
    telescoping: theory.Verdict | None
    monotone_loss: bool

    @property
    def all_bounds_hold(self) -> bool:
        """Every record satisfies the bound."""
        return self.bound_holds == self.records

    def __str__(self) -> str:
        head = {
            "theorem": "THEOREM: gradient descent on (ω, u) with D1 for the frozen block",
            "check": "CHECK ONLY: this run departs from the theorem, the bound is reported as a check",
            "no guarantee": "NO GUARANTEE: D1 fails for the frozen block",
        }[self.status]
        lines = [head]
        lines += [f"  departs: {d}" for d in self.departures]
        if not self.full_batch:
            lines.append("  minibatch losses: the identity holds per batch, not for the training loss")
        lines.append(
            f"  bound L ≤ (‖ω_τ‖²+‖ν‖²)/(4ηk): {self.bound_holds}/{self.records} records "
            f"(worst margin {self.worst_margin:.3g}, largest ratio {self.max_bound_ratio:.3g})"
        )
        if self.distance is not None:
            lines.append(f"  {self.distance}")
        failures = self.step_condition_failures
        lines.append(f"  steps above the distance condition η‖∇_(ω,u)L‖² ≤ 4L: {failures}")
        if self.telescoping is not None:
            lines.append(f"  {self.telescoping}")
        lines.append(f"  loss monotone after τ: {self.monotone_loss}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable fields (the verdicts as their own ``to_dict()``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["departures"] = list(self.departures)
        for key in ("distance", "telescoping"):
            out[key] = out[key].to_dict() if out[key] is not None else None
        return out


@dataclass
class _Record:
    iteration: int
    step: int
    loss: float
    grad_sq: float
    lr: float
    distance_sq: float
    distance_next_sq: float


# ----------------------------------------------------------------------------------------------
# The wrapper.


class AlignedTraining:
    """Wrap a model and an optimiser so that training keeps D1 by construction from ``switch_step`` on.

    Keep your own training loop; call the model through :attr:`model` and the optimiser through
    :attr:`optimizer` (both change at the switch), and call :meth:`step` once per iteration, either
    with a closure (it then takes the optimiser step) or after your own ``optimizer.step()``::

        trainer = AlignedTraining(model, torch.optim.SGD(model.parameters(), lr=0.05),
                                  train_data=(X, y), loss="ce", switch_step=500)
        for _ in range(1000):
            def closure():
                trainer.optimizer.zero_grad()
                loss = F.cross_entropy(trainer.model(X), y)
                loss.backward()
                return loss
            trainer.step(closure)
        print(trainer.guarantee()); trainer.history()   # pandas DataFrame

    Parameters
    ----------
    model
        Any ``nn.Module`` whose output is an affine output layer ``head`` applied once, ``f = W h + b``.
    optimizer
        A ``torch.optim`` optimiser over ``model``'s parameters (at ``τ`` the new coefficients join it as a
        param group with the head's hyper-parameters, so its state is kept) or a factory
        ``params -> optimiser`` (called on the model's parameters now and on model + coefficients at
        ``τ``, with fresh state).
    train_data
        The training set, ``(X, Y)`` or a map-style ``Dataset``/``DataLoader`` of ``(x, y)``: D1 and ``ν`` are
        computed on all of it. Labels (class indices) give one-hot ``Y`` for mse.
    switch_step
        ``τ``: the switch happens after this many optimiser steps (0: now).
    loss
        ``"mse"`` (the user minimises a multiple of ``‖f̃_X − Y‖²``) or ``"ce"`` (mean cross-entropy).
    feature_map
        ``"tangent"`` or ``"penultimate"``.
    coefficients
        ``"full"`` or ``"rank-one"``.
    tangent_scale
        ``α`` of the tangent map ``Ψ = α J_x(θ_τ)``: a positive number, or ``"head"`` (default) for
        ``α = sqrt(λ_max(ΦΦᵀ)/λ_max(JJᵀ))`` with ``Φ`` the output layer's columns of ``J``.
    head
        Module name of the affine output layer; default: the last ``nn.Linear`` called, checked to
        produce the model's output and to be linear in its weight and bias.
    enlarge
        Append random features of ``h(x; θ_τ)`` when D1 fails, doubling their number until the residual
        is at most ``tol`` (up to ``max_random_features``).
    tol
        Residual tolerance of D1; default ``sqrt(eps)`` of the model's dtype (the engine's default).
    full_batch
        Declare that every step uses the whole training set (the recorded loss is then the training loss).
    target_loss
        For ce: the distance is recorded to ``x* = (0, cν₀)`` with ``L(cQ₀) = target_loss`` (the distance is
        non-increasing only while ``L ≥ L(cQ₀)``, ``theory/application.md``).
    max_random_features
        Largest number of random features tried (default ``4n``).
    memory_budget
        Bytes the check at ``τ`` may use (default: half of what is available); a block that would not fit is
        refused before it is allocated.
    seed
        Seed of the random features.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | OptimizerFactory,
        *,
        train_data: object,
        switch_step: int,
        loss: str = "mse",
        feature_map: str = "penultimate",
        coefficients: str = "full",
        tangent_scale: float | str = "head",
        head: str | None = None,
        enlarge: bool = True,
        tol: float | None = None,
        full_batch: bool = False,
        target_loss: float = 1e-3,
        max_random_features: int | None = None,
        memory_budget: int | None = None,
        seed: int = 0,
    ) -> None:
        if feature_map not in FEATURE_MAPS:
            raise DiagnosticsError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
        if coefficients not in COEFFICIENTS:
            raise DiagnosticsError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")
        numeric = isinstance(tangent_scale, int | float) and not isinstance(tangent_scale, bool)
        if tangent_scale != "head" and not (numeric and tangent_scale > 0):
            raise DiagnosticsError(f"tangent_scale must be 'head' or a positive number, got {tangent_scale!r}")
        if isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 0:
            raise DiagnosticsError(f"switch_step must be a non-negative integer, got {switch_step!r}")
        if not 0 < target_loss:
            raise DiagnosticsError(f"target_loss must be positive, got {target_loss}")
        self.base_model = model
        self.feature_map = feature_map
        self.coefficients = coefficients
        self.tangent_scale = tangent_scale
        self.enlarge = enlarge
        self.full_batch = full_batch
        self.target_loss = float(target_loss)
        self.seed = seed
        self.memory_budget = memory_budget
        self.switch_step = switch_step
        X, T = _inputs.probe_data(train_data, None, 0)
        self._X = _inputs.normalise_inputs(X)
        self._n = _inputs.batch_size(self._X)
        self.head = _find_head(model, _inputs.take(self._X, slice(0, 4)), head,
                               need_features=feature_map == "penultimate" or enlarge)
        head_module = model.get_submodule(self.head)
        self._m = head_module.out_features
        self.targets = Targets.build(T, self._n, self._m, loss)
        self.loss = loss
        like = next(model.parameters())
        self.tol = float(tol) if tol is not None else math.sqrt(torch.finfo(like.dtype).eps)
        self.max_random_features = max_random_features or 4 * self._n
        self._factory = None if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        self._optimizer = optimizer if self._factory is None else self._factory(list(model.parameters()))
        self._omega = list(head_module.parameters())
        self._group_of(self._omega[0])  # refuse now if the optimiser does not train the output layer
        self.iteration = 0
        self.augmented: AugmentedModel | None = None
        self.switch_report: SwitchReport | None = None
        self._records: list[_Record] = []
        if switch_step == 0:
            self.switch()

    # -- what the training loop uses ---------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The model to train and predict with: the base model before ``τ``, the augmented one after."""
        return self.augmented if self.augmented is not None else self.base_model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimiser in use (after ``τ`` it also updates the coefficients)."""
        return self._optimizer

    @property
    def switched(self) -> bool:
        """Whether ``τ`` has passed."""
        return self.augmented is not None

    def step(
        self, closure: Callable[[], torch.Tensor] | None = None, *, loss: float | None = None
    ) -> float | None:
        """One training iteration.

        With ``closure`` (zero the gradients, compute the loss, ``backward()``, return the loss), take the
        optimiser step and return the loss (a float). Without it, call this after your own
        ``optimizer.step()``, passing the loss of that step as ``loss=`` so it is recorded (the gradients of the
        step must still be in ``.grad``). After ``τ`` every step is recorded; at ``τ`` the switch happens.
        """
        if closure is not None and loss is not None:
            raise DiagnosticsError("pass either a closure or loss=, not both")
        if self.switched:
            value = self._record_step(closure, loss)
        elif closure is not None:
            value = _as_float(self._optimizer.step(closure))
        else:
            value = None if loss is None else _as_float(loss)
        self.iteration += 1
        if not self.switched and self.iteration >= self.switch_step:
            self.switch()
        return value

    # -- the switch -----------------------------------------------------------------------------
    def switch(self) -> SwitchReport:
        """Build ``Ψ`` from a frozen copy, check D1 (enlarging if needed), compute ``ν`` and augment."""
        if self.switched:
            raise DiagnosticsError("the switch has already happened")
        start = time.perf_counter()
        like = next(self.base_model.parameters())
        frozen = FrozenFeatures(self.base_model, self.feature_map, self.head)
        x = _inputs.to(self._X, like.device, like.dtype)
        Q0 = self.targets.Q.to(device=like.device, dtype=torch.float64)
        tangent = None
        budget = _memory.resolve_budget(self.memory_budget, like.device)
        if self.feature_map == "tangent":
            d = sum(p.numel() for p in frozen.frozen.parameters())
            _require_block_memory(self._n * self._m, d, budget, "the tangent block J(θ_τ)")
            tangent = jacobian(frozen.frozen, x, mode="eval", memory_budget=budget).to(torch.float64)
            frozen.tangent_scale = self._scale_of(tangent, frozen)
            tangent.mul_(frozen.tangent_scale)
        h = _chunked(frozen.penultimate, x, self._n) if frozen.n_features or self.enlarge else None
        features = frozen.features_from(h).to(torch.float64) if frozen.n_features else None
        tangent_block = _Block(tangent) if tangent is not None else None
        solution = _solve(Q0, _Block(features) if features is not None else None, tangent_block, like.dtype)
        residual_before, enlargements = solution.effective_residual, []
        if solution.effective_residual > self.tol and self.enlarge:
            amplitude = math.sqrt(float((h.double() ** 2).sum()) / self._n + 1.0)  # RMS norm of [h, 1]
            # twice the counting minimum (S1): at the minimum Ψ_X is nearly square and ν is ill-conditioned
            # (digits ResNet, penultimate map: ‖ν‖² = 3540 with 1,289 random features, 3.9 with 2,576)
            width = 2 * max(1, math.ceil((self._n * self._m - solution.rank) / self._m))
            base_features = frozen.n_features  # before any random feature
            while True:
                width = min(width, self.max_random_features)
                _require_block_memory(self._n, base_features + width, budget,
                                      f"the feature block with {width:,} random features")
                frozen.random = _RandomFourierFeatures.draw(width, h, amplitude, self.seed)
                features = frozen.features_from(h).to(torch.float64)
                solution = _solve(Q0, _Block(features), tangent_block, like.dtype)
                enlargements.append((frozen.random.width, solution.effective_residual, solution.rank))
                if solution.effective_residual <= self.tol or frozen.random.width >= self.max_random_features:
                    break
                width *= 2
        nu = {k: v for k, v in (("tangent", solution.nu_tangent), ("features", solution.nu_features))
              if v is not None}
        nu_norm_sq = solution.nu_norm_sq
        if self.coefficients == "rank-one":
            kappa = math.sqrt(nu_norm_sq)
            if kappa == 0:
                raise DiagnosticsError("ν = 0: the target is zero on the training set")
            self.augmented = AugmentedModel(self.base_model, frozen, {k: v / kappa for k, v in nu.items()})
            self._nu = {"scale": torch.tensor(kappa, dtype=torch.float64, device=like.device)}
        else:
            self.augmented = AugmentedModel(self.base_model, frozen)
            self._nu = nu
        self._add_coefficients_to_optimizer()
        self._scales, self._scale_losses = self._target_scales()
        self._distance_scale = 1.0 if self.loss == "mse" else _scale_for_loss(self.target_loss, self._m)
        self._omega_sq = float(sum((p.detach().double() ** 2).sum() for p in self._omega))
        self._nu_sq = nu_norm_sq
        self._last_distance_sq = self._distance_sq()
        self.switch_report = SwitchReport(
            iteration=self.iteration,
            feature_map=self.feature_map,
            coefficients=self.coefficients,
            loss=self.loss,
            n_samples=self._n,
            n_outputs=self._m,
            n_features=int((tangent.shape[1] if tangent is not None else 0) + frozen.n_features * self._m),
            n_coefficients=sum(p.numel() for p in self.augmented.trainable()),
            rank=solution.rank,
            residual_before=residual_before,
            residual=solution.residual,
            rounding=solution.rounding,
            residual_tol=self.tol,
            aligned=solution.effective_residual <= self.tol,
            enlargements=enlargements,
            random_features=frozen.random.width if frozen.random is not None else 0,
            omega_norm_sq=self._omega_sq,
            nu_norm_sq=nu_norm_sq,
            distance_scale=self._distance_scale,
            distance_target_loss=self._loss_at_scale(self._distance_scale),
            check_seconds=time.perf_counter() - start,
            tangent_scale=frozen.tangent_scale,
        )
        return self.switch_report

    def _scale_of(self, J: torch.Tensor, frozen: FrozenFeatures) -> float:
        """``α`` of the tangent map: the user's, or ``sqrt(λ_max(ΦΦᵀ)/λ_max(JJᵀ))`` (``Φ``: the head's columns)."""
        if self.tangent_scale != "head":
            return float(self.tangent_scale)
        columns = torch.cat([torch.full((p.numel(),), name.startswith(self.head + "."), device=J.device)
                             for name, p in frozen.frozen.named_parameters()])  # J's column order
        if not columns.any():
            raise UnsupportedModelError(
                f"the output layer {self.head!r} has no parameters of its own (tied weights?): "
                "pass tangent_scale= a number")
        return math.sqrt(_top_eigenvalue(J[:, columns]) / _top_eigenvalue(J))

    def _add_coefficients_to_optimizer(self) -> None:
        new = self.augmented.trainable()
        if self._factory is not None:
            self._optimizer = self._factory(list(self.base_model.parameters()) + new)
            return
        group = self._group_of(self._omega[0])
        self._optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": new})

    def _group_of(self, p: torch.Tensor) -> dict:
        for group in self._optimizer.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise DiagnosticsError("the optimiser does not update the output layer: the theorem needs ω trained")

    # -- records ------------------------------------------------------------------------------
    def _trained(self) -> list[nn.Parameter]:
        return self._omega + self.augmented.trainable()

    def _distance_sq(self) -> float:
        """``‖ω‖² + ‖u − cν‖²`` in float64."""
        c = self._distance_scale
        total = sum(float((p.detach().double() ** 2).sum()) for p in self._omega)
        names = ["scale"] if self.augmented.rank_one else list(self.augmented.coefficients)
        params = self.augmented.trainable()
        for name, p in zip(names, params, strict=True):
            total += float(((p.detach().double() - c * self._nu[name]) ** 2).sum())
        return total

    def _grad_sq(self) -> float:
        grads = [p.grad for p in self._trained() if p.grad is not None]
        return float(sum((g.detach().double() ** 2).sum() for g in grads))

    def _common_lr(self) -> float:
        lrs = {float(self._group_of(p)["lr"]) for p in self._trained()}
        return lrs.pop() if len(lrs) == 1 else math.nan

    def _record_step(self, closure: Callable[[], torch.Tensor] | None, loss: float | None) -> float:
        captured: dict[str, float] = {}
        if closure is not None:
            before = self._distance_sq()
            lr = self._common_lr()

            def wrapped() -> torch.Tensor:
                value = closure()
                if not captured:
                    captured["loss"] = _as_float(value)
                    captured["grad_sq"] = self._grad_sq()
                return value

            self._optimizer.step(wrapped)
        else:
            before, lr = self._last_distance_sq, self._common_lr()
            captured = {"loss": math.nan if loss is None else _as_float(loss), "grad_sq": self._grad_sq()}
        after = self._distance_sq()
        step = len(self._records)
        record = _Record(self.iteration, step, captured["loss"], captured["grad_sq"], lr, before, after)
        self._records.append(record)
        self._last_distance_sq = after
        return captured["loss"]

    # -- verification ---------------------------------------------------------------------------
    def _target_scales(self) -> tuple[np.ndarray, np.ndarray]:
        if self.loss == "mse":
            return np.array([1.0]), np.array([0.0])
        scales = np.concatenate([CE_SCALES, [_scale_for_loss(self.target_loss, self._m)]])
        return scales, np.array([self._loss_at_scale(c) for c in scales])

    def _loss_at_scale(self, c: float) -> float:
        if self.loss == "mse":
            return 0.0
        return float(F.cross_entropy(c * self.targets.Q, self.targets.labels))

    def _bound(self, loss: float, elapsed: float) -> tuple[theory.Verdict, float]:
        """Check the §6 bound at ``t − τ = elapsed`` (best target scale for ce); return it and ``L(Q)``."""
        if self.loss == "mse":
            return theory.application_bound(loss, self._omega_sq, self._nu_sq, elapsed), 0.0
        if elapsed > 0:
            totals = self._scale_losses + (self._omega_sq + self._scales**2 * self._nu_sq) / (2 * elapsed)
            k = int(np.argmin(totals))
        else:
            k = len(self._scales) - 1
        c, lq = float(self._scales[k]), float(self._scale_losses[k])
        verdict = theory.application_bound(loss, self._omega_sq, c**2 * self._nu_sq, elapsed, convex=True,
                                           target_loss=lq)
        return verdict, lq

    def history(self) -> pd.DataFrame:
        """One row per step after ``τ``.

        Columns: ``iteration``, ``step`` ``k`` (steps since ``τ``), ``loss`` ``L_k``, ``grad_sq``
        ``‖∇_{ω,u}L_k‖²``, ``lr`` ``η_k`` (NaN when ``ω`` and ``u`` have different step sizes), ``elapsed``
        ``t_k − τ = Σ_{j<k} η_j``, ``distance`` ``‖x_k − x*‖`` and ``distance_next`` ``‖x_{k+1} − x*‖``,
        ``bound`` (on ``L_k``; ``inf`` at ``k = 0``), ``margin`` ``bound − L_k``, ``bound_ratio``
        ``(L_k − L(Q))/(bound − L(Q))`` (``L(Q) = 0`` for mse; ``≤ 1`` when the bound holds), ``bound_holds``,
        ``step_margin`` ``4L_k − η‖∇‖²`` (ce: ``2(L_k − L(cQ₀)) − η‖∇‖²``) and ``step_ok``.
        """
        rows, elapsed = [], 0.0
        lq_d = self._loss_at_scale(self._distance_scale) if self.switched else 0.0
        for r in self._records:
            row = {"iteration": r.iteration, "step": r.step, "loss": r.loss, "grad_sq": r.grad_sq, "lr": r.lr,
                   "elapsed": elapsed, "distance": math.sqrt(r.distance_sq),
                   "distance_next": math.sqrt(r.distance_next_sq)}
            if math.isfinite(r.loss) and math.isfinite(elapsed):
                verdict, lq = self._bound(r.loss, elapsed)
                row.update(bound=verdict.rhs + lq, margin=verdict.margin,
                           bound_ratio=verdict.details["bound_ratio"], bound_holds=verdict.holds)
            else:
                row.update(bound=math.nan, margin=math.nan, bound_ratio=math.nan, bound_holds=False)
            if math.isfinite(r.loss) and math.isfinite(r.lr) and r.lr > 0:
                step = theory.gd_step_distance_condition(
                    r.lr, r.grad_sq, r.loss, target_loss=None if self.loss == "mse" else lq_d)
                row.update(step_margin=step.margin, step_ok=step.holds)
            else:
                row.update(step_margin=math.nan, step_ok=False)
            rows.append(row)
            elapsed += r.lr
        return pd.DataFrame(rows, columns=[
            "iteration", "step", "loss", "grad_sq", "lr", "elapsed", "distance", "distance_next", "bound",
            "margin", "bound_ratio", "bound_holds", "step_margin", "step_ok"])

    def departures(self) -> list[str]:
        """Plain statements of how this run departs from the §6 theorem (empty when it does not)."""
        if not self.switched:
            return ["the switch has not happened yet"]
        out = []
        opt = self._optimizer
        groups = {id(g): g for g in (self._group_of(p) for p in self._trained())}.values()
        if type(opt) is not torch.optim.SGD:
            out.append(f"{type(opt).__name__} is not gradient descent (adaptive or other rule on ω and u)")
        else:
            for g in groups:
                if g.get("momentum", 0) != 0:
                    out.append(f"SGD momentum={g['momentum']} on ω and u (heavy-ball, not gradient steps)")
                if g.get("weight_decay", 0) != 0:
                    out.append(f"weight_decay={g['weight_decay']} on ω and u (a regularised loss)")
                if g.get("maximize", False):
                    out.append("maximize=True")
        if any(not math.isfinite(r.lr) for r in self._records) or len({float(g["lr"]) for g in groups}) > 1:
            out.append("ω and u have different step sizes")
        if any(not math.isfinite(r.loss) for r in self._records):
            out.append("some steps were recorded without their loss")
        return list(dict.fromkeys(out))

    def guarantee(self) -> GuaranteeReport:
        """Check the §6 statements on the recorded steps (see :class:`GuaranteeReport`)."""
        if not self.switched:
            raise DiagnosticsError("no guarantee before the switch: nothing is recorded before τ")
        hist = self.history()
        departures = self.departures()
        if not self.switch_report.aligned:
            status = "no guarantee"
        else:
            status = "check" if departures else "theorem"
        later = hist[hist.step >= 1]
        finite = later[np.isfinite(later.margin)]
        worst_margin = float(finite.margin.min()) if len(finite) else math.nan
        worst_ratio = float(finite.bound_ratio.max()) if len(finite) else math.nan
        distances = [math.sqrt(r.distance_sq) for r in self._records]
        if self._records:
            distances.append(math.sqrt(self._records[-1].distance_next_sq))
        distance = theory.distance_non_increasing(distances) if len(distances) >= 2 else None
        steps_ok = hist.step_ok.to_numpy(dtype=bool)
        telescoping = None
        lrs = hist.lr.to_numpy()
        if self.loss == "mse" and len(hist) and np.isfinite(hist.loss).all() and np.all(lrs == lrs[0]):
            telescoping = theory.gd_telescoping_bound(
                hist.loss.to_numpy(), hist.grad_sq.to_numpy(), float(lrs[0]), self._omega_sq, self._nu_sq)
        losses = hist.loss.to_numpy()
        return GuaranteeReport(
            status=status,
            departures=tuple(departures),
            full_batch=self.full_batch,
            records=len(later),
            bound_holds=int(later.bound_holds.sum()),
            worst_margin=worst_margin,
            max_bound_ratio=worst_ratio,
            distance=distance,
            step_condition_failures=int((~steps_ok).sum()),
            telescoping=telescoping,
            monotone_loss=bool(np.all(np.diff(losses) <= 0)) if len(losses) > 1 else True,
        )


# ----------------------------------------------------------------------------------------------
# Helpers.


def _as_float(value: object) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


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


def _chunked(fn: Callable[[_inputs.Inputs], torch.Tensor], x: _inputs.Inputs, n: int) -> torch.Tensor:
    return torch.cat([fn(_inputs.take(x, slice(s, min(n, s + _CHUNK)))) for s in range(0, n, _CHUNK)])


def _require_block_memory(rows: int, cols: int, budget: int, what: str) -> None:
    """Refuse a float64 block that would not fit: the block, a working copy, its smaller Gram and eigenvectors."""
    _memory.require(
        8 * (2 * rows * cols + 2 * min(rows, cols) ** 2), budget, f"D1 at the switch for {what} ({rows:,} × {cols:,})",
        "Check D1 on a subset of the training set (a smaller train_data), lower max_random_features, "
        "use feature_map='penultimate', or raise memory_budget.",
    )


def _top_eigenvalue(A: torch.Tensor) -> float:
    """``λ_max(AAᵀ) = σ_max(A)²``: dense for thin matrices, else ARPACK (seeded: the same matrix, the same number)."""
    if min(A.shape) <= 256:
        return float(torch.linalg.matrix_norm(A.detach().double(), ord=2)) ** 2
    sigma = svds(A.detach().cpu().double().numpy(), k=1, return_singular_vectors=False, random_state=0)
    return float(sigma[0]) ** 2


def _nearest_neighbour_distance(h: torch.Tensor, seed: int) -> float:
    """Median distance from (at most 512 seeded) rows of ``h`` to their nearest other row."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(h.shape[0], generator=g)[:512].to(h.device)
    dist = torch.cdist(h[idx].double(), h.double())
    dist[torch.arange(idx.shape[0], device=h.device), idx] = math.inf
    med = float(dist.min(1).values.median()) if h.shape[0] > 1 else 0.0
    return med if math.isfinite(med) and med > 0 else 1.0


def _scale_for_loss(target_loss: float, m: int) -> float:
    """``c`` with ``L(cQ₀) = log(1 + (m−1)e^{−c}) = target_loss`` for the centred one-hot ``Q₀``."""
    return math.log((m - 1) / math.expm1(target_loss))


def _find_head(model: nn.Module, probe: _inputs.Inputs, head: str | None, need_features: bool) -> str:
    """Find the affine output layer: called once, its output is the model's, linear in ``(W, b)``."""
    if not isinstance(model, nn.Module):
        raise DiagnosticsError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if head is not None:
        try:
            candidates = {head: model.get_submodule(head)}
        except AttributeError as exc:
            raise DiagnosticsError(f"the model has no module named {head!r}") from exc
        if not isinstance(candidates[head], nn.Linear):
            kind = type(candidates[head]).__name__
            raise UnsupportedModelError(f"head {head!r} is a {kind}, not an nn.Linear")
    else:
        candidates = {k: m for k, m in model.named_modules() if isinstance(m, nn.Linear)}
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    handles = [mod.register_forward_hook(lambda _m, a, o, name=name: calls.append((name, a[0], o)))
               for name, mod in candidates.items()]
    fm = FunctionalModel(model)
    try:
        with fm.measuring(), torch.no_grad():
            out = _inputs.call(model, _inputs.to(probe, fm.device, fm.dtype))
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise UnsupportedModelError("no nn.Linear output layer was called: pass head= the affine output")
    name, h, z = calls[-1]
    if sum(c[0] == name for c in calls) != 1:
        raise UnsupportedModelError(f"the output layer {name!r} is called more than once per forward pass")
    if not isinstance(out, torch.Tensor) or out.shape != z.shape or not torch.equal(out, z):
        raise UnsupportedModelError(
            f"the model's output is not the output of {name!r}: §6 needs an affine output layer "
            "f = W h + b with nothing after it (apply any softmax in the loss, not in the model)"
        )
    if need_features and h.ndim != 2:
        raise UnsupportedModelError(
            f"the input of {name!r} has shape {tuple(h.shape)}; the penultimate map and the random-feature "
            "enlargement need (n, p) features"
        )
    mod = candidates[name]
    doubled = {k: 2 * v.detach() for k, v in mod.named_parameters(recurse=False)}
    with torch.no_grad():
        if not torch.allclose(functional_call(mod, doubled, (h,)), 2 * z, rtol=1e-5, atol=1e-6):
            raise UnsupportedModelError(f"the output of {name!r} is not linear in its weight and bias")
    return name

