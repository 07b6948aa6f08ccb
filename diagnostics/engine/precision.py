"""Precision: dtype names and every default tolerance of the toolkit, with the words reports print for it.

The rules are those of ``theory/alignment.md#numerics``:

- the **rank tolerance** ``rank_tol`` on the eigenvalues of ``K = J Jᵀ``: by default
  ``λ_max · nm · eps(dtype of J)`` (numpy's ``matrix_rank`` rule applied to ``K``);
- the **residual tolerance** ``residual_tol`` under which the alignment residual
  ``‖(I − P)Q‖/‖Q‖`` counts as zero: by default :data:`RESIDUAL_TOL` ``= sqrt(eps(float64))`` whatever the
  dtype of the measurement (it belongs to the question; the dtype decides how well a measurement answers it,
  ``theory/alignment.md#resolution``);
- the relative tolerances of the exact identities that the checks compare (the structured engine's
  guard, ``f = J R`` for the common model structure, the (I2) decomposition on a trajectory);
- TF32 is off while measuring (:func:`tf32_off`): float32 means float32 on a GPU too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

__all__ = [
    "RESIDUAL_TOL",
    "all_finite",
    "check_rank_tol",
    "cms_identity_rtol",
    "decomposition_rtol",
    "default_rank_tol",
    "dtype_name",
    "eps",
    "forwards_agree",
    "rank_rule",
    "structured_guard_rtol",
    "tf32_off",
    "verdict_dtype",
]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``."""
    return str(dtype).replace("torch.", "")


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype."""
    return float(torch.finfo(dtype).eps)


def default_rank_tol(lam_max: float, size: int, dtype: torch.dtype) -> float:
    """``λ_max · nm · eps(dtype)``: the default rank tolerance on the eigenvalues of ``K`` (side ``nm``)."""
    return max(lam_max, 0.0) * size * eps(dtype)


def check_rank_tol(rank_tol: float) -> float:
    """Return a user's rank tolerance as a float, refusing negative or non-finite values."""
    if rank_tol < 0 or not np.isfinite(rank_tol):
        raise ValueError(f"rank_tol must be a finite non-negative number, got {rank_tol}")
    return float(rank_tol)


def rank_rule(rank_tol: float | None, lam_max: float, size: int, dtype: torch.dtype) -> tuple[float, str]:
    """Return the rank tolerance in use and the rule that produced it, in words.

    Parameters
    ----------
    rank_tol
        The user's tolerance, or ``None`` for the default :func:`default_rank_tol`.
    lam_max
        ``λ_max(K)``.
    size
        ``nm``, the side of ``K``.
    dtype
        Dtype of the Jacobian ``K`` came from.
    """
    if rank_tol is None:
        return default_rank_tol(lam_max, size, dtype), f"λ_max · nm · eps({dtype_name(dtype)})"
    return check_rank_tol(rank_tol), "user-supplied"


def verdict_dtype(model: object) -> torch.dtype | None:
    """Return the compute dtype of the checks when the user asks for none.

    float64 on the CPU, where it costs about 1–2× float32 (``docs/benchmarks.md``) and gives the answer
    double precision gives; on an accelerator the model's dtype, at least float32 (half-precision models
    are never measured in half precision). ``None`` for something that is not a model with parameters
    (the engine then refuses it with its own message).
    """
    first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if first is None or not first.is_floating_point():
        return None
    if first.device.type == "cpu":
        return torch.float64
    return first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32


#: ``sqrt(eps(float64))``: the residual below which ``Q ∈ Col J`` (and ``f_X ∈ Col J``) counts as holding, in every
#: dtype: one question gets one answer, and a measurement whose precision cannot resolve it says *not established*
#: (``theory/alignment.md#alignment-residual``).
RESIDUAL_TOL = math.sqrt(float(np.finfo(np.float64).eps))


def structured_guard_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance of the structured engine's random-cotangent check against autograd."""
    return 1e-9 if dtype == torch.float64 else 1e-4


def cms_identity_rtol(dtype: torch.dtype) -> float:
    """``max(1000 · eps, 1e-10)``: relative error under which ``f = J R`` counts as exact."""
    return max(1000 * eps(dtype), 1e-10)


def decomposition_rtol(dtype: torch.dtype) -> float:
    """``max(1e-8, 1000 · eps)``: relative tolerance of the (I2) decomposition measured in ``dtype``."""
    return max(1e-8, 1000 * eps(dtype))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of every (floating) tensor is finite, at the cost of one sum per tensor and one check.

    A sum is finite unless an entry is not or the sum overflows; a sum that is not is checked entry by entry.
    """
    if not tensors:
        return True
    sums = [t.sum() for t in tensors]
    if bool(torch.isfinite(torch.stack([s.to(sums[0]) for s in sums])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def forwards_agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``max|a − b| ≤ sqrt(eps) · max|b|``: two forwards equal up to the reduction order of the arithmetic."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) <= math.sqrt(eps(b.dtype)) * max(scale, 1e-30)


@contextlib.contextmanager
def tf32_off() -> Iterator[tuple[bool, bool]]:
    """Turn TF32 off for CUDA matmuls and cuDNN while inside; restore every switch exactly on exit.

    TF32 rounds float32 operands of matrix products and convolutions to a 10-bit mantissa (relative
    error about ``5e-4``), which would blur ranks and residuals that float32 resolves to ``~1e-7``.
    PyTorch 2.9 and later hold the switches as ``fp32_precision`` strings per operation (``"ieee"``,
    ``"tf32"``, or ``"none"``: inherit from cuDNN/CUDA, then from the generic setting); they are set to
    ``"ieee"`` and put back as found, and the legacy ``allow_tf32`` flags, which raise once the two
    APIs are mixed, are never read. Older versions have the legacy flags only.

    Yields
    ------
    tuple[bool, bool]
        Whether the user's switches allowed TF32 outside, for ``(matmul, cudnn)``.
    """
    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):  # torch < 2.9
        outside = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)
        try:
            backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
            yield outside
        finally:
            backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = outside
        return
    ops = (backends.cuda.matmul, backends.cudnn.conv, backends.cudnn.rnn)
    saved = [op.fp32_precision for op in ops]
    inherited = [backends.cudnn.fp32_precision, backends.fp32_precision]

    def allows(value: str) -> bool:
        return next((v for v in (value, *inherited) if v != "none"), "ieee") == "tf32"

    outside = (allows(saved[0]), allows(saved[1]) or allows(saved[2]))
    try:
        for op in ops:
            op.fp32_precision = "ieee"
        yield outside
    finally:
        for op, value in zip(ops, saved, strict=True):
            op.fp32_precision = value
