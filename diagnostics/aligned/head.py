"""The affine output layer ``f = W h + b`` that aligned training trains as ``ω`` (theory/application.md)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..engine import inputs as _inputs
from ..engine.functional import FunctionalModel
from ..errors import DiagnosticsError, UnsupportedModelError

__all__ = ["find_head"]


def find_head(model: nn.Module, probe: _inputs.Inputs, head: str | None, need_features: bool) -> str:
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
            f"the model's output is not the output of {name!r}: aligned training needs an affine output layer "
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
