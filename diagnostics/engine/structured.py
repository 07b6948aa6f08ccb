"""The structured path: capture layer inputs and output cotangents, check them, build ``J`` and ``K``.

For every layer with a rule (:mod:`diagnostics.engine.rules`) whose parameters are measured and used
by that layer alone, one forward pass records the layer's input and output, and ``m`` backward passes
give the cotangents ``∂f_c/∂z`` of all samples at once. A guard then compares, per layer, the
gradient of ``⟨v, f⟩`` for a random ``v`` built from the captured tensors with autograd's: a layer
that does not match (samples that interact, an output used elsewhere, a module whose forward is
not its type's) is left to the generic path, so what the structured path returns is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import precision
from .functional import FunctionalModel
from .gram import GramTiles
from .rules import Layer, rule_for

if TYPE_CHECKING:
    from .measurement import Measurement

__all__ = ["StructuredLayers", "eligible_layers"]


class StructuredLayers:
    """The layers the structured path covers in one measurement, with their captured tensors.

    Attributes
    ----------
    layers
        The covered layers by the name of their first parameter, in model order.
    covered
        The parameter names whose columns the structured path computes.
    """

    def __init__(self, job: Measurement, names: tuple[str, ...]) -> None:
        self.job = job
        self.layers = eligible_layers(job.fm, names)
        self.covered: set[str] = set()
        if self.layers:
            self._capture()

    def _capture(self) -> None:
        job, fm = self.job, self.job.fm
        params = {k: v.detach().requires_grad_(True) for k, v in fm.params.items()}
        handles = [layer.module.register_forward_hook(_hook(layer)) for layer in self.layers.values()]
        try:
            with torch.enable_grad():
                out = fm(params, job.x)
        finally:
            for h in handles:
                h.remove()
        for layer in self.layers.values():
            layer.check_capture(job.n)
        live = [layer for layer in self.layers.values() if layer.coverable]
        self.layers = {}
        if not live:
            return
        zs = [layer.outputs for layer in live]
        with torch.enable_grad():
            # one backward pass per output: ∂f_c/∂z for every covered z, all samples at once
            per_output = [
                torch.autograd.grad(out[:, c].sum(), zs, retain_graph=True, allow_unused=True)
                for c in range(job.m)
            ]
            # the guard: ⟨v, f⟩ differentiated by autograd must equal Σ_ic v_ic ∂f_ic/∂θ built from A, G
            generator = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
            wanted = [params[k] for layer in live for k in layer.names]
            reference = torch.autograd.grad((out * v).sum(), wanted, allow_unused=True)
        reference = dict(zip([k for layer in live for k in layer.names], reference, strict=True))
        tol = precision.structured_guard_rtol(fm.dtype)
        for i, layer in enumerate(live):
            layer.cotangents = torch.stack(
                [g[i] if g[i] is not None else torch.zeros_like(layer.outputs) for g in per_output], dim=1
            )
            layer.outputs = None
            if _matches_autograd(layer, v, reference, tol):
                self.layers[layer.weight or layer.bias] = layer
                self.covered.update(layer.names)
            else:
                layer.refuse("its derivatives from inputs and cotangents differ from autograd's")

    def jacobian_blocks(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-parameter ``(nm, *shape)`` Jacobian blocks of the covered layers that hold one of ``names``."""
        blocks = {}
        wanted = set(names)
        for layer in self.layers.values():
            if wanted.isdisjoint(layer.names):
                continue
            w, b = layer.rule.grads(layer, layer.cotangents, per_sample=True)
            if layer.weight is not None:
                blocks[layer.weight] = w.reshape(self.job.rows, *self.job.fm.shapes[layer.weight])
            if layer.bias is not None:
                blocks[layer.bias] = b.reshape(self.job.rows, -1)
        return {k: v for k, v in blocks.items() if k in wanted}

    def contractions(self, vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``J_p v_p`` (``(nm,)``) for every covered parameter ``p`` from inputs and cotangents (no ``J_p`` formed)."""
        out = {}
        for layer in self.layers.values():
            out.update({k: v.reshape(-1) for k, v in layer.rule.contract(layer, vectors).items()})
        return out

    def add_gram(self, K: GramTiles) -> None:
        """``K += Σ_l K_l`` over the covered layers, each by its cheaper exact form.

        Per-sample blocks of consecutive layers are concatenated (within the memory budget) so
        that one wide product replaces several narrow ones: same FLOPs, better matmul efficiency.
        """
        job = self.job
        pending: list[torch.Tensor] = []
        width = 0
        for layer in self.layers.values():
            costs = layer.rule.gram_costs(layer, job.m)
            ps_bytes = job.rows * sum(job.fm.params[k].numel() for k in layer.names) * job.itemsize
            if costs["positions"] < costs["per-sample"] or ps_bytes > job.budget:
                layer.rule.add_positions_gram(layer, K)
                continue
            if pending and 2 * (width * job.rows * job.itemsize + ps_bytes) > job.budget:
                _add_concatenated(K, pending)
                pending, width = [], 0
            grads = layer.rule.grads(layer, layer.cotangents, per_sample=True)
            blocks = [b.reshape(job.rows, -1) for b in grads if b is not None]
            pending += blocks
            width += sum(b.shape[1] for b in blocks)
        if pending:
            _add_concatenated(K, pending)


def eligible_layers(fm: FunctionalModel, names: tuple[str, ...]) -> dict[str, Layer]:
    """Layers with a rule whose measured parameters belong to that layer alone (no shared or tied weights)."""
    uses: dict[int, int] = {}
    for _, mod in fm.module.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    wanted = set(names)
    layers = {}
    for mod_name, mod in fm.module.named_modules():
        rule = rule_for(mod)
        if rule is None:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        own = {
            kind: f"{prefix}{kind}"
            for kind in ("weight", "bias")
            if getattr(mod, kind, None) is not None and f"{prefix}{kind}" in wanted
        }
        if own and all(uses[id(getattr(mod, kind))] == 1 for kind in own):
            layers[mod_name] = Layer(mod, rule, own.get("weight"), own.get("bias"))
    return layers


def _hook(layer: Layer) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        layer.record(args, output)
        return output.clone()  # later in-place ops must not alter the captured output

    return hook


def _add_concatenated(K: GramTiles, blocks: list[torch.Tensor]) -> None:
    J = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    K.add_products(J, J)


def _matches_autograd(layer: Layer, v: torch.Tensor, reference: dict, tol: float) -> bool:
    """Check ``Jᵀv = Σ_ic v_ic ∂f_ic/∂θ`` built from ``A`` and ``G`` against autograd's gradient.

    Because the cotangent ``Σ_c v_ic G_ic`` of sample ``i`` is built from the per-output
    cotangents, a model whose samples interact (``∂f_i/∂z_j ≠ 0``) fails the check too.
    """
    G = layer.cotangents
    gz = torch.einsum("nc...,nc->n...", G, v.to(G.dtype))[:, None]
    w, b = layer.rule.grads(layer, gz, per_sample=False)
    for name, ours in ((layer.weight, w), (layer.bias, b)):
        if name is None:
            continue
        ref = reference[name]
        ref = torch.zeros_like(ours) if ref is None else ref.reshape(ours.shape)
        scale = max(ref.abs().max().item(), ours.abs().max().item(), 1e-30)
        if (ours - ref).abs().max().item() > tol * scale:
            return False
    return True
