"""Targets: class indices, one-hot or real-valued, turned into the vectors of THEORY §3–§4.

For the squared loss the target is ``Y`` itself (class indices become one-hot rows). For
cross-entropy the alignment target is the centred one-hot ``Q₀ = e_y − 1/m`` (membership in
``Col(J)`` does not depend on its scale) and the loss uses the class labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DiagnosticsError

__all__ = ["CE_SCALES", "LOSSES", "Targets", "best_scale"]

LOSSES = ("mse", "ce")

#: Scales ``c`` of the centred one-hot target ``cQ₀`` tried by the cross-entropy bounds (I4, §6).
CE_SCALES = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 61)])


@dataclass(frozen=True)
class Targets:
    """Targets matched to ``(n, m)`` outputs.

    Attributes
    ----------
    Y
        The regression target (``mse``) or one-hot labels (``ce``), ``(n, m)`` float64.
    Q
        The alignment target ``Q``: ``Y`` for ``mse``, centred one-hot for ``ce`` (or the user's).
    labels
        Class indices ``(n,)`` for ``ce``; ``None`` for real-valued regression.
    loss
        ``"mse"`` or ``"ce"``.
    """

    Y: torch.Tensor
    Q: torch.Tensor
    labels: torch.Tensor | None
    loss: str

    @classmethod
    def build(
        cls, targets: torch.Tensor, n: int, m: int, loss: str, target: torch.Tensor | None = None
    ) -> Targets:
        """Match ``targets`` to outputs of shape ``(n, m)``; ``target`` overrides ``Q``."""
        if loss not in LOSSES:
            raise DiagnosticsError(f"loss must be one of {LOSSES}, got {loss!r}")
        targets = torch.as_tensor(targets)
        labels = None
        if not targets.is_floating_point() and not targets.is_complex():
            labels = targets.reshape(-1).long()
            if labels.shape[0] != n or targets.ndim > 1 and targets.shape[1:] != (1,) * (targets.ndim - 1):
                raise DiagnosticsError(
                    f"class-index targets must have shape ({n},), got {tuple(targets.shape)}"
                )
            if m < 2:
                raise DiagnosticsError("class-index targets need a model with at least 2 outputs")
            if labels.min() < 0 or labels.max() >= m:
                raise DiagnosticsError(
                    f"class indices must lie in [0, {m - 1}] for a model with {m} outputs; "
                    f"got values in [{int(labels.min())}, {int(labels.max())}]"
                )
            Y = F.one_hot(labels, m).to(torch.float64)
        else:
            if not torch.isfinite(targets).all():
                raise DiagnosticsError("targets contain NaN or inf values")
            Y = targets.detach().to(torch.float64)
            if Y.shape == (n,) and m == 1:
                Y = Y.reshape(n, 1)
            if Y.shape != (n, m):
                raise DiagnosticsError(
                    f"targets of shape {tuple(targets.shape)} do not fit the model's outputs, which are "
                    f"({n}, {m}) after flattening; pass class indices of shape ({n},) or a ({n}, {m}) array"
                )
            if loss == "ce":
                is_one_hot = ((Y == 0) | (Y == 1)).all() and (Y.sum(1) == 1).all()
                if not is_one_hot:
                    raise DiagnosticsError("loss='ce' needs class indices or one-hot targets")
                labels = Y.argmax(1)
        Q = Y - 1.0 / m if loss == "ce" else Y
        if target is not None:
            Q = _alignment_target(target, n, m)
        if not Q.abs().sum() > 0:
            raise DiagnosticsError("the alignment target Q is zero: membership in Col(J) is trivial")
        return cls(Y, Q, labels, loss)

    def loss_value(self, f: torch.Tensor) -> float:
        """``L = (1/2n)‖f − Y‖²`` (mse) or mean cross-entropy of logits ``f`` (ce)."""
        f = f.to(torch.float64)
        if self.loss == "mse":
            return float(((f - self.Y) ** 2).sum() / (2 * f.shape[0]))
        return float(F.cross_entropy(f, self.labels.to(f.device)))

    def loss_gradient(self, f: torch.Tensor) -> torch.Tensor:
        """``g = ∂L/∂f_X`` as an ``(n, m)`` matrix, so that ``∇_θ L = Jᵀ g`` (THEORY §1)."""
        f = f.to(torch.float64)
        n = f.shape[0]
        if self.loss == "mse":
            return (f - self.Y.to(f.device)) / n
        return (torch.softmax(f, 1) - self.Y.to(f.device)) / n

    def scaled_target_losses(self, scales: Sequence[float] | np.ndarray) -> np.ndarray:
        """``L(cQ)`` for each scale ``c`` (float64): the loss a model whose outputs were ``cQ`` would have.

        For cross-entropy ``Q`` is the centred one-hot target, so ``L(cQ₀)`` falls from ``log m`` at
        ``c = 0`` towards 0; for the squared loss it is ``(1/2n)‖cQ − Y‖²``.
        """
        return np.array([self.loss_value(c * self.Q) for c in scales], dtype=np.float64)


def _alignment_target(target: object, n: int, m: int) -> torch.Tensor:
    """Return the user's target as an ``(n, m)`` float64 matrix; any other shape is refused (``(n,)`` if ``m = 1``)."""
    try:
        Q = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
    except (TypeError, ValueError) as exc:
        raise DiagnosticsError(f"target must be a tensor or array of shape ({n}, {m}), got {type(target).__name__}"
                               ) from exc
    shape = tuple(Q.shape)
    if shape == (n,) and m == 1:
        Q = Q.reshape(n, 1)
    if tuple(Q.shape) != (n, m):
        hint = ""
        if shape == (m, n):
            hint = " It looks transposed: pass target.T."
        elif Q.ndim >= 1 and shape[0] != n:
            hint = (f" Its {shape[0]} rows do not match the {n} probe samples: the target must be that of the "
                    "probe subset, so pass probe_size=None (all the data) with a target of every sample.")
        raise DiagnosticsError(
            f"target= must have shape ({n}, {m}): one row per probe sample, one column per output (flattened "
            f"in C order); got {shape}.{hint}"
        )
    Q = Q.detach().to(torch.float64)
    if not torch.isfinite(Q).all():
        raise DiagnosticsError("target contains NaN or inf values")
    return Q


def best_scale(target_losses: np.ndarray, penalties: np.ndarray) -> int:
    """Index of the scale that minimises ``L(cQ) + penalty(c)``: the best bound over a grid of scales.

    Used by the cross-entropy bound (I4, ``penalty = ‖∇L‖·‖J⁺(f_X − cQ)‖``) and by the §6 guarantee
    (``penalty = (‖ω_τ‖² + c²‖ν‖²)/(2(t − τ))``); ties go to the first (smallest) scale.
    """
    totals = np.asarray(target_losses, dtype=np.float64) + np.asarray(penalties, dtype=np.float64)
    return int(np.argmin(totals))

