"""One measurement of a model's Jacobian or NTK Gram: the engine's working unit.

:class:`Measurement` turns a user's model and inputs into a validated functional model (copied
parameters, chosen mode and dtype, memory budget), chooses how to differentiate it
(:mod:`~diagnostics.engine.choice`) and computes Jacobian columns, the Gram and per-tensor contractions
``J_p θ_p`` (``theory/alignment.md#setup``). Every public function of the engine —
:func:`~diagnostics.engine.jacobian.jacobian`, :func:`~diagnostics.engine.jacobian.ntk_gram` — and
every check built on them runs inside one.

``strategy="auto"`` always works where some strategy does: it differentiates the whole batch (``vjp``)
when the samples interact or in ``mode="batch"``; otherwise it times the plans that run on two small
slices and takes the fastest (on problems of fewer than :data:`PROBE_MIN_ROWS` rows, where the choice
cannot matter, the structured path without timing); and when ``vmap`` cannot run the model over
samples it falls back by itself to the structured path with the other parameters by whole-batch
``vjp``. The manifest says what it chose and why.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import jacrev, vjp, vmap

from ..errors import DiagnosticsError, InsufficientMemoryError, UnsupportedModelError
from . import inputs as _inputs
from . import memory
from .accuracy import ErrorEstimate, gram_error
from .choice import FALLBACK, PLANS, Choice, ChoiceCache, Plan, matmul_rate, predict, synchronize
from .functional import FunctionalModel, ParamSelector
from .gram import GramTiles, columns, groups
from .precision import dtype_name
from .refusals import refusal
from .structured import StructuredLayers, eligible_layers

__all__ = ["CHOICES", "PROBE_MIN_ROWS", "RESULTS", "STRATEGIES", "Measurement", "PerSampleFailure"]

STRATEGIES = ("auto", "structured", "jacrev", "vjp")
#: What a measurement is for: the Gram (and contractions) or the Jacobian; sizes the memory check and the probe.
RESULTS = ("gram", "jacobian")
#: ``auto`` times the plans only on problems of at least this many rows ``n·m``.
PROBE_MIN_ROWS = 256
#: Rows ``s·m`` of the smaller probe slice (the larger has twice as many samples).
PROBE_ROWS = 64
#: ``auto``'s choices, per model (see :class:`~diagnostics.engine.choice.ChoiceCache`).
CHOICES = ChoiceCache()


class PerSampleFailure(UnsupportedModelError):
    """``vmap`` over samples cannot run the model (``strategy="auto"`` falls back to whole-batch ``vjp``)."""


class Measurement:
    """One Jacobian/Gram computation: validated inputs, measurement mode, strategy and memory budget.

    Used as a context manager: entering sets the measurement mode (:meth:`FunctionalModel.measuring`),
    refuses a result that cannot fit the memory budget (from a forward on one or two samples, before
    any forward on the whole batch), runs the validation forward (:meth:`FunctionalModel.check_forward`)
    and chooses the plan; inside, :meth:`gram`, :meth:`jacobian_columns` and :meth:`contractions`
    compute; leaving restores the model's modes and the TF32 switches.

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
        self.choice: Choice | None = None
        self.independent = False
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
            self._require_memory(self._outputs_per_sample())
            out = self.fm.check_forward(self.x, per_sample=self.requested in ("structured", "jacrev"))
            self.m = out.shape[1]
            self.rows = self.n * self.m
            self.choice = self._choose(out)
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

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

    # -- the plan ----------------------------------------------------------------------------------
    def _choose(self, out: torch.Tensor) -> Choice:
        """Return the plan: the one asked for, or ``auto``'s (cached per model and shapes)."""
        if self.requested != "auto":
            self.independent = self.requested != "vjp"  # the per-sample check of check_forward passed
            return Choice(PLANS[self.requested], "asked for (strategy=)")
        if self.fm.mode == "batch":
            return Choice(PLANS["vjp"], "auto: in mode='batch' the samples interact, so the whole batch is "
                                        "differentiated")
        problem = self.fm.per_sample_problem(self.x, out)
        if problem:
            return Choice(PLANS["vjp"], "auto fell back to vjp over the whole batch: " + problem.split(". ")[0])
        self.independent = True
        key = self._cache_key()
        cached = CHOICES.get(self.fm.module, key)
        if cached is not None:
            return Choice(cached.plan, cached.reason + "; cached for this model and shapes", cached.predicted)
        if self.rows < PROBE_MIN_ROWS:
            plan = PLANS["structured"] if self._has_structured_layers() else PLANS["jacrev"]
            choice = Choice(plan, f"auto: {plan.label}, without timing (n·m = {self.rows} < {PROBE_MIN_ROWS}: "
                                  "the choice cannot matter)")
        else:
            choice = self._probe()
        CHOICES.put(self.fm.module, key, choice)
        return choice

    def _cache_key(self) -> tuple:
        leaves = _inputs.leaves(self.x)
        keys = tuple(self.x) if isinstance(self.x, dict) else ()
        output = self.fm.output
        selector = output if output is None or isinstance(output, (str, int)) else getattr(
            output, "__qualname__", type(output).__name__)
        return (keys, tuple((tuple(t.shape), t.dtype) for t in leaves), self.fm.dtype, self.fm.mode,
                self.fm.names, selector, self.result, self.rows, str(self.fm.device))

    def _has_structured_layers(self) -> bool:
        return bool(eligible_layers(self.fm, self.fm.names))

    def _probe(self) -> Choice:
        """Time every plan that runs on two slices of the samples; choose the fastest predicted on the whole batch."""
        s1 = min(self.n, max(1, -(-PROBE_ROWS // self.m)))
        s2 = min(self.n, 2 * s1)
        if s2 == s1:
            s1 = max(1, s2 // 2)
        structured = self._has_structured_layers()
        plans = [PLANS["structured"]] if structured else []
        plans += [PLANS["jacrev"], PLANS["vjp"]]
        rate = matmul_rate(self.fm.dtype, self.fm.device)
        predicted: dict[str, float] = {}
        ruled_out: list[str] = []
        per_sample_failure = None
        for plan in plans + ([FALLBACK] if structured else []):
            if plan is FALLBACK and per_sample_failure is None:
                continue  # only needed when vmap cannot run the model
            if plan.per_sample and per_sample_failure is not None:
                continue
            try:
                warm = self._timed_slice(plan, s1)[0]
                if predicted and warm > 2 * min(predicted.values()):
                    ruled_out.append(f"{plan.label} (slower on {s1} samples than the best on all {self.n})")
                    continue
                (t1, p1), (t2, p2) = self._timed_slice(plan, s1), self._timed_slice(plan, s2)
                pn = self._product_flops(plan, self.n)
            except PerSampleFailure as exc:
                per_sample_failure = exc
                ruled_out.append(f"{plan.label} ({_first_sentence(exc)})")
                continue
            except (DiagnosticsError, RuntimeError, NotImplementedError) as exc:
                ruled_out.append(f"{plan.label} ({type(exc).__name__}: {_first_sentence(exc)})")
                continue
            predicted[plan.label] = predict((t1, t2), (s1, s2), self.n, plan.exponent, (p1, p2, pn), rate)
        if not predicted:
            raise UnsupportedModelError("no strategy can measure this model; the attempts: " + "; ".join(ruled_out))
        best = min(predicted, key=predicted.get)
        plan = next(p for p in (*plans, FALLBACK) if p.label == best)
        reason = f"auto: {best}, the fastest by a timed probe on {s1} and {s2} samples"
        if ruled_out:
            reason += "; ruled out: " + "; ".join(ruled_out)
        return Choice(plan, reason, predicted)

    def _timed_slice(self, plan: Plan, count: int) -> tuple[float, float]:
        """Seconds to compute the result with ``plan`` on the first ``count`` samples, and its product FLOPs."""
        part = copy.copy(self)
        part.x, part.n, part.rows = _inputs.take(self.x, slice(0, count)), count, count * self.m
        part.requested, part.choice, part._layers, part.structured = plan.strategy, Choice(plan, "probe"), None, None
        synchronize(self.fm.device)
        start = time.perf_counter()
        if self.result == "gram":
            part.gram()
        else:
            part.jacobian_columns(self.fm.names)
        synchronize(self.fm.device)
        elapsed = time.perf_counter() - start
        self._probed = part  # its captured layers give the product FLOPs at other sizes
        return elapsed, self._product_flops(plan, count)

    def _product_flops(self, plan: Plan, n: int) -> float:
        """FLOPs of the Gram's products on ``n`` samples (0 for a Jacobian), from the layers of the last probe."""
        if self.result != "gram":
            return 0.0
        rows = n * self.m
        flops, covered = 0.0, set()
        layers = self._probed._layers if plan.strategy == "structured" else None
        if layers is not None:
            covered = layers.covered
            flops += sum(min(layer.rule.gram_costs(layer, self.m, n).values()) for layer in layers.layers.values())
        rest = sum(self.fm.params[k].numel() for k in self.fm.names if k not in covered)
        return flops + GramTiles.upper_fraction(rows, self.m) * 2.0 * rows**2 * rest

    def _falling_back(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``compute``; when ``auto``'s per-sample plan meets a model ``vmap`` cannot run, fall back and rerun."""
        try:
            return compute()
        except PerSampleFailure as exc:
            if self.requested != "auto" or not self.plan.per_sample:
                raise
            plan = FALLBACK if self._has_structured_layers() else PLANS["vjp"]
            self.choice = Choice(plan, f"auto fell back to {plan.label}: {_first_sentence(exc)}")
            CHOICES.put(self.fm.module, self._cache_key(), self.choice)
            return compute()

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

        def compute() -> torch.Tensor:
            names = self.fm.names
            V = torch.empty(self.rows, len(names), dtype=self.fm.dtype, device=self.fm.device)
            index = {k: i for i, k in enumerate(names)}
            done = self._structured_layers().contractions(vectors) if self.plan.strategy == "structured" else {}
            for k, v in done.items():
                V[:, index[k]] = v
            rest = tuple(k for k in names if k not in done)
            budget = max(self.budget // 2, self.rows * self.itemsize)
            for group in groups(rest, self.fm.params, self.rows * self.itemsize, budget):
                J = columns(self._generic_blocks(group), group, self.rows)
                start = 0
                for k in group:
                    size = self.fm.params[k].numel()
                    V[:, index[k]] = J[:, start : start + size] @ vectors[k].reshape(-1).to(J)
                    start += size
            return self._finite(V, "the contractions J_p θ_p")

        return self._falling_back(compute)

    def _structured_layers(self) -> StructuredLayers:
        """Return the structured layers of all measured parameters, captured once per measurement."""
        if self._layers is None:
            self._layers = StructuredLayers(self, self.fm.names)
        return self._layers

    def _generic_blocks(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Per-parameter ``(nm, *shape)`` blocks by ``jacrev`` (per sample) or whole-batch ``vjp``."""
        sub = {k: self.fm.params[k] for k in names}
        width = sum(v.numel() for v in sub.values())
        if self.plan.rest == "vjp":
            out, pull = vjp(lambda p: self.fm(p, self.x).reshape(-1), sub)
            eye = torch.eye(self.rows, dtype=out.dtype, device=out.device)
            parts = [vmap(pull)(eye[rows])[0] for rows in self._chunks(self.rows, width, factor=2)]
            return {k: torch.cat([p[k] for p in parts]) for k in names}

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
        return {k: torch.cat([p[k] for p in parts]).reshape(self.rows, *sub[k].shape) for k in names}

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

        def compute() -> torch.Tensor:
            K = GramTiles(self.rows, self.m, self.fm.dtype, self.fm.device)
            covered: set[str] = set()
            if self.plan.strategy == "structured":
                layers = self._structured_layers()
                layers.add_gram(K)
                covered = layers.covered
                self.structured = tuple(k for k in self.fm.names if k in covered)
            rest = tuple(k for k in self.fm.names if k not in covered)
            free = max(self.budget - 2 * self.rows**2 * self.itemsize, self.rows * self.itemsize)
            for group in groups(rest, self.fm.params, self.rows * self.itemsize, free):
                J = columns(self._generic_blocks(group), group, self.rows)
                K.add_products(J, J)
            return self._finite(K.finish(), "the NTK Gram")

        return self._falling_back(compute)

    def error(self, K: torch.Tensor) -> ErrorEstimate:
        """Estimate the floating-point error of the Gram ``K`` this measurement computed (:mod:`.accuracy`)."""
        return gram_error(self.fm, self.x, K, m=self.m, per_sample=self.independent)

    def _finite(self, result: torch.Tensor, what: str) -> torch.Tensor:
        """Return ``result``, refusing one with inf or NaN entries (an overflow of the compute dtype)."""
        if torch.isfinite(result).all():
            return result
        name = dtype_name(self.fm.dtype)
        raise DiagnosticsError(
            f"{what} overflowed in {name} (entries beyond ±{torch.finfo(self.fm.dtype).max:.1e} became inf or NaN): "
            "the model's derivatives are too large for this precision. Measure with dtype=torch.float64, or "
            "rescale the measured output (e.g. output=lambda o: o / 1e3)."
        )


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0][:300]
