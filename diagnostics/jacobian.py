"""Jacobians and empirical NTK Grams of a model on a batch (THEORY §1, §7).

``J(θ) = ∂f_X(θ)/∂θ ∈ R^{nm×d}`` with rows sample-major (row ``i*m + c`` is ``∂f_c(x_i)/∂θ``) and
columns in ``named_parameters()`` order; ``K = J Jᵀ ∈ R^{nm×nm}``.

Strategies (``strategy=``), all exact and held to the dense reference by the tests:

``"structured"``
    For ``nn.Linear``, ``nn.Conv2d`` and eval-mode ``nn.BatchNorm1d/2d`` layers, derivatives come
    from the layer inputs ``A`` and the output cotangents ``G`` (one forward, ``m`` backward passes,
    no per-sample gradients through the network). For a linear layer on ``(n, d_in)`` inputs the
    Gram block is ``K_l = (A Aᵀ + 1) ⊗ 1_{m×m} ⊙ G Gᵀ`` and its per-sample gradients are never
    formed; for convolutions and sequence inputs each layer takes the cheaper of two exact forms
    (per-sample gradients, or pairs of positions; see :func:`layer_gram_costs`). Layers it cannot
    cover exactly (shared or tied weights, reused modules, other layer types) go to ``"jacrev"``;
    a random-cotangent check against autograd guards every covered layer.
``"jacrev"``
    ``vmap(jacrev(f))`` over samples (per-sample, ``mode="eval"`` only).
``"vjp"``
    ``vmap`` of the whole-batch ``vjp`` over one-hot cotangents: the exact Jacobian of ``f_X(θ)``
    when samples interact (``mode="batch"``); also valid in eval mode.
``"auto"``
    ``"structured"`` in eval mode, ``"vjp"`` in batch mode.

Every strategy accumulates the Gram only on the tiles on and above its diagonal (about half the
FLOPs) and mirrors them, so ``K`` is exactly symmetric. Memory is estimated before allocating: the
Gram is accumulated parameter group by group (``J`` is never materialised whole unless it fits the
budget) and an oversized request raises
:class:`~diagnostics.errors.InsufficientMemoryError` saying how big it is and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev, vjp, vmap

from . import _inputs, _memory
from ._model import FunctionalModel, ParamSelector
from .errors import DiagnosticsError

__all__ = ["jacobian", "ntk_gram", "STRATEGIES"]

STRATEGIES = ("auto", "structured", "jacrev", "vjp")


def jacobian(
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Compute the Jacobian ``J = ∂f_X/∂θ`` of shape ``(n·m, d)``.

    Parameters
    ----------
    model
        Any ``nn.Module``; it is never modified.
    inputs
        A tensor, a tuple of tensors (positional arguments) or a dict of tensors (keyword
        arguments), batched along dimension 0; numpy arrays are accepted.
    params
        Parameter subset: ``None`` (all), names or module prefixes, or a predicate.
    mode
        ``"eval"`` (per-sample, running statistics) or ``"batch"`` (batch norm uses batch statistics).
    output
        Output selector for models that return a dict, tuple or object.
    dtype
        Compute dtype; ``torch.float64`` computes in double precision end to end.
    strategy
        One of :data:`STRATEGIES`.
    memory_budget
        Bytes the computation may use; default half the available memory.

    Returns
    -------
    torch.Tensor
        ``J`` with row ``i*m + c`` equal to ``∂f_c(x_i, θ)/∂θ`` and columns in parameter order.
    """
    with _Measurement(model, inputs, params, mode, output, dtype, strategy, memory_budget) as job:
        _memory.require(
            job.rows * job.fm.n_params * job.itemsize,
            job.budget,
            f"the Jacobian ({job.rows} × {job.fm.n_params})",
            "Use ntk_gram() (it never materialises J), a parameter subset (params=), fewer samples, "
            "or the matrix-free JacobianOperator.",
        )
        return job.jacobian_columns(job.fm.names)


def ntk_gram(
    model: nn.Module,
    inputs: object,
    *,
    params: ParamSelector = None,
    mode: str = "eval",
    output: _inputs.OutputSelector = None,
    dtype: torch.dtype | None = None,
    strategy: str = "auto",
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Compute the empirical NTK Gram ``K = J Jᵀ`` of shape ``(n·m, n·m)``, symmetrised.

    Same arguments as :func:`jacobian`. ``J`` is never materialised whole: the Gram is accumulated
    over parameter groups that fit the memory budget, with exact per-layer blocks
    ``(A Aᵀ) ⊙ (G Gᵀ)`` for linear layers (THEORY §7).
    """
    with _Measurement(model, inputs, params, mode, output, dtype, strategy, memory_budget) as job:
        return job.gram()


# ----------------------------------------------------------------------------------------------


class _Measurement:
    """One Jacobian/Gram computation: validated inputs, measurement mode and budget."""

    def __init__(self, model, inputs, params, mode, output, dtype, strategy, memory_budget) -> None:
        if strategy not in STRATEGIES:
            raise DiagnosticsError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)
        if mode == "batch" and strategy in ("structured", "jacrev"):
            raise DiagnosticsError(
                f"strategy={strategy!r} needs independent samples; in mode='batch' samples interact "
                "through batch statistics: use strategy='vjp' or 'auto'"
            )
        self.strategy = strategy if strategy != "auto" else ("structured" if mode == "eval" else "vjp")
        self.x, self.n = self.fm.prepare(inputs)
        self.budget = _memory.resolve_budget(memory_budget, self.fm.device)
        self.itemsize = torch.empty((), dtype=self.fm.dtype).element_size()
        self._stack = None
        self.structured: tuple[str, ...] | None = None  # parameters covered by the structured path

    def __enter__(self) -> _Measurement:
        self._stack = self.fm.measuring()
        self._stack.__enter__()
        try:
            out = self.fm.check_forward(self.x, per_sample=self.strategy in ("structured", "jacrev"))
            self.m = out.shape[1]
            self.rows = self.n * self.m
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    # -- Jacobian columns ----------------------------------------------------------------------
    def jacobian_columns(self, names: tuple[str, ...]) -> torch.Tensor:
        """``J`` restricted to ``names`` (``(nm, d_names)``), from the structured path where it applies."""
        blocks: dict[str, torch.Tensor] = {}
        if self.strategy == "structured":
            layers = _StructuredLayers(self, names)
            blocks.update(layers.jacobian_blocks())
        rest = tuple(k for k in names if k not in blocks)
        if rest:
            blocks.update(self._generic_blocks(rest))
        return _columns(blocks, names, self.rows)

    def _generic_blocks(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-parameter ``(nm, *shape)`` blocks by ``jacrev`` (per sample) or whole-batch ``vjp``."""
        sub = {k: self.fm.params[k] for k in names}
        width = sum(v.numel() for v in sub.values())
        if self.strategy == "vjp":
            out, pull = vjp(lambda p: self.fm(p, self.x).reshape(-1), sub)
            eye = torch.eye(self.rows, dtype=out.dtype, device=out.device)
            parts = [vmap(pull)(eye[rows])[0] for rows in self._chunks(self.rows, width, factor=2)]
            return {k: torch.cat([p[k] for p in parts]) for k in names}

        def single(p, xi):
            return self.fm(p, _inputs.map_inputs(lambda t: t.unsqueeze(0), xi))[0]

        per_sample = vmap(jacrev(single), in_dims=(None, 0))
        parts = [
            per_sample(sub, _inputs.take(self.x, rows))
            for rows in self._chunks(self.n, width * self.m, factor=3)
        ]
        return {k: torch.cat([p[k] for p in parts]).reshape(self.rows, *sub[k].shape) for k in names}

    def _chunks(self, total: int, width: int, factor: int) -> Iterator[slice]:
        """Row slices whose ``width``-wide blocks (times a working-memory factor) fit the budget."""
        per_row = max(1, width * self.itemsize * factor)
        size = max(1, min(total, self.budget // per_row))
        for start in range(0, total, size):
            yield slice(start, min(total, start + size))

    # -- Gram ------------------------------------------------------------------------------------
    def gram(self) -> torch.Tensor:
        """``K = Σ_groups J_g J_gᵀ``, accumulated on the tiles on and above the diagonal, then mirrored."""
        _memory.require(
            2 * self.rows**2 * self.itemsize,
            self.budget,
            f"the NTK Gram ({self.rows} × {self.rows}, with its working copy)",
            "Use fewer samples (probe_size=) or the matrix-free path (diagnostics.JacobianOperator).",
        )
        K = _GramTiles(self.rows, self.m, self.fm.dtype, self.fm.device)
        covered: set[str] = set()
        if self.strategy == "structured":
            layers = _StructuredLayers(self, self.fm.names)
            layers.add_gram(K)
            covered = layers.covered
            self.structured = tuple(k for k in self.fm.names if k in covered)
        rest = tuple(k for k in self.fm.names if k not in covered)
        free = max(self.budget - 2 * self.rows**2 * self.itemsize, self.rows * self.itemsize)
        for group in _groups(rest, self.fm.params, self.rows * self.itemsize, free):
            J = _columns(self._generic_blocks(group), group, self.rows)
            K.add_products(J, J)
        return K.finish()


class _GramTiles:
    """A symmetric ``(N, N)`` Gram accumulated only on the tiles on and above the diagonal.

    Products ``L Rᵀ`` are formed tile by tile for tiles ``(I, J)`` with ``I ≤ J`` (about half the
    FLOPs of the full product); :meth:`finish` symmetrises the diagonal tiles and mirrors the
    others, so the result is exactly symmetric. Tiles hold whole samples (``m`` rows each), so a
    sample-level weight ``coef (n, n)`` applies to a tile as the block ``coef[I/m, J/m] ⊗ 1_{m×m}``.
    """

    #: Tile sides lie between these (rounded down to whole samples): large enough for efficient
    #: matrix products, small enough that about four tiles span ``N`` and half the FLOPs are saved.
    MIN_TILE, MAX_TILE = 256, 1024

    def __init__(self, N: int, m: int, dtype: torch.dtype, device: torch.device) -> None:
        self.K = torch.zeros(N, N, dtype=dtype, device=device)
        self.m = m
        size = max(m, min(self.MAX_TILE, max(self.MIN_TILE, -(-N // 4))) // m * m)
        self.bounds = [(a, min(N, a + size)) for a in range(0, N, size)]
        self._scratch = torch.empty(size * size, dtype=dtype, device=device)

    def _tiles(self) -> Iterator[tuple[slice, slice]]:
        for i, (a0, a1) in enumerate(self.bounds):
            for b0, b1 in self.bounds[i:]:
                yield slice(a0, a1), slice(b0, b1)

    def add_products(self, L: torch.Tensor, R: torch.Tensor) -> None:
        """``K += L Rᵀ`` (``L``, ``R`` of shape ``(N, w)``) on the upper tiles."""
        for a, b in self._tiles():
            self.K[a, b].addmm_(L[a], R[b].T)

    def add_weighted_products(self, L: torch.Tensor, R: torch.Tensor, coef: torch.Tensor) -> None:
        """``K += (coef ⊗ 1_{m×m}) ⊙ (L Rᵀ)`` on the upper tiles; ``coef`` is ``(n, n)``."""
        m = self.m
        for a, b in self._tiles():
            rows, cols = a.stop - a.start, b.stop - b.start
            S = self._scratch[: rows * cols].view(rows, cols)
            torch.mm(L[a], R[b].T, out=S)
            c = coef[a.start // m : a.stop // m, b.start // m : b.stop // m]
            self.K[a, b].view(rows // m, m, cols // m, m).addcmul_(
                S.view(rows // m, m, cols // m, m), c[:, None, :, None]
            )

    def finish(self) -> torch.Tensor:
        """Symmetrise the diagonal tiles, mirror the others; return the full Gram."""
        for a, b in self._tiles():
            if a == b:
                block = self.K[a, a]
                block.copy_((block + block.T) * 0.5)
            else:
                self.K[b, a].copy_(self.K[a, b].T)
        return self.K


def _columns(blocks: dict[str, torch.Tensor], names: tuple[str, ...], rows: int) -> torch.Tensor:
    return torch.cat([blocks[k].reshape(rows, -1) for k in names], dim=1)


def _groups(names, params, bytes_per_column: int, budget: int) -> Iterator[tuple[str, ...]]:
    """Consecutive parameter groups whose Jacobian columns fit in ``budget`` bytes."""
    group, used = [], 0
    for k in names:
        cost = params[k].numel() * bytes_per_column
        if group and used + cost > budget:
            yield tuple(group)
            group, used = [], 0
        _memory.require(
            cost,
            budget,
            f"the Jacobian block of parameter {k!r}",
            "Use fewer samples (probe_size=), a parameter subset (params=) or the matrix-free path.",
        )
        group.append(k)
        used += cost
    if group:
        yield tuple(group)


# ----------------------------------------------------------------------------------------------
# The structured path: exact per-layer derivatives from layer inputs and output cotangents.
#
# A covered layer is written as ``z_p = W a_p + b`` over positions ``p`` (one position for a
# linear layer on (n, d_in) inputs, tokens for a linear layer on sequences, output pixels of a
# convolution with the unfolded patches as ``a_p``), or as ``z = γ ⊙ x̂ + β`` (batch norm in eval
# mode). With ``A`` the patches ``(n, P, k)`` and ``G`` the output cotangents ``(n, m, P, o)``,
#
#     ∂f_c(x_i)/∂W = Σ_p G_icp ⊗ A_ip,
#     K_l[(i,c),(j,c')] = Σ_{p,q} (A_ip·A_jq + 1) (G_icp·G_jc'q).
#
# The Gram block is formed either from the per-sample gradients ("per-sample": 2(nm)²ok FLOPs) or
# from the pairs of positions ("positions": P(P+1)/2 · 2(nm)²o FLOPs, using the symmetry of K),
# whichever is cheaper for the layer's shapes.


@dataclass
class _Layer:
    module: nn.Module
    weight: str | None
    bias: str | None
    inputs: torch.Tensor | None = None
    outputs: torch.Tensor | None = None
    version: int = 0
    calls: int = 0
    cotangents: torch.Tensor | None = None  # (n, m, *output shape)
    unfolded: torch.Tensor | None = None  # conv patches (n, P, k), computed once

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k in (self.weight, self.bias) if k is not None)

    @property
    def is_norm(self) -> bool:
        return isinstance(self.module, _NORMS)


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_COVERED = (nn.Linear, nn.Conv2d, *_NORMS)


class _StructuredLayers:
    """Capture ``A`` and ``G`` for the layers that can be covered exactly, guarded by autograd."""

    def __init__(self, job: _Measurement, names: tuple[str, ...]) -> None:
        self.job = job
        self.layers = _eligible_layers(job.fm, names)
        self.covered: set[str] = set()
        if self.layers:
            self._capture()

    def _capture(self) -> None:
        job, fm = self.job, self.job.fm
        params = {k: v.detach().requires_grad_(True) for k, v in fm.params.items()}
        handles = [
            layer.module.register_forward_hook(self._hook(layer)) for layer in self.layers.values()
        ]
        try:
            with torch.enable_grad():
                out = fm(params, job.x)
        finally:
            for h in handles:
                h.remove()
        live = [
            layer
            for layer in self.layers.values()
            if layer.calls == 1
            and layer.inputs.shape[0] == job.n
            and layer.inputs._version == layer.version
            and (not layer.is_norm or _uses_running_statistics(layer.module))
        ]
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
        tol = 1e-4 if fm.dtype != torch.float64 else 1e-9
        for i, layer in enumerate(live):
            G = torch.stack(
                [g[i] if g[i] is not None else torch.zeros_like(layer.outputs) for g in per_output], dim=1
            )
            layer.cotangents = G
            layer.outputs = None
            if _matches_autograd(layer, v, reference, tol):
                self.layers[layer.weight or layer.bias] = layer
                self.covered.update(layer.names)

    @staticmethod
    def _hook(layer: _Layer):
        def hook(module, args, output):
            layer.calls += 1
            layer.inputs = args[0].detach() if args and isinstance(args[0], torch.Tensor) else None
            if layer.inputs is None:
                layer.calls += 1  # keyword or missing input: not coverable
                return output
            layer.version = layer.inputs._version
            layer.outputs = output
            return output.clone()  # later in-place ops must not alter the captured output

        return hook

    def jacobian_blocks(self) -> dict[str, torch.Tensor]:
        """Per-parameter ``(nm, *shape)`` Jacobian blocks of the covered layers."""
        blocks = {}
        for layer in self.layers.values():
            w, b = _layer_grads(layer, layer.cotangents, per_sample=True)
            if layer.weight is not None:
                blocks[layer.weight] = w.reshape(self.job.rows, *self.job.fm.shapes[layer.weight])
            if layer.bias is not None:
                blocks[layer.bias] = b.reshape(self.job.rows, -1)
        return blocks

    def add_gram(self, K: _GramTiles) -> None:
        """``K += Σ_l K_l`` over the covered layers, each by its cheaper exact form.

        Per-sample blocks of consecutive layers are concatenated (within the memory budget) so
        that one wide product replaces several narrow ones: same FLOPs, better matmul efficiency.
        """
        job = self.job
        pending: list[torch.Tensor] = []
        width = 0
        for layer in self.layers.values():
            costs = layer_gram_costs(layer, job.m)
            ps_bytes = job.rows * sum(job.fm.params[k].numel() for k in layer.names) * job.itemsize
            if costs["positions"] < costs["per-sample"] or ps_bytes > job.budget:
                _add_positions_gram(layer, K)
                continue
            if pending and 2 * (width * job.rows * job.itemsize + ps_bytes) > job.budget:
                _add_concatenated(K, pending)
                pending, width = [], 0
            blocks = [b.reshape(job.rows, -1) for b in _layer_grads(layer, layer.cotangents, per_sample=True)
                      if b is not None]
            pending += blocks
            width += sum(b.shape[1] for b in blocks)
        if pending:
            _add_concatenated(K, pending)


def _add_concatenated(K: _GramTiles, blocks: list[torch.Tensor]) -> None:
    J = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    K.add_products(J, J)


def layer_gram_costs(layer: _Layer, m: int) -> dict[str, float]:
    """FLOPs of the two exact forms of a covered layer's Gram block, using the symmetry of ``K``.

    ``per-sample``: form ``∂f_c(x_i)/∂θ_l`` (``2nmPok``) and multiply (``(nm)²(ok + o)``, half of
    ``2(nm)²(ok + o)``); ``positions``: ``P²`` ordered pairs of positions, each a Gram of patches
    (``2n²k``), half a Gram of cotangents (``(nm)²o``) and half a fused multiply-add (``(nm)²``),
    plus the bias from the cotangents summed over positions (``(nm)²o``). Batch norm has only
    the per-sample form.
    """
    n = layer.inputs.shape[0]
    rows = n * m
    if layer.is_norm:
        width = len(layer.names) * layer.module.num_features
        positions_per_sample = layer.inputs[0].numel() // layer.module.num_features
        return {
            "per-sample": 2.0 * rows * positions_per_sample * width + rows**2 * width,
            "positions": math.inf,
        }
    A, _ = _patches(layer)
    P, k = A.shape[1], A.shape[2]
    o = layer.module.weight.shape[0]
    kw = k if layer.weight is not None else 0
    kb = 1 if layer.bias is not None else 0
    per_sample = 2.0 * rows * P * o * (kw + kb) + rows**2 * o * (kw + kb)
    positions = kb * rows**2 * o
    if kw:
        positions += P * P * (2.0 * n * n * k + rows**2 * o + rows**2)
    return {"per-sample": per_sample, "positions": positions}


def _add_positions_gram(layer: _Layer, K: _GramTiles) -> None:
    """``K += Σ_{p,q} ((A_p A_qᵀ) ⊗ 1_{m×m}) ⊙ (G_p G_qᵀ) + (Σ_p G_p)(Σ_q G_q)ᵀ`` (bias last)."""
    A, G = _patches(layer)
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


def _patches(layer: _Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches ``A`` ``(n, P, k)`` and cotangents ``G`` ``(n, m, P, o)`` of a linear or conv layer."""
    return _patches_of(layer, layer.cotangents)


def _patches_of(layer: _Layer, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_patches` with cotangents ``G`` ``(n, r, *output shape)``; conv patches are unfolded once."""
    A, mod = layer.inputs, layer.module
    n, r = G.shape[:2]
    if isinstance(mod, nn.Linear):
        return A.reshape(n, -1, A.shape[-1]), G.reshape(n, r, -1, G.shape[-1])
    if layer.unfolded is None:
        U = F.unfold(A, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        layer.unfolded = U.transpose(1, 2)
    return layer.unfolded, G.reshape(n, r, G.shape[2], -1).transpose(2, 3)


def _layer_grads(
    layer: _Layer, G: torch.Tensor, *, per_sample: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Weight and bias derivatives from ``A`` and cotangents ``G`` ``(n, r, *output shape)``.

    ``per_sample``: ``(n, r, *)`` blocks, row ``(i, c)`` the derivative of output ``c`` of sample
    ``i``; otherwise the sums over samples and ``r`` (the gradient of ``⟨v, f⟩`` for the guard).
    """
    mod = layer.module
    n, r = G.shape[:2]
    lead = "nc" if per_sample else ""
    if layer.is_norm:
        x_hat = _normalised_input(layer)  # (n, C, positions)
        G = G.reshape(n, r, G.shape[2], -1)
        w = torch.einsum(f"ncop,nop->{lead}o", G, x_hat) if layer.weight is not None else None
        b = G.sum(-1) if layer.bias is not None else None
        b = b if b is None or per_sample else b.sum((0, 1))
        return w, b
    A, Gp = _patches_of(layer, G)
    if layer.weight is None:
        w = None
    elif per_sample:
        w = torch.einsum("ncpo,npk->ncok", Gp, A)
    else:  # Σ_{i,c,p} G_icp ⊗ A_ip = Σ_{i,p} (Σ_c G_icp) ⊗ A_ip: one product
        w = Gp.sum(1).reshape(-1, Gp.shape[-1]).T @ A.reshape(-1, A.shape[-1])
    b = Gp.sum(2) if layer.bias is not None else None
    b = b if b is None or per_sample else b.sum((0, 1))
    shape = mod.weight.shape
    return (w.reshape(*w.shape[: w.ndim - 2], *shape) if w is not None else None), b


def _normalised_input(layer: _Layer) -> torch.Tensor:
    """``x̂ = (x − running mean)/sqrt(running var + eps)`` of an eval-mode batch norm, ``(n, C, P)``."""
    mod, x = layer.module, layer.inputs
    x = x.reshape(x.shape[0], x.shape[1], -1)
    mean = mod.running_mean.to(x.dtype)[:, None]
    scale = torch.rsqrt(mod.running_var.to(x.dtype) + mod.eps)[:, None]
    return (x - mean) * scale


def _uses_running_statistics(module: nn.Module) -> bool:
    """Tell whether a batch norm normalises with its running statistics (eval mode)."""
    return not module.training and module.running_mean is not None and module.running_var is not None


def _eligible_layers(fm: FunctionalModel, names: tuple[str, ...]) -> dict[str, _Layer]:
    """Linear, Conv2d and BatchNorm layers (exact types) whose parameters are measured and used once."""
    uses: dict[int, int] = {}
    for _, mod in fm.module.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    wanted = set(names)
    layers = {}
    for mod_name, mod in fm.module.named_modules():
        if type(mod) not in _COVERED:
            continue
        if isinstance(mod, nn.Conv2d) and (
            mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str)
        ):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        own = {
            kind: f"{prefix}{kind}"
            for kind in ("weight", "bias")
            if getattr(mod, kind) is not None and f"{prefix}{kind}" in wanted
        }
        if own and all(uses[id(getattr(mod, kind))] == 1 for kind in own):
            layers[mod_name] = _Layer(mod, own.get("weight"), own.get("bias"))
    return layers


def _matches_autograd(layer: _Layer, v: torch.Tensor, reference: dict, tol: float) -> bool:
    """Check ``Jᵀv = Σ_ic v_ic ∂f_ic/∂θ`` built from ``A`` and ``G`` against autograd's gradient.

    Because the cotangent ``Σ_c v_ic G_ic`` of sample ``i`` is built from the per-output
    cotangents, a model whose samples interact (``∂f_i/∂z_j ≠ 0``) fails the check too.
    """
    G = layer.cotangents
    gz = torch.einsum("nc...,nc->n...", G, v.to(G.dtype))[:, None]
    w, b = _layer_grads(layer, gz, per_sample=False)
    for name, ours in ((layer.weight, w), (layer.bias, b)):
        if name is None:
            continue
        ref = reference[name]
        ref = torch.zeros_like(ours) if ref is None else ref.reshape(ours.shape)
        scale = max(ref.abs().max().item(), ours.abs().max().item(), 1e-30)
        if (ours - ref).abs().max().item() > tol * scale:
            return False
    return True
