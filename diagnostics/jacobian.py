"""Jacobians and empirical NTK Grams of a model on a batch (THEORY §1, §7).

``J(θ) = ∂f_X(θ)/∂θ ∈ R^{nm×d}`` with rows sample-major (row ``i*m + c`` is ``∂f_c(x_i)/∂θ``) and
columns in ``named_parameters()`` order; ``K = J Jᵀ ∈ R^{nm×nm}``.

Strategies (``strategy=``), all exact and held to the dense reference by the tests:

``"structured"``
    For ``nn.Linear`` and ``nn.Conv2d`` layers, per-sample derivatives come from the layer inputs
    ``A`` and the output cotangents ``G`` (one forward, ``m`` backward passes, no per-sample
    gradients through the network). For a linear layer on ``(n, d_in)`` inputs the Gram block is
    ``K_l = (A Aᵀ + 1) ⊗ 1_{m×m} ⊙ G Gᵀ`` and its per-sample gradients are never formed. Layers it
    cannot cover exactly (shared or tied weights, reused modules, other layer types) go to
    ``"jacrev"``; a random-cotangent check against autograd guards every covered layer.
``"jacrev"``
    ``vmap(jacrev(f))`` over samples (per-sample, ``mode="eval"`` only).
``"vjp"``
    ``vmap`` of the whole-batch ``vjp`` over one-hot cotangents: the exact Jacobian of ``f_X(θ)``
    when samples interact (``mode="batch"``); also valid in eval mode.
``"auto"``
    ``"structured"`` in eval mode, ``"vjp"`` in batch mode.

Memory is estimated before allocating: the Gram is accumulated parameter group by group (``J`` is
never materialised whole unless it fits the budget) and an oversized request raises
:class:`~diagnostics.errors.InsufficientMemoryError` saying how big it is and what to do.
"""

from __future__ import annotations

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
    """The Jacobian ``J = ∂f_X/∂θ`` of shape ``(n·m, d)``.

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
    """The empirical NTK Gram ``K = J Jᵀ`` of shape ``(n·m, n·m)``, symmetrised.

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
        """``K = Σ_groups J_g J_gᵀ``, symmetrised."""
        _memory.require(
            2 * self.rows**2 * self.itemsize,
            self.budget,
            f"the NTK Gram ({self.rows} × {self.rows}, with its working copy)",
            "Use fewer samples (probe_size=) or the matrix-free path (diagnostics.JacobianOperator).",
        )
        K = torch.zeros(self.rows, self.rows, dtype=self.fm.dtype, device=self.fm.device)
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
            K.addmm_(J, J.T)
        return (K + K.T) / 2


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

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k in (self.weight, self.bias) if k is not None)


class _StructuredLayers:
    """Capture ``A`` and ``G`` for the ``nn.Linear``/``nn.Conv2d`` layers that can be covered exactly."""

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
        live = {
            k: layer
            for k, layer in self.layers.items()
            if layer.calls == 1
            and layer.inputs.shape[0] == job.n
            and layer.inputs._version == layer.version
        }
        if not live:
            self.layers = {}
            return
        zs = [layer.outputs for layer in live.values()]
        with torch.enable_grad():
            per_output = [
                torch.autograd.grad(out[:, c].sum(), zs, retain_graph=True, allow_unused=True)
                for c in range(job.m)
            ]
            generator = torch.Generator(device="cpu").manual_seed(0)
            v = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
            wanted = [params[k] for layer in live.values() for k in layer.names]
            checks = torch.autograd.grad((out * v).sum(), zs + wanted, allow_unused=True)
        grads_z, grads_p = checks[: len(zs)], dict(zip([k for lay in live.values() for k in lay.names], checks[len(zs) :]))
        tol = 1e-4 if job.fm.dtype != torch.float64 else 1e-9
        self.layers = {}
        for i, (key, layer) in enumerate(live.items()):
            G = torch.stack(
                [g[i] if g[i] is not None else torch.zeros_like(layer.outputs) for g in per_output], dim=1
            )
            layer.cotangents = G.detach()
            gz = grads_z[i] if grads_z[i] is not None else torch.zeros_like(layer.outputs)
            if _matches_autograd(layer, gz.detach(), grads_p, tol):
                self.layers[key] = layer
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
            w, b = _per_sample_grads(layer, self.job.rows)
            if layer.weight is not None:
                blocks[layer.weight] = w
            if layer.bias is not None:
                blocks[layer.bias] = b
        return blocks

    def add_gram(self, K: torch.Tensor) -> None:
        """``K += Σ_l K_l`` over the covered layers."""
        n, m, rows = self.job.n, self.job.m, self.job.rows
        for layer in self.layers.values():
            if isinstance(layer.module, nn.Linear) and layer.inputs.ndim == 2:
                G = layer.cotangents.reshape(rows, -1)
                coef = torch.zeros(n, n, dtype=K.dtype, device=K.device)
                if layer.weight is not None:
                    coef += layer.inputs @ layer.inputs.T
                if layer.bias is not None:
                    coef += 1
                K.view(n, m, n, m).add_((G @ G.T).view(n, m, n, m) * coef[:, None, :, None])
                continue
            _memory.require(
                rows * sum(self.job.fm.params[k].numel() for k in layer.names) * self.job.itemsize,
                self.job.budget,
                f"the per-sample gradients of layer {type(layer.module).__name__}",
                "Use fewer samples (probe_size=) or a parameter subset (params=).",
            )
            for block in _per_sample_grads(layer, rows):
                if block is not None:
                    J = block.reshape(rows, -1)
                    K.addmm_(J, J.T)


def _eligible_layers(fm: FunctionalModel, names: tuple[str, ...]) -> dict[str, _Layer]:
    """Linear and Conv2d modules (exact types) whose parameters are measured and used nowhere else."""
    uses: dict[int, int] = {}
    for _, mod in fm.module.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                uses[id(p)] = uses.get(id(p), 0) + 1
    wanted = set(names)
    layers = {}
    for mod_name, mod in fm.module.named_modules():
        if type(mod) not in (nn.Linear, nn.Conv2d):
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


def _per_sample_grads(layer: _Layer, rows: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(∂f_c(x_i)/∂W, ∂f_c(x_i)/∂b)`` for every row ``(i, c)`` from ``A`` and ``G``."""
    A, G, mod = layer.inputs, layer.cotangents, layer.module
    n, m = G.shape[:2]
    if isinstance(mod, nn.Linear):
        A = A.reshape(n, -1, A.shape[-1])  # (n, T, d_in)
        G = G.reshape(n, m, -1, G.shape[-1])  # (n, m, T, d_out)
        w = torch.einsum("ncto,nti->ncoi", G, A) if layer.weight is not None else None
        b = G.sum(2) if layer.bias is not None else None
    else:
        U = F.unfold(A, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        G = G.reshape(n, m, G.shape[2], -1)  # (n, m, c_out, positions)
        w = torch.einsum("ncop,nkp->ncok", G, U) if layer.weight is not None else None
        b = G.sum(-1) if layer.bias is not None else None
    shape = lambda t, name: t.reshape(rows, *mod._parameters[name].shape)  # noqa: E731
    return (
        shape(w, "weight") if w is not None else None,
        shape(b, "bias") if b is not None else None,
    )


def _matches_autograd(layer: _Layer, gz: torch.Tensor, grads_p: dict, tol: float) -> bool:
    """Check ``Jᵀv`` built from ``A`` and ``∂⟨v,f⟩/∂z`` against autograd's parameter gradient."""
    probe = _Layer(layer.module, layer.weight, layer.bias, inputs=layer.inputs, cotangents=gz[:, None])
    w, b = _per_sample_grads(probe, gz.shape[0])
    for name, block in ((layer.weight, w), (layer.bias, b)):
        if name is None:
            continue
        ref = grads_p[name]
        ours = block.sum(0)
        ref = torch.zeros_like(ours) if ref is None else ref
        scale = max(ref.abs().max().item(), ours.abs().max().item(), 1e-30)
        if (ours - ref).abs().max().item() > tol * scale:
            return False
    return True
