"""Per-layer rules of the structured engine: exact derivatives from layer inputs and output cotangents.

A covered layer is written as ``z_p = W a_p + b`` over positions ``p`` (one position for a linear
layer on ``(n, d_in)`` inputs, tokens for a linear layer on sequences, output pixels of a convolution
with the unfolded patches as ``a_p``), or as ``z = γ ⊙ x̂ + β`` (batch norm in eval mode). With ``A``
the patches ``(n, P, k)`` and ``G`` the output cotangents ``(n, m, P, o)``::

    ∂f_c(x_i)/∂W = Σ_p G_icp ⊗ A_ip,
    K_l[(i,c), (j,c')] = Σ_{p,q} (A_ip · A_jq + 1) (G_icp · G_jc'q)      (theory/alignment.md#the-gram-without-j).

The Gram block is formed either from the per-sample gradients (``"per-sample"``: about ``(nm)²ok``
FLOPs using the symmetry of ``K``) or from the ``P²`` pairs of positions (``"positions"``: about
``P²(nm)²o``), whichever is cheaper for the layer's shapes (:meth:`LayerRule.gram_costs`).
:meth:`LayerRule.contract` gives ``J_l θ_l`` from the same captured tensors, without forming ``J_l``.

One :class:`LayerRule` per layer type, chosen through the map :data:`RULES` by the module's exact
type (:func:`rule_for`); a subclass of a linear or convolution layer that multiplies its output by a
constant it declares (``multiplier``, as the NTK and mean-field layers do) by :class:`ScaledRule`.
Adding a layer type is one new rule here and one case in the tests that hold the engine to the
autograd reference. A captured :class:`Layer` says explicitly whether the measurement could cover it
(``coverable``, with the ``reason`` when not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gram import GramTiles

__all__ = ["RULES", "SCALED_RULES", "BatchNormRule", "Conv2dRule", "Layer", "LayerRule", "LinearRule", "ScaledRule",
           "rule_for"]

Grads = tuple[torch.Tensor | None, torch.Tensor | None]


@dataclass
class Layer:
    """One layer the structured engine may cover, and what a forward pass captured of it.

    Attributes
    ----------
    module, rule
        The layer and the rule that differentiates it.
    weight, bias
        Names of its measured parameters (``None`` when not measured or absent).
    inputs, outputs
        The layer's input (detached) and output from the capture forward.
    version
        ``inputs._version`` at capture: a later in-place change of the input disqualifies the layer.
    coverable, reason
        Whether the captured forward lets the rule cover the layer exactly, and why not.
    cotangents
        ``∂f_c/∂z`` for every output ``c``, ``(n, m, *output shape)``.
    unfolded
        Convolution patches ``(n, P, k)``, computed once.
    """

    module: nn.Module
    rule: LayerRule
    weight: str | None
    bias: str | None
    inputs: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    version: int = 0
    called: bool = False
    coverable: bool = True
    reason: str = ""
    cotangents: torch.Tensor | None = None
    unfolded: torch.Tensor | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The measured parameter names of the layer."""
        return tuple(k for k in (self.weight, self.bias) if k is not None)

    def refuse(self, reason: str) -> None:
        """Mark the layer as not coverable (its columns then go to the generic path)."""
        self.coverable = False
        self.reason = self.reason or reason

    def record(self, args: tuple, output: torch.Tensor) -> None:
        """Capture one forward call of the layer (a second call makes it not coverable)."""
        if self.called:
            self.refuse("called more than once per forward")
        self.called = True
        if not args or not isinstance(args[0], torch.Tensor):
            self.refuse("input passed by keyword or not a tensor")
            return
        self.inputs = args[0].detach()
        self.version = self.inputs._version
        self.outputs = output

    def check_capture(self, n: int) -> None:
        """After the forward: the input is the batch's and was not changed in place; the rule agrees."""
        if not self.called:
            self.refuse("not called by the forward")
        elif self.inputs is not None and self.inputs.shape[0] != n:
            self.refuse("input not batched along dimension 0")
        elif self.inputs is not None and self.inputs._version != self.version:
            self.refuse("input changed in place after the layer ran")
        elif self.coverable and not self.rule.ready(self.module):
            self.refuse(self.rule.not_ready)


class LayerRule:
    """How the structured engine differentiates one layer type.

    Subclasses give the derivatives of the layer's output with respect to its parameters from the
    captured input and the output cotangents (:meth:`grads`), their FLOP costs (:meth:`gram_costs`)
    and, where cheaper, the Gram block from pairs of positions (:meth:`add_positions_gram`).
    """

    #: Why :meth:`ready` refused the layer, in words.
    not_ready = ""

    def accepts(self, module: nn.Module) -> bool:
        """Whether the rule covers this module's configuration at all (checked before the forward)."""
        return True

    def ready(self, module: nn.Module) -> bool:
        """Whether the module, as it is measured, is covered (checked after the capture forward)."""
        return True

    def grads(self, layer: Layer, G: torch.Tensor, *, per_sample: bool) -> Grads:
        """Weight and bias derivatives from the captured input and cotangents ``G`` ``(n, r, *out)``.

        ``per_sample``: ``(n, r, *)`` blocks, row ``(i, c)`` the derivative of output ``c`` of sample
        ``i``; otherwise their sums over samples and ``r`` (the gradient of ``⟨v, f⟩`` for the guard).
        """
        raise NotImplementedError

    def gram_costs(self, layer: Layer, m: int, n: int | None = None) -> dict[str, float]:
        """FLOPs of the exact forms of the layer's Gram block (``"per-sample"``, ``"positions"``) on ``n`` samples.

        ``n`` defaults to the captured batch's; another value predicts the cost on a larger batch.
        """
        raise NotImplementedError

    def add_positions_gram(self, layer: Layer, K: GramTiles) -> None:
        """``K += K_l`` from pairs of positions (only called when that form is the cheaper one)."""
        raise NotImplementedError

    def contract(self, layer: Layer, vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``J_p v_p`` for each measured parameter ``p`` of the layer, ``(n, m)`` each, without forming ``J_p``."""
        raise NotImplementedError


class _AffineRule(LayerRule):
    """``z_p = W a_p + b`` over positions ``p``: the patches ``A`` are all that differs by layer type."""

    def patches(self, layer: Layer, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches ``A`` ``(n, P, k)`` and cotangents ``G`` ``(n, r, P, o)`` from ``G`` ``(n, r, *out)``."""
        raise NotImplementedError

    def grads(self, layer: Layer, G: torch.Tensor, *, per_sample: bool) -> Grads:
        """See :meth:`LayerRule.grads`: ``∂f/∂W = Σ_p G_p ⊗ A_p``, ``∂f/∂b = Σ_p G_p``."""
        A, Gp = self.patches(layer, G)
        if layer.weight is None:
            w = None
        elif per_sample:
            w = torch.einsum("ncpo,npk->ncok", Gp, A)
        else:  # Σ_{i,c,p} G_icp ⊗ A_ip = Σ_{i,p} (Σ_c G_icp) ⊗ A_ip: one product
            w = Gp.sum(1).reshape(-1, Gp.shape[-1]).T @ A.reshape(-1, A.shape[-1])
        b = Gp.sum(2) if layer.bias is not None else None
        b = b if b is None or per_sample else b.sum((0, 1))
        shape = layer.module.weight.shape
        return (w.reshape(*w.shape[: w.ndim - 2], *shape) if w is not None else None), b

    def gram_costs(self, layer: Layer, m: int, n: int | None = None) -> dict[str, float]:
        """FLOPs of the two exact forms, using the symmetry of ``K`` (``n``: samples, default the captured batch's).

        ``per-sample``: form ``∂f_c(x_i)/∂θ_l`` (``2nmPo(k + 1)``) and multiply (``(nm)²o(k + 1)``, half of
        ``2(nm)²o(k + 1)``). ``positions``: with one position (``P = 1``) the bias joins the weight and the
        block is ``((A Aᵀ + 1) ⊗ 1) ⊙ (G Gᵀ)``: a Gram of inputs (``2n²k``), half a Gram of cotangents
        (``(nm)²o``) and half a fused multiply-add (``(nm)²``), once. With ``P > 1``: ``P²`` ordered pairs
        of positions, each that much, plus the bias from the cotangents summed over positions (``(nm)²o``).
        """
        n = layer.inputs.shape[0] if n is None else n
        rows = n * m
        A, _ = self.patches(layer, layer.cotangents)
        P, k = A.shape[1], A.shape[2]
        o = layer.module.weight.shape[0]
        kw = k if layer.weight is not None else 0
        kb = 1 if layer.bias is not None else 0
        per_sample = 2.0 * rows * P * o * (kw + kb) + rows**2 * o * (kw + kb)
        pair = 2.0 * n * n * k + rows**2 * o + rows**2
        if not kw:
            positions = float(rows**2 * o)
        elif P == 1:
            positions = pair
        else:
            positions = P * P * pair + kb * rows**2 * o
        return {"per-sample": per_sample, "positions": positions}

    def add_positions_gram(self, layer: Layer, K: GramTiles) -> None:
        """``K += Σ_{p,q} ((A_p A_qᵀ) ⊗ 1_{m×m}) ⊙ (G_p G_qᵀ) + (Σ_p G_p)(Σ_q G_q)ᵀ`` (bias last)."""
        A, G = self.patches(layer, layer.cotangents)
        n, m, P = G.shape[0], G.shape[1], G.shape[2]
        rows = n * m
        if P == 1:  # one position: the bias joins the weight, K_l = ((A Aᵀ + 1) ⊗ 1) ⊙ (G Gᵀ)
            G1 = G.reshape(rows, -1)
            if layer.weight is None:
                K.add_products(G1, G1)
                return
            A1 = A[:, 0]
            coef = A1 @ A1.T
            if layer.bias is not None:
                coef += 1
            K.add_weighted_products(G1, G1, coef)
            return
        if layer.weight is not None:
            Gp = [G[:, :, p].reshape(rows, -1) for p in range(P)]
            for p in range(P):
                for q in range(P):
                    K.add_weighted_products(Gp[p], Gp[q], A[:, p] @ A[:, q].T)
        if layer.bias is not None:
            gb = G.sum(2).reshape(rows, -1)
            K.add_products(gb, gb)


    def contract(self, layer: Layer, vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """See :meth:`LayerRule.contract`: ``Σ_p G_icp · (V a_ip)`` for the weight, ``Σ_p G_icp · v`` for the bias."""
        A, G = self.patches(layer, layer.cotangents)
        out = {}
        if layer.weight is not None:
            V = vectors[layer.weight].reshape(G.shape[-1], -1).to(A.dtype)
            out[layer.weight] = torch.einsum("ncpo,npo->nc", G, A @ V.T)
        if layer.bias is not None:
            out[layer.bias] = torch.einsum("ncpo,o->nc", G, vectors[layer.bias].to(G.dtype))
        return out


class LinearRule(_AffineRule):
    """``nn.Linear`` on ``(n, d_in)`` inputs (one position) or sequences ``(n, T, d_in)`` (``T`` positions)."""

    def patches(self, layer: Layer, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the input rows as the patches (one per position)."""
        A = layer.inputs
        n, r = G.shape[:2]
        return A.reshape(n, -1, A.shape[-1]), G.reshape(n, r, -1, G.shape[-1])


class Conv2dRule(_AffineRule):
    """``nn.Conv2d`` with one group and zero padding given as numbers: patches by :func:`torch.nn.functional.unfold`."""

    def accepts(self, module: nn.Module) -> bool:
        """Refuse grouped convolutions, other padding modes and string padding (left to the generic path)."""
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)

    def patches(self, layer: Layer, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unfolded input patches (computed once per layer) and the cotangents per output pixel."""
        mod = layer.module
        n, r = G.shape[:2]
        if layer.unfolded is None:
            U = F.unfold(layer.inputs, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                         stride=mod.stride)
            layer.unfolded = U.transpose(1, 2)
        return layer.unfolded, G.reshape(n, r, G.shape[2], -1).transpose(2, 3)


class BatchNormRule(LayerRule):
    """Eval-mode ``nn.BatchNorm1d/2d``: ``z = γ ⊙ x̂ + β`` with ``x̂`` from the running statistics."""

    not_ready = "batch norm normalises with batch statistics (training mode or no running statistics)"

    def ready(self, module: nn.Module) -> bool:
        """Covered only when it normalises with its running statistics (samples independent)."""
        return not module.training and module.running_mean is not None and module.running_var is not None

    def grads(self, layer: Layer, G: torch.Tensor, *, per_sample: bool) -> Grads:
        """See :meth:`LayerRule.grads`: ``∂f/∂γ = Σ_p G_p x̂_p``, ``∂f/∂β = Σ_p G_p``."""
        n, r = G.shape[:2]
        lead = "nc" if per_sample else ""
        x_hat = _normalised_input(layer)  # (n, C, positions)
        G = G.reshape(n, r, G.shape[2], -1)
        w = torch.einsum(f"ncop,nop->{lead}o", G, x_hat) if layer.weight is not None else None
        b = G.sum(-1) if layer.bias is not None else None
        b = b if b is None or per_sample else b.sum((0, 1))
        return w, b

    def contract(self, layer: Layer, vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """See :meth:`LayerRule.contract`: ``Σ_p G_icop x̂_iop v_o`` for ``γ``, ``Σ_p G_icop v_o`` for ``β``."""
        G = layer.cotangents
        G = G.reshape(G.shape[0], G.shape[1], G.shape[2], -1)
        out = {}
        if layer.weight is not None:
            v = vectors[layer.weight].to(G.dtype)
            out[layer.weight] = torch.einsum("ncop,nop->nc", G, _normalised_input(layer) * v[:, None])
        if layer.bias is not None:
            out[layer.bias] = torch.einsum("ncop,o->nc", G, vectors[layer.bias].to(G.dtype))
        return out

    def gram_costs(self, layer: Layer, m: int, n: int | None = None) -> dict[str, float]:
        """Only the per-sample form: ``2nm·P·C`` to form the derivatives, ``(nm)²C`` to multiply."""
        rows = (layer.inputs.shape[0] if n is None else n) * m
        width = len(layer.names) * layer.module.num_features
        positions_per_sample = layer.inputs[0].numel() // layer.module.num_features
        return {"per-sample": 2.0 * rows * positions_per_sample * width + rows**2 * width, "positions": math.inf}


def _normalised_input(layer: Layer) -> torch.Tensor:
    """``x̂ = (x − running mean)/sqrt(running var + eps)`` of an eval-mode batch norm, ``(n, C, P)``."""
    mod, x = layer.module, layer.inputs
    x = x.reshape(x.shape[0], x.shape[1], -1)
    mean = mod.running_mean.to(x.dtype)[:, None]
    scale = torch.rsqrt(mod.running_var.to(x.dtype) + mod.eps)[:, None]
    return (x - mean) * scale


class ScaledRule(_AffineRule):
    """A subclass of a covered affine type whose output is its base type's times a constant: ``z_p = c(W a_p + b)``.

    The parameterisations that scale a layer's output instead of its initialisation (NTK, mean-field) write their
    layers so; such a subclass declares ``c`` as a float attribute ``multiplier``. Its derivatives are the base
    rule's with the cotangents scaled by ``c``: ``∂f/∂W = c Σ_p G_p ⊗ A_p``. The declaration is checked like every
    rule, by the structured path's guard against autograd: a subclass whose forward is not what it declares is left
    to the generic path.
    """

    def __init__(self, base: _AffineRule) -> None:
        self.base = base

    def accepts(self, module: nn.Module) -> bool:
        """Accept a float ``multiplier`` with a configuration the base rule covers."""
        multiplier = getattr(module, "multiplier", None)
        return isinstance(multiplier, float) and math.isfinite(multiplier) and self.base.accepts(module)

    def patches(self, layer: Layer, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the base rule's patches and its cotangents times the multiplier (those of ``W a_p + b``)."""
        A, Gp = self.base.patches(layer, G)
        return A, Gp * layer.module.multiplier


#: The rule of each covered layer type (exact types: a subclass may change the forward).
RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LinearRule(),
    nn.Conv2d: Conv2dRule(),
    nn.BatchNorm1d: BatchNormRule(),
    nn.BatchNorm2d: BatchNormRule(),
}
#: The rules of subclasses of an affine type that scale its output by a declared ``multiplier`` (:class:`ScaledRule`).
SCALED_RULES: dict[type[nn.Module], ScaledRule] = {
    nn.Linear: ScaledRule(RULES[nn.Linear]),
    nn.Conv2d: ScaledRule(RULES[nn.Conv2d]),
}


def rule_for(module: nn.Module) -> LayerRule | None:
    """Return the rule that covers ``module`` exactly, or ``None`` (its parameters go to the generic path).

    The rule of its exact type; for a subclass of ``nn.Linear`` or ``nn.Conv2d`` that declares a float
    ``multiplier``, :class:`ScaledRule`.
    """
    rule = RULES.get(type(module))
    if rule is None:
        rule = next((r for base, r in SCALED_RULES.items() if isinstance(module, base)), None)
    return rule if rule is not None and rule.accepts(module) else None
