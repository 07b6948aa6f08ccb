"""One measurement of a model's Jacobian or NTK Gram: the engine's working unit.

:class:`Measurement` turns a user's model and inputs into a validated functional model (copied
parameters, chosen mode and dtype, memory budget), chooses how to differentiate it
(:mod:`~diagnostics.engine.choice`) and computes Jacobian columns, the Gram and per-tensor contractions
``J_p θ_p`` (``theory/alignment.md#setup``). Every public function of the engine —
:func:`~diagnostics.engine.jacobian.jacobian`, :func:`~diagnostics.engine.jacobian.ntk_gram` — and
every check built on them runs inside one.

Validation (:meth:`FunctionalModel.check_forward`: a forward on two samples before any large one, the
forwards on the whole batch, the per-sample check) runs once per model structure and inputs' layout
(:data:`VALIDATED`); a later call checks only what can change without either — the values (parameters,
inputs and result finite) and what the forward does (no in-place update, no random draw) — and validates
again on any failure, so that its error is validation's own.

``strategy="auto"`` always works where some strategy does: it differentiates the whole batch (``vjp``)
when the samples interact or in ``mode="batch"``; otherwise it takes the fastest plan timed on this
problem, in this process or an earlier one, or a plan untimed on a first call, and judges the others
within a budget after each measurement (:mod:`~diagnostics.engine.auto`); when ``vmap`` cannot run the
model over samples it falls back by itself to plans without it (the other parameters by ``vjp``, over
the whole batch or chunk by chunk). The manifest says what it chose and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev, vjp, vmap

from ..errors import DiagnosticsError, InsufficientMemoryError, UnsupportedModelError
from . import auto, memory
from . import inputs as _inputs
from .accuracy import ErrorEstimate, gram_error
from .choice import Choice, PerSampleFailure, Plan, synchronize
from .functional import FunctionalModel, ParamSelector, PerModel
from .gram import GramTiles, columns, groups
from .precision import dtype_name
from .refusals import refusal
from .structured import StructuredLayers, eligible_layers

__all__ = ["RESULTS", "STRATEGIES", "VALIDATED", "Measurement", "PerSampleFailure", "Validated"]

STRATEGIES = ("auto", "structured", "jacrev", "vjp")
#: What a measurement is for: the Gram (and contractions) or the Jacobian; sizes the memory check and the probe.
RESULTS = ("gram", "jacobian")


@dataclass
class Validated:
    """What the validation of a model on inputs of one layout found (:meth:`FunctionalModel.check_forward`).

    Attributes
    ----------
    m
        Outputs per sample.
    output_shape
        Per-sample shape of the selected output.
    per_sample
        The per-sample check: ``""`` when the two halves of the batch give the whole batch's outputs, why
        not otherwise, ``None`` while it has not been made.
    eligible
        The measured parameters of layers the structured path can cover (:attr:`Measurement.eligible`).
    draws
        Whether the forward draws random numbers that its outputs do not depend on (found on a later call;
        the random generators are watched no more).
    """

    m: int
    output_shape: tuple[int, ...]
    per_sample: str | None = None
    eligible: frozenset[str] | None = None
    draws: bool = False


#: Validations that passed, per model and :attr:`Measurement.key`. A measurement of a model whose structure and
#: inputs' layout were validated in this process skips the validation forwards and checks instead what can
#: change between calls (the values: parameters and result finite; the forward: no in-place update, no random
#: draw — or, after one, two forwards that agree); on any failure it validates again, so the error is the one
#: validation gives.
VALIDATED = PerModel()


class Measurement:
    """One Jacobian/Gram computation: validated inputs, measurement mode, strategy and memory budget.

    Used as a context manager: entering sets the measurement mode (:meth:`FunctionalModel.measuring`),
    refuses a result that cannot fit the memory budget (from a forward on one or two samples, before
    any forward on the whole batch), runs the validation forward (:meth:`FunctionalModel.check_forward`;
    once per model structure and inputs' layout, :data:`VALIDATED`) and chooses the plan; inside,
    :meth:`gram`, :meth:`jacobian_columns` and :meth:`contractions` compute; leaving restores the
    model's modes and the TF32 switches.

    Parameters
    ----------
    model, inputs, params, mode, output, dtype, strategy, memory_budget
        As in :func:`diagnostics.jacobian`.
    result
        ``"gram"`` or ``"jacobian"`` (:data:`RESULTS`): what must fit the budget, and what the probe times.

    Attributes
    ----------
    fm
        The functional model.
    x, n
        The prepared inputs and their number of samples.
    m, rows
        Outputs per sample and ``n·m`` (set on entering).
    choice
        The plan and why it was chosen (set on entering; ``auto``'s fallback updates it).
    independent
        Whether the samples are known to be independent (a per-sample plan's check passed).
    structured
        Parameters whose Gram columns came from the structured path (after :meth:`gram`).
    key, known, validated_before
        What validation and ``auto``'s knowledge are keyed on; what validation found (:class:`Validated`);
        whether it was found by an earlier call (the per-call checks then stand in for it).
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
        result: str = "gram",
    ) -> None:
        if strategy not in STRATEGIES:
            raise DiagnosticsError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, got {result!r}")
        self.fm = FunctionalModel(model, params=params, mode=mode, output=output, dtype=dtype)
        if mode == "batch" and strategy in ("structured", "jacrev"):
            raise DiagnosticsError(
                f"strategy={strategy!r} needs independent samples; in mode='batch' samples interact "
                "through batch statistics: use strategy='vjp' or 'auto'"
            )
        self.requested = strategy
        self.result = result
        self.x, self.n = self.fm.prepare(inputs)
        self.budget = memory.resolve_budget(memory_budget, self.fm.device)
        self.itemsize = torch.empty((), dtype=self.fm.dtype).element_size()
        #: What the validation and the choice of plan depend on: the model's structure, the measured
        #: parameters, the mode, the output, the dtype, the device and the inputs' layout and number.
        self.key = (self.fm.structure, self.fm.names, mode, _inputs.selector_key(output), str(self.fm.dtype),
                    str(self.fm.device), _inputs.describe(self.x))
        self.known: Validated | None = None
        self.validated_before = False
        self._outputs: torch.Tensor | None = None
        self.choice: Choice | None = None
        self.independent = False
        self.probed: Measurement | None = None  # a slice measured by auto's probe
        self.structured: tuple[str, ...] | None = None  # parameters covered by the structured path
        self._stack = None
        self._layers: StructuredLayers | None = None

    @property
    def plan(self) -> Plan:
        """The plan in use (after entering)."""
        return self.choice.plan

    @property
    def strategy(self) -> str:
        """The strategy in use, as reports name it (``"auto"`` resolved; ``"structured+vjp"`` for the fallback)."""
        return self.choice.plan.label if self.choice is not None else self.requested

    def __enter__(self) -> Measurement:
        self._stack = self.fm.measuring()
        self._stack.__enter__()
        try:
            self.known = VALIDATED.get(self.fm.module, self.key)
            self.validated_before = self.known is not None
            if self.known is None:
                self._validate()
            else:
                self._require_memory(self.known.m)
                self.fm.output_shape = self.known.output_shape
            if self.requested in ("structured", "jacrev") and self.per_sample_problem():
                raise UnsupportedModelError(self.per_sample_problem())
            self.m = self.known.m
            self.rows = self.n * self.m
            self.choice = auto.choose(self)
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

    def _validate(self) -> None:
        """Refuse what would make the measurement wrong, before any Jacobian work (and remember that it passed)."""
        self._require_memory(self._outputs_per_sample())
        per_sample = self.requested in ("structured", "jacrev")
        self._outputs = self.fm.check_forward(self.x, per_sample=per_sample)
        self.known = Validated(self._outputs.shape[1], self.fm.output_shape, "" if per_sample else None)
        VALIDATED.put(self.fm.module, self.key, self.known)

    def outputs(self) -> torch.Tensor:
        """``f(θ, X)`` as an ``(n, m)`` matrix, finite (the validation forward's, when this measurement ran one)."""
        if self._outputs is None:
            with torch.no_grad():
                out = self._guarded(lambda: self.fm(self.fm.params, self.x))
            if not torch.isfinite(out).all():
                self._explain()
            self._outputs = out
        return self._outputs

    @property
    def eligible(self) -> frozenset[str]:
        """The measured parameters of layers with a rule, used by that layer alone (before the structured guard)."""
        if self.known.eligible is None:
            layers = eligible_layers(self.fm, self.fm.names).values()
            self.known.eligible = frozenset(k for layer in layers for k in layer.names)
        return self.known.eligible

    def per_sample_problem(self) -> str:
        """Why the samples cannot be measured one at a time (``""`` when they can); checked once per model and key."""
        if self.known.per_sample is None:
            self.known.per_sample = self.fm.per_sample_problem(self.x, self.outputs())
        return self.known.per_sample

    def _guarded(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``compute``; after a validation skipped, with the per-call checks that stand in for it.

        The state is watched for in-place updates (:meth:`FunctionalModel.unchanged`), and the random
        generators for draws: a forward that drew random numbers is validated again (two forwards that
        differ are refused; a model whose outputs do not depend on its draws is watched no more). A failure
        other than the engine's own errors is explained by validating again (:meth:`_explain`).
        """
        if not self.validated_before:
            return compute()
        before = None if self.known.draws else self.fm.random_states()
        try:
            with self.fm.unchanged():
                result = compute()
        except DiagnosticsError:
            VALIDATED.forget(self.fm.module, self.key)
            raise
        except Exception:
            self._explain()
            raise
        if before is not None and not all(map(torch.equal, before, self.fm.random_states())):
            self._explain()  # raises when two forwards differ
            VALIDATED.put(self.fm.module, self.key, self.known)
            self.known.draws = True
        return result

    def _explain(self) -> None:
        """After a failure on a model validated before: validate again, so that its error is validation's own."""
        if self.validated_before:
            VALIDATED.forget(self.fm.module, self.key)
            self.fm.check_forward(self.x, per_sample=False)

    def __exit__(self, *exc) -> None:
        self._layers = None
        self._stack.__exit__(*exc)

    # -- before the whole batch: memory ----------------------------------------------------------
    def _outputs_per_sample(self) -> int | None:
        """``m`` from a forward on one or two samples; ``None`` if it fails (the validation forward says why)."""
        few = min(self.n, 2)
        try:
            with torch.no_grad():
                return self.fm(self.fm.params, _inputs.take(self.x, slice(0, few))).shape[1]
        except Exception:  # noqa: BLE001 - the whole-batch validation forward names the problem
            return None

    def _require_memory(self, m: int | None) -> None:
        """Refuse a Gram or Jacobian that cannot fit the budget, before any forward on the whole batch."""
        if m is None:
            return
        rows = self.n * m
        if self.result == "gram":
            memory.require(
                2 * rows**2 * self.itemsize, self.budget,
                f"the NTK Gram ({rows} × {rows}, with its working copy)",
                "Use fewer samples (probe_size=) or the matrix-free path (diagnostics.JacobianOperator).",
            )
        else:
            memory.require(
                rows * self.fm.n_params * self.itemsize, self.budget,
                f"the Jacobian ({rows} × {self.fm.n_params})",
                "Use ntk_gram() (it never materialises J), a parameter subset (params=), fewer samples, "
                "or the matrix-free JacobianOperator.",
            )

    def _falling_back(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``compute``; when ``auto``'s per-sample plan meets a model ``vmap`` cannot run, fall back and rerun.

        After a run with ``auto``'s plan, :func:`~.auto.learn` records its time and judges other plans for the
        next calls.
        """
        started = time.perf_counter()
        try:
            result = self._guarded(compute)
        except PerSampleFailure as exc:
            if self.requested != "auto" or not self.plan.per_sample:
                raise
            self.choice = auto.fall_back(self, exc)
            self.structured = None  # what the failed plan covered no longer describes the measurement
            started = time.perf_counter()
            result = self._guarded(compute)
        if self.requested == "auto":
            synchronize(self.fm.device)
            auto.learn(self, time.perf_counter() - started)
        return result

    # -- Jacobian columns and contractions ------------------------------------------------------------
    def jacobian_columns(self, names: tuple[str, ...]) -> torch.Tensor:
        """``J`` restricted to ``names`` (``(nm, d_names)``), from the structured path where it applies."""

        def compute() -> torch.Tensor:
            blocks: dict[str, torch.Tensor] = {}
            if self.plan.strategy == "structured":
                blocks.update(self._structured_layers().jacobian_blocks(names))
            rest = tuple(k for k in names if k not in blocks)
            if rest:
                blocks.update(self._generic_blocks(rest))
            return self._finite(columns(blocks, names, self.rows), "the Jacobian")

        return self._falling_back(compute)

    def contractions(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``V[:, p] = J_p v_p``: the Jacobian of each parameter tensor ``p`` applied to ``vectors[p]``, ``(nm, P)``.

        With ``v_p = θ_p`` this is ``⟨∂f/∂θ_p, θ_p⟩`` per tensor, the building block of the candidates
        ``R = (c_p θ_p)_p`` of the common model structure (``theory/cms.md``). Reverse mode only: layers of
        the structured path contract their captured inputs and cotangents (``J_p`` never formed), the other
        parameters' Jacobian columns are formed group by group within the memory budget.
        """
        return self._falling_back(lambda: self._compute(vectors, gram=False)[1])

    def gram_and_contractions(self, vectors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`gram` and :meth:`contractions` at once: each group of Jacobian columns is formed only once."""
        return self._falling_back(lambda: self._compute(vectors, gram=True))

    def _compute(self, vectors: dict[str, torch.Tensor] | None, gram: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Compute the Gram (``gram``) and the contractions with ``vectors`` (unless ``None``), group by group."""
        names = self.fm.names
        K = GramTiles(self.rows, self.m, self.fm.dtype, self.fm.device) if gram else None
        V = None if vectors is None else torch.empty(self.rows, len(names), dtype=self.fm.dtype, device=self.fm.device)
        index = {k: i for i, k in enumerate(names)}
        covered: set[str] = set()
        if self.plan.strategy == "structured":
            layers = self._structured_layers()
            covered = layers.covered
            self.structured = tuple(k for k in names if k in covered)
            if K is not None:
                layers.add_gram(K)
            if V is not None:
                for k, v in layers.contractions(vectors).items():
                    V[:, index[k]] = v
        rest = tuple(k for k in names if k not in covered)
        reserved = 2 * self.rows**2 * self.itemsize if gram else self.budget // 2
        free = max(self.budget - reserved, self.rows * self.itemsize)
        for group in groups(rest, self.fm.params, self.rows * self.itemsize, free):
            blocks = self._generic_blocks(group)
            for k in group:  # block by block: K = Σ_p J_p J_pᵀ, no copy of the group's columns into one matrix
                J = blocks.pop(k).reshape(self.rows, -1)
                if K is not None:
                    K.add_products(J, J)
                if V is not None:
                    V[:, index[k]] = J @ vectors[k].reshape(-1).to(J)
        K = None if K is None else self._finite(K.finish(), "the NTK Gram")
        V = None if V is None else self._finite(V, "the contractions J_p θ_p")
        return K, V

    def _structured_layers(self) -> StructuredLayers:
        """Return the structured layers of all measured parameters, captured once per measurement."""
        if self._layers is None:
            self._layers = StructuredLayers(self, self.fm.names)
        return self._layers

    def _generic_blocks(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-parameter ``(nm, *shape)`` blocks by ``vmap(jacrev)`` or ``vjp`` (the whole batch, or by chunks)."""
        sub = {k: self.fm.params[k] for k in names}
        width = sum(v.numel() for v in sub.values())
        if self.plan.rest == "vjp":
            size = self.plan.chunk or self.n
            parts = []
            for start in range(0, self.n, size):
                x = _inputs.take(self.x, slice(start, min(self.n, start + size))) if size < self.n else self.x
                out, pull = vjp(lambda p, x=x: self.fm(p, x).reshape(-1), sub)
                eye = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
                parts += [vmap(pull)(eye[rows])[0] for rows in self._chunks(out.numel(), width, factor=2)]
            return {k: _joined([p[k] for p in parts]) for k in names}

        def single(p, xi):
            return self.fm(p, _inputs.map_inputs(lambda t: t.unsqueeze(0), xi))[0]

        per_sample = vmap(jacrev(single), in_dims=(None, 0))
        try:
            parts = [
                per_sample(sub, _inputs.take(self.x, rows))
                for rows in self._chunks(self.n, width * self.m, factor=3)
            ]
        except (DiagnosticsError, InsufficientMemoryError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._per_sample_failure(exc) from exc
        return {k: _joined([p[k] for p in parts]).reshape(self.rows, *sub[k].shape) for k in names}

    def _per_sample_failure(self, exc: Exception) -> PerSampleFailure:
        """Build the error of a ``vmap`` over samples that failed: what it means, where, and what to do."""
        where = self.fm.running_module()
        refused = refusal(exc, where)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        text = str(refused) if refused is not None else (
            f"cannot measure this model one sample at a time: vmap over samples failed in {where} "
            f"({type(exc).__name__}: {first}). What to do: use strategy='vjp' (the whole batch, no vmap over "
            "the forward)"
        )
        return PerSampleFailure(text + "; strategy='auto' falls back to it by itself")

    def _chunks(self, total: int, width: int, factor: int) -> Iterator[slice]:
        """Row slices whose ``width``-wide blocks (times a working-memory factor) fit the budget."""
        per_row = max(1, width * self.itemsize * factor)
        size = max(1, min(total, self.budget // per_row))
        for start in range(0, total, size):
            yield slice(start, min(total, start + size))

    # -- Gram ------------------------------------------------------------------------------------
    def gram(self) -> torch.Tensor:
        """``K = Σ_groups J_g J_gᵀ``, accumulated on the tiles on and above the diagonal, then mirrored."""
        return self._falling_back(lambda: self._compute(None, gram=True)[0])

    def error(self, K: torch.Tensor) -> ErrorEstimate:
        """Estimate the floating-point error of the Gram ``K`` this measurement computed (:mod:`.accuracy`)."""
        return gram_error(self.fm, self.x, K, m=self.m, per_sample=self.independent)

    def _finite(self, result: torch.Tensor, what: str) -> torch.Tensor:
        """Return ``result``, refusing one with inf or NaN entries (an overflow of the compute dtype)."""
        if torch.isfinite(result.sum()) or torch.isfinite(result).all():  # the sum: one fast pass, usually enough
            return result
        self._explain()  # non-finite outputs, when validation was skipped, are named as such
        name = dtype_name(self.fm.dtype)
        raise DiagnosticsError(
            f"{what} overflowed in {name} (entries beyond ±{torch.finfo(self.fm.dtype).max:.1e} became inf or NaN): "
            "the model's derivatives are too large for this precision. Measure with dtype=torch.float64, or "
            "rescale the measured output (e.g. output=lambda o: o / 1e3)."
        )


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate row chunks; a single chunk is returned as it is (no copy of a block that may be large)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
