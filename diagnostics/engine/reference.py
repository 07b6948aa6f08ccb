"""A slow, obviously correct reference: one autograd call per output row.

Used by the tests to hold every fast strategy to account, and by users who doubt a number::

    J_ref = reference_jacobian(model, X, dtype=torch.float64)
    torch.testing.assert_close(jacobian(model, X, dtype=torch.float64), J_ref)

It shares only input handling and the measurement mode with the engine, none of its maths.
"""

from __future__ import annotations

import torch
from torch import nn

from . import inputs as _inputs
from .functional import FunctionalModel, ParamSelector

__all__ = ["reference_jacobian", "reference_gram"]


def reference_jacobian(
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    rows: list[int] | None = None,
) -> torch.Tensor:
    """``J`` of shape ``(n·m, d)`` by ``torch.autograd.grad`` on each output ``f_c(x_i)`` in turn.

    The forward pass is over the whole batch, so in ``mode="batch"`` this is the exact Jacobian
    of ``f_X(θ)`` including the interaction of samples through batch statistics. ``rows`` computes
    only those rows (``(len(rows), d)``), in that order.
    """
    fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)
    x, _ = fm.prepare(inputs)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in fm.params.items()}
    with fm.measuring(), torch.enable_grad():
        out = fm(leaves, x).reshape(-1)
        found = []
        for k in range(out.numel()) if rows is None else rows:
            grads = torch.autograd.grad(out[k], list(leaves.values()), retain_graph=True, allow_unused=True)
            found.append(
                torch.cat([
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, leaves.values(), strict=True)
                ])
            )
    return torch.stack(found)


def reference_gram(model: nn.Module, inputs: object, **kwargs) -> torch.Tensor:
    """``K = J Jᵀ`` from :func:`reference_jacobian`."""
    J = reference_jacobian(model, inputs, **kwargs)
    return J @ J.T
