"""The tracker's reference state and the checks that let a history resume (:mod:`.tracker`).

The reference holds what movements are measured against: ``K_0``, ``θ_0``, the activation Grams of
the representation modules and, with a cheap tier, the pullback ``J_0ᵀQ`` of the target. It is written atomically
next to the history (``<path>.ref.pt``) and read back on resume, after the settings and the probe's
fingerprint were checked to be those of the history.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from ..engine import inputs as _inputs
from ..errors import DiagnosticsError
from ..store import write_torch

__all__ = ["check_compatible", "check_horizon", "fingerprint", "kernel_target_alignment", "load_reference",
           "relative_distance", "save_reference"]


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return ``‖a − b‖ / ‖b‖`` (Frobenius for matrices) in float64; ``nan`` when ``b = 0``."""
    a64, b64 = a.to(torch.float64), b.to(a.device, torch.float64)
    denom = float(b64.norm())
    return float((a64 - b64).norm()) / denom if denom > 0 else math.nan


def kernel_target_alignment(K: torch.Tensor, q: torch.Tensor) -> float:
    """Return ``QᵀKQ / (‖K‖_F ‖Q‖²)`` in float64 (Cristianini et al.), ``Q`` stacked sample-major as the rows of ``K``.

    1 when ``K`` is a multiple of ``QQᵀ``; its rise early in training is the kernel aligning to the target.
    ``0`` for ``K = 0``.
    """
    K64 = K.to(torch.float64)
    q64 = q.detach().reshape(-1).to(device=K64.device, dtype=torch.float64)
    norm = float(K64.norm())
    return float(q64 @ K64 @ q64) / (norm * float(q64 @ q64)) if norm > 0 else 0.0


def fingerprint(x: _inputs.Inputs, y: torch.Tensor, target: object) -> str:
    """SHA-256 of the probe inputs, targets and alignment target, to refuse resuming on other data."""
    digest = hashlib.sha256()
    tensors = _inputs.leaves(x) + [y] + ([torch.as_tensor(target)] if target is not None else [])
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_compatible(old: dict, new: dict, path: object) -> None:
    """Refuse to resume a history whose header ``old`` was recorded with other settings than ``new``."""
    keys = ("loss", "mode", "dtype", "params", "n_params", "representation", "probe_sha256")
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in changed if k != "params")
        raise DiagnosticsError(
            f"cannot resume {path}: it was recorded with different settings ({', '.join(changed)}"
            f"{'; ' + detail if detail else ''}); pass resume=False or another path"
        )


def save_reference(path: Path, reference: dict) -> None:
    """Write the reference atomically: a temporary file, fsynced, then renamed over ``path``."""
    write_torch(path, {k: _to_cpu(v) for k, v in reference.items() if v is not None})


def load_reference(path: Path, device: torch.device) -> dict:
    """Read a reference written by :func:`save_reference` onto ``device`` (``pullback0`` is ``None`` if absent)."""
    raw = torch.load(path, map_location=device, weights_only=True)
    return {"K0": raw["K0"], "theta0": raw["theta0"], "grams": dict(raw["grams"]), "pullback0": raw.get("pullback0")}


def _to_cpu(value: torch.Tensor | dict) -> torch.Tensor | dict:
    return {k: v.cpu() for k, v in value.items()} if isinstance(value, dict) else value.cpu()


def check_horizon(horizon: object) -> tuple[float | torch.optim.Optimizer, int] | None:
    """Validate ``(learning rate or optimiser, total steps)``."""
    if horizon is None:
        return None
    try:
        lr, steps = horizon
    except (TypeError, ValueError) as exc:
        raise DiagnosticsError(
            f"horizon must be a pair (learning rate or optimiser, total steps), got {horizon!r}"
        ) from exc
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiagnosticsError(f"the horizon's total steps must be a positive integer, got {steps!r}")
    numeric = isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    if not (numeric or isinstance(lr, torch.optim.Optimizer)):
        raise DiagnosticsError(f"the horizon's learning rate must be a positive number or an optimiser, got {lr!r}")
    return lr, steps
