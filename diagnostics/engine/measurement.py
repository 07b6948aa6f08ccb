"""One measurement of a model's Jacobian or NTK Gram: the engine's working unit.

:class:`Measurement` turns a user's model and inputs into a validated functional model (copied
parameters, chosen mode and dtype, memory budget) and computes Jacobian columns and the Gram by the
chosen strategy (``theory/alignment.md#setup``). Every public function of the engine —
:func:`~diagnostics.engine.jacobian.jacobian`, :func:`~diagnostics.engine.jacobian.ntk_gram` — and
every check built on them runs inside one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.func import jacrev, vjp, vmap

from ..errors import DiagnosticsError
from . import inputs as _inputs
from . import memory
from .functional import FunctionalModel, ParamSelector
from .gram import GramTiles, columns, groups
from .structured import StructuredLayers

__all__ = ["STRATEGIES", "Measurement"]

STRATEGIES = ("auto", "structured", "jacrev", "vjp")


class Measurement:
    """One Jacobian/Gram computation: validated inputs, measurement mode, strategy and memory budget.

    Used as a context manager: entering sets the measurement mode (:meth:`FunctionalModel.measuring`)
    and runs the validation forward (:meth:`FunctionalModel.check_forward`); inside, :meth:`gram` and
    :meth:`jacobian_columns` compute; leaving restores the model's modes and the TF32 switches.

    Parameters
    ----------
    model, inputs, params, mode, output, dtype, strategy, memory_budget
        As in :func:`diagnostics.jacobian`.

    Attributes
    ----------
    fm
        The functional model.
    x, n
        The prepared inputs and their number of samples.
    m, rows
        Outputs per sample and ``n·m`` (set on entering).
    strategy
        The resolved strategy (``"auto"`` replaced by what it chose).
    structured
        Parameters whose Gram columns came from the structured path (after :meth:`gram`).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: object,
        *,
        params: ParamSelector = None,
        mode: str = "eval",
        output: _inputs.OutputSelector = None,
        dtype: torch.dtype | None = None,
        strategy: str = "auto",
        memory_budget: int | None = None,
    ) -> None:
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
        self.budget = memory.resolve_budget(memory_budget, self.fm.device)
        self.itemsize = torch.empty((), dtype=self.fm.dtype).element_size()
        self._stack = None
        self.structured: tuple[str, ...] | None = None  # parameters covered by the structured path

    def __enter__(self) -> Measurement:
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
            layers = StructuredLayers(self, names)
            blocks.update(layers.jacobian_blocks())
        rest = tuple(k for k in names if k not in blocks)
        if rest:
            blocks.update(self._generic_blocks(rest))
        return columns(blocks, names, self.rows)

    def contractions(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``V[:, p] = J_p v_p``: the Jacobian of each parameter tensor ``p`` applied to ``vectors[p]``, ``(nm, P)``.

        With ``v_p = θ_p`` this is ``⟨∂f/∂θ_p, θ_p⟩`` per tensor, the building block of the candidates
        ``R = (c_p θ_p)_p`` of the common model structure (``theory/cms.md``). Computed from Jacobian
        columns group by group within the memory budget (reverse mode only), never all of ``J`` at once.
        """
        names = self.fm.names
        V = torch.empty(self.rows, len(names), dtype=self.fm.dtype, device=self.fm.device)
        index = {k: i for i, k in enumerate(names)}
        budget = max(self.budget // 2, self.rows * self.itemsize)
        for group in groups(names, self.fm.params, self.rows * self.itemsize, budget):
            J = self.jacobian_columns(group)
            start = 0
            for k in group:
                size = self.fm.params[k].numel()
                V[:, index[k]] = J[:, start : start + size] @ vectors[k].reshape(-1).to(J)
                start += size
        return V

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
        memory.require(
            2 * self.rows**2 * self.itemsize,
            self.budget,
            f"the NTK Gram ({self.rows} × {self.rows}, with its working copy)",
            "Use fewer samples (probe_size=) or the matrix-free path (diagnostics.JacobianOperator).",
        )
        K = GramTiles(self.rows, self.m, self.fm.dtype, self.fm.device)
        covered: set[str] = set()
        if self.strategy == "structured":
            layers = StructuredLayers(self, self.fm.names)
            layers.add_gram(K)
            covered = layers.covered
            self.structured = tuple(k for k in self.fm.names if k in covered)
        rest = tuple(k for k in self.fm.names if k not in covered)
        free = max(self.budget - 2 * self.rows**2 * self.itemsize, self.rows * self.itemsize)
        for group in groups(rest, self.fm.params, self.rows * self.itemsize, free):
            J = columns(self._generic_blocks(group), group, self.rows)
            K.add_products(J, J)
        return K.finish()
