"""Every benchmarked way of computing the empirical NTK Gram ``K = J Jᵀ`` (sample-major rows).

Each method takes ``(model, x)`` and returns the ``(nm, nm)`` Gram, or raises
:class:`NotApplicable` with the reason (a peer that is not installed or does not cover a layer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch.func import functional_call, jacrev, vmap

from diagnostics import ntk_gram, reference_gram


class NotApplicable(Exception):
    """The method cannot run on this model or machine; the message says why."""


def ours(strategy: str) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """``diagnostics.ntk_gram`` with one strategy."""
    return lambda model, x: ntk_gram(model, x, strategy=strategy)


def torch_func_recipe(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The PyTorch tutorial's empirical NTK: ``vmap(jacrev)`` per sample, einsum per parameter."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def single(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(single), (None, 0))(params, x)
    n, m = x.shape[0], next(iter(jac.values())).shape[1]
    blocks = [j.flatten(2) for j in jac.values()]
    return torch.stack([torch.einsum("Naf,Mbf->NaMb", j, j) for j in blocks]).sum(0).reshape(n * m, n * m)


def autograd_loop(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One ``torch.autograd.grad`` per output row, then ``J Jᵀ`` (``diagnostics.reference``)."""
    return reference_gram(model, x)


def nngeometry_gram(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """nngeometry's ``GramMatrix`` (``FMatDense``), one batch; its ``(m, n, m, n)`` layout reordered."""
    try:
        from nngeometry import GramMatrix
    except ImportError as exc:
        raise NotApplicable(f"not installed ({exc})") from exc
    from torch.utils.data import DataLoader, TensorDataset

    n = x.shape[0]
    loader = DataLoader(TensorDataset(x.detach().clone(), torch.zeros(n)), batch_size=n)
    try:
        G = GramMatrix(model, loader, function=lambda *d: model(d[0])).to_torch()
    except Exception as exc:  # unsupported layer types
        raise NotApplicable(f"{type(exc).__name__}: {exc}") from exc
    m = G.shape[0]
    return G.permute(1, 0, 3, 2).reshape(n * m, n * m)


def curvlinops_gram(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """curvlinops' transposed-Jacobian operator applied to the identity (``Jᵀ``), then ``J Jᵀ``."""
    try:
        from curvlinops import TransposedJacobianLinearOperator
    except ImportError as exc:
        raise NotApplicable(f"not installed ({exc})") from exc
    n = x.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    JT = TransposedJacobianLinearOperator(model, params, [(x, torch.zeros(n))], check_deterministic=False)
    rows = JT.shape[1]
    Jt = JT @ torch.eye(rows, dtype=x.dtype, device=x.device)
    return Jt.T @ Jt


def backpack_gram(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BackPACK ``BatchGrad`` per-sample gradients, one backward pass per output, then ``J Jᵀ``."""
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad
    except ImportError as exc:
        raise NotApplicable(f"not installed ({exc})") from exc
    net = extend(copy.deepcopy(model))
    params = [p for p in net.parameters() if p.requires_grad]
    out = net(x)
    n, m = out.shape
    rows = []
    try:
        for c in range(m):
            keep = c < m - 1
            with backpack(BatchGrad(), retain_graph=keep):
                out[:, c].sum().backward(retain_graph=keep)
            rows.append(torch.cat([p.grad_batch.reshape(n, -1) for p in params], dim=1))
    except Exception as exc:  # unsupported layer types
        raise NotApplicable(f"{type(exc).__name__}: {exc}") from exc
    J = torch.stack(rows, dim=1).reshape(n * m, -1)
    return J @ J.T


#: name → (function, applies at large sizes). The autograd loop is for small sizes only.
METHODS: dict[str, tuple[Callable, bool]] = {
    "ours: auto": (ours("auto"), True),
    "ours: structured": (ours("structured"), True),
    "ours: jacrev": (ours("jacrev"), True),
    "ours: vjp": (ours("vjp"), True),
    "torch.func recipe": (torch_func_recipe, True),
    "autograd loop": (autograd_loop, False),
    "nngeometry": (nngeometry_gram, True),
    "curvlinops": (curvlinops_gram, True),
    "BackPACK": (backpack_gram, True),
}
