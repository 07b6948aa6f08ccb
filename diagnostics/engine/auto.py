"""``strategy="auto"``: choose the plan of a measurement, time the candidates, fall back from ``vmap``.

:func:`choose` resolves ``auto`` for a :class:`~diagnostics.engine.measurement.Measurement` on entering
(``theory/alignment.md#setup``): whole-batch ``vjp`` in ``mode="batch"`` or when the samples interact;
the cached choice for this model and shapes; on problems of at least :data:`PROBE_MIN_ROWS` rows ``n·m``
the fastest plan by a timed probe (:func:`probe`, cost model in :mod:`~diagnostics.engine.choice`), a close
runner-up timed once on the whole problem after the first measurement when that is cheap; otherwise the
structured path without timing, and when that measurement was not quick, the plans timed once on the
whole problem (:func:`settle`: what it learns is for the next call). :func:`fall_back` replaces a
per-sample plan that met a model ``vmap`` cannot run over samples, and remembers that fact for the
model whatever ``n``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import TYPE_CHECKING

import torch

from ..errors import DiagnosticsError, UnsupportedModelError
from . import inputs as _inputs
from .choice import NO_VMAP, PLANS, Choice, ChoiceCache, PerSampleFailure, Plan, matmul_rate, predict, synchronize
from .gram import GramTiles
from .structured import eligible_layers

if TYPE_CHECKING:
    from .measurement import Measurement

__all__ = [
    "CHOICES", "PROBE_MIN_ROWS", "PROBE_ROWS", "RUNNER_UP_RATIO", "SETTLE_MAX_SECONDS", "SETTLE_MIN_SECONDS", "choose",
    "fall_back", "probe", "settle",
]

#: ``auto`` times the plans only on problems of at least this many rows ``n·m``.
PROBE_MIN_ROWS = 256
#: Rows ``s·m`` of the smaller probe slice (the larger has twice as many samples).
PROBE_ROWS = 64
#: On a smaller problem, a measurement with the plan chosen without timing that takes at least this long times
#: the plans once afterwards (:func:`settle`); a quicker one keeps its plan (the choice cannot matter).
SETTLE_MIN_SECONDS = 0.002
#: A probed plan predicted within this factor of the fastest is timed on the whole problem after the first
#: measurement (:func:`settle`), when that measurement took at most :data:`SETTLE_MAX_SECONDS`.
RUNNER_UP_RATIO = 1.5
SETTLE_MAX_SECONDS = 2.0
#: The plan for a small problem ``vmap`` cannot run: ``vjp`` over the whole batch. Without chunks the parameters
#: outside the structured layers cost every row's pull-back through the whole batch, which alone gives all of
#: ``J``; structured layers would only add their own work (measured on the zoo: 2.4–16× slower), so the
#: structured path is left to the timed probe, whose chunks make it pay.
SMALL_WITHOUT_VMAP = PLANS["vjp"]
#: ``auto``'s choices, per model (see :class:`~diagnostics.engine.choice.ChoiceCache`).
CHOICES = ChoiceCache()


def choose(job: Measurement, out: torch.Tensor) -> Choice:
    """Return the plan of ``job``: the one asked for, or ``auto``'s (cached per model and shapes).

    ``out`` is the validation forward's output; also sets ``job.independent``. The per-sample check (the
    two halves of the batch give the whole batch's outputs) runs when the choice is made; a choice
    cached for this model, shapes, dtype, mode and parameters was made after it passed.
    """
    if job.requested != "auto":
        job.independent = job.requested != "vjp"  # the per-sample check of check_forward passed
        return Choice(PLANS[job.requested], "asked for (strategy=)")
    if job.fm.mode == "batch":
        return Choice(PLANS["vjp"], "auto: in mode='batch' the samples interact, so the whole batch is differentiated")
    key = (*_model_key(job), job.result, job.n)
    cached = CHOICES.get(job.fm.module, key)
    if cached is not None:  # made after the per-sample check passed (or needing none: whole-batch vjp)
        job.independent = cached.plan != PLANS["vjp"]
        return dataclasses.replace(cached, reason=cached.reason + "; cached for this model and shapes")
    problem = job.fm.per_sample_problem(job.x, out)
    if problem:
        return Choice(PLANS["vjp"], "auto fell back to vjp over the whole batch: " + problem.split(". ")[0])
    job.independent = True
    no_vmap = CHOICES.get(job.fm.module, ("no vmap", _model_key(job)))
    if job.rows >= PROBE_MIN_ROWS:
        choice = probe(job, vmap_works=no_vmap is None)
    elif no_vmap is None:
        plan = PLANS["structured"] if _has_structured_layers(job) else PLANS["jacrev"]
        choice = Choice(plan, f"auto: {plan.label}, without timing on a small problem (n·m = {job.rows} < "
                              f"{PROBE_MIN_ROWS})", provisional=True)
    else:
        choice = Choice(SMALL_WITHOUT_VMAP, no_vmap.reason)
    CHOICES.put(job.fm.module, key, choice)
    return choice


def settle(job: Measurement, started: float) -> None:
    """After a measurement that began at ``started``: check ``auto``'s choice on the whole problem, once.

    The measurement just made keeps its result and its plan; what is learnt is cached for this model
    and shapes, so the next call takes the faster plan.

    - A small problem is measured first with the plan chosen without timing; when that took at least
      :data:`SETTLE_MIN_SECONDS`, every plan that can run it (structured, ``vmap(jacrev)``, whole-batch
      ``vjp``) is timed on the whole problem — best of two runs, a plan slower than twice the best so
      far on its first run dropped.
    - A probed problem whose runner-up was predicted within :data:`RUNNER_UP_RATIO` of the choice, and
      whose measurement took at most :data:`SETTLE_MAX_SECONDS`, has the runner-up timed once on the
      whole problem against the measurement's own time (extrapolation from slices can misorder close plans).

    Does nothing for any other choice.
    """
    choice = job.choice
    if choice is None or not (choice.provisional or choice.runner_up):
        return
    synchronize(job.fm.device)
    seconds = time.perf_counter() - started
    key = (*_model_key(job), job.result, job.n)
    job.choice = first = dataclasses.replace(choice, provisional=False, runner_up=None)
    if choice.runner_up is not None:
        CHOICES.put(job.fm.module, key, _against_runner_up(job, first, choice.runner_up, seconds))
        return
    if seconds < SETTLE_MIN_SECONDS:
        CHOICES.put(job.fm.module, key, first)
        return
    found = _Found(rate=matmul_rate(job.fm.dtype, job.fm.device))
    candidates = [job.plan] + [p for p in (PLANS["structured"], PLANS["jacrev"], PLANS["vjp"]) if p != job.plan]
    for plan in candidates:
        if plan.strategy == "structured" and not _has_structured_layers(job):
            continue
        try:
            once = _timed_slice(job, plan, job.n)[0]
            if found.beaten(once, plan, job.n, job.n):
                continue
            found.add(plan, min(once, _timed_slice(job, plan, job.n)[0]))
        except (DiagnosticsError, RuntimeError, NotImplementedError) as exc:
            found.ruled_out.append(f"{plan.label} ({type(exc).__name__}: {_first_sentence(exc)})")
    if not found.predicted:
        CHOICES.put(job.fm.module, key, first)
        return
    best = min(found.predicted, key=found.predicted.get)
    reason = (f"auto: {best}, the fastest of the plans timed on the whole problem (n·m = {job.rows}) after "
              f"its first measurement ({seconds * 1e3:.3g} ms with {job.plan.label})")
    if found.ruled_out:
        reason += "; ruled out: " + "; ".join(found.ruled_out)
    CHOICES.put(job.fm.module, key, Choice(found.plans[best], reason, found.predicted))


def _against_runner_up(job: Measurement, first: Choice, runner_up: Plan, seconds: float) -> Choice:
    """Time ``runner_up`` once on the whole problem against ``seconds`` with ``first``'s plan; return the choice."""
    if seconds > SETTLE_MAX_SECONDS:
        return first
    try:
        other = _timed_slice(job, runner_up, job.n)[0]
    except (DiagnosticsError, RuntimeError, NotImplementedError):
        return first
    times = f"{other * 1e3:.3g} ms with {runner_up.label} against {seconds * 1e3:.3g} ms with {first.plan.label}"
    timed = {runner_up.label: other, first.plan.label: seconds}
    if other < seconds:
        return Choice(runner_up, f"auto: {runner_up.label}, the probe's runner-up, faster on the whole problem "
                                 f"({times})", timed)
    return Choice(first.plan, f"{first.reason}; confirmed on the whole problem against the runner-up ({times})", timed)


def fall_back(job: Measurement, exc: PerSampleFailure) -> Choice:
    """Return the plan that replaces ``auto``'s per-sample plan after ``vmap`` failed over samples (and cache it)."""
    remembered = _remember_no_vmap(job, exc)
    choice = Choice(remembered.plan, remembered.reason.replace("auto:", "auto fell back to", 1))
    CHOICES.put(job.fm.module, (*_model_key(job), job.result, job.n), choice)
    return choice


def probe(job: Measurement, vmap_works: bool) -> Choice:
    """Time the plans that run on small slices of the samples; choose the fastest predicted on the whole batch.

    The per-sample plans (structured, ``vmap(jacrev)``) are timed on two slices and extrapolated
    (:func:`~diagnostics.engine.choice.predict`); ``vjp`` by chunks is timed on chunks of doubling size,
    each predicting the whole batch exactly (``n/c`` chunks), while that improves. When ``vmap`` cannot
    run the model over samples (``vmap_works`` false, or found here), the structured path with its
    other parameters by ``vjp`` by chunks replaces the per-sample plans. A plan slower on the first
    slice than the best prediction for the whole batch is dropped after that run.
    """
    s1 = min(job.n, max(1, -(-PROBE_ROWS // job.m)))
    s2 = min(job.n, 2 * s1)
    if s2 == s1:
        s1 = max(1, s2 // 2)
    structured = _has_structured_layers(job)
    plans = [p for p in (PLANS["structured"], PLANS["jacrev"]) if structured or p.strategy != "structured"]
    found = _Found(rate=matmul_rate(job.fm.dtype, job.fm.device))
    for plan in plans if vmap_works else ():
        if found.failure is not None:
            break
        try:
            warm = _timed_slice(job, plan, s1)[0]
            if found.beaten(warm, plan, s1, job.n):
                continue
            (t1, p1), (t2, p2) = _timed_slice(job, plan, s1), _timed_slice(job, plan, s2, keep=True)
            pn = _product_flops(job, plan, job.n)
        except PerSampleFailure as exc:
            found.failure = exc
            found.ruled_out.append(f"{plan.label} ({_first_sentence(exc)})")
            continue
        except (DiagnosticsError, RuntimeError, NotImplementedError) as exc:
            found.ruled_out.append(f"{plan.label} ({type(exc).__name__}: {_first_sentence(exc)})")
            continue
        found.add(plan, predict((t1, t2), (s1, s2), job.n, plan.exponent, (p1, p2, pn), found.rate))
    per_sample_works = vmap_works and found.failure is None
    for base in NO_VMAP if not per_sample_works else NO_VMAP[1:]:
        if structured or base.strategy != "structured":
            _chunk_search(job, base, s1, found)
    job.probed = None
    if not found.predicted:
        raise UnsupportedModelError("no strategy can measure this model; the attempts: " + "; ".join(found.ruled_out))
    ranked = sorted(found.predicted, key=found.predicted.get)
    best = ranked[0]
    if found.failure is not None:
        _remember_no_vmap(job, found.failure)
    reason = f"auto: {best}, the fastest by a timed probe on slices of {s1} samples and more"
    if found.ruled_out:
        reason += "; ruled out: " + "; ".join(found.ruled_out)
    close = len(ranked) > 1 and found.predicted[ranked[1]] <= RUNNER_UP_RATIO * found.predicted[best]
    return Choice(found.plans[best], reason, found.predicted, runner_up=found.plans[ranked[1]] if close else None)


class _Found:
    """What the probe has found so far: predictions, plans, failures."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.predicted: dict[str, float] = {}
        self.plans: dict[str, Plan] = {}
        self.ruled_out: list[str] = []
        self.failure: PerSampleFailure | None = None

    def add(self, plan: Plan, seconds: float) -> None:
        self.predicted[plan.label] = seconds
        self.plans[plan.label] = plan

    def best(self) -> float:
        return min(self.predicted.values(), default=float("inf"))

    def beaten(self, seconds: float, plan: Plan, samples: int, n: int) -> bool:
        """Whether a plan that took ``seconds`` on ``samples`` samples is slower than the best on all ``n``."""
        if seconds <= 2 * self.best():
            return False
        self.ruled_out.append(f"{plan.label} (slower on {samples} samples than the best on all {n})")
        return True


def _chunk_search(job: Measurement, base: Plan, first: int, found: _Found) -> None:
    """Time ``base`` by chunks of ``first``, ``2·first``, … samples while the predicted total improves."""
    size, best = first, None
    try:
        if found.beaten(_timed_slice(job, base, size)[0], base, size, job.n):
            return
        while True:
            seconds, flops = _timed_slice(job, base, size, keep=True)
            plan = base.chunked(size) if size < job.n else base
            total = max(seconds - flops / found.rate, 0.0) * job.n / size
            total += _product_flops(job, plan, job.n) / found.rate
            if best is not None and total >= best[0]:
                break
            best = (total, plan)
            if size >= job.n or 2 * seconds > total:  # the next chunk alone would cost more than this
                break
            size = min(job.n, 2 * size)
    except (DiagnosticsError, RuntimeError, NotImplementedError) as exc:
        found.ruled_out.append(f"{base.label} ({type(exc).__name__}: {_first_sentence(exc)})")
    if best is not None:
        found.add(best[1], best[0])


def _timed_slice(job: Measurement, plan: Plan, count: int, keep: bool = False) -> tuple[float, float]:
    """Seconds to compute ``job``'s result with ``plan`` on its first ``count`` samples, and the products' FLOPs.

    ``keep``: keep the slice's measurement on ``job.probed`` (its captured layers give the FLOPs at other sizes).
    """
    part = copy.copy(job)
    part.x, part.n, part.rows = _inputs.take(job.x, slice(0, count)), count, count * job.m
    part.requested, part.choice, part._layers, part.structured = plan.strategy, Choice(plan, "probe"), None, None
    synchronize(job.fm.device)
    start = time.perf_counter()
    if job.result == "gram":
        part.gram()
    else:
        part.jacobian_columns(job.fm.names)
    synchronize(job.fm.device)
    elapsed = time.perf_counter() - start
    job.probed = part
    flops = _product_flops(job, plan, count)
    if not keep:
        job.probed = None
    return elapsed, flops


def _product_flops(job: Measurement, plan: Plan, n: int) -> float:
    """FLOPs of the Gram's products on ``n`` samples (0 for a Jacobian), from the layers of ``job.probed``."""
    if job.result != "gram":
        return 0.0
    rows = n * job.m
    flops, covered = 0.0, set()
    layers = job.probed._layers if plan.strategy == "structured" else None
    if layers is not None:
        covered = layers.covered
        flops += sum(min(layer.rule.gram_costs(layer, job.m, n).values()) for layer in layers.layers.values())
    rest = sum(job.fm.params[k].numel() for k in job.fm.names if k not in covered)
    return flops + GramTiles.upper_fraction(rows, job.m) * 2.0 * rows**2 * rest


def _has_structured_layers(job: Measurement) -> bool:
    return bool(eligible_layers(job.fm, job.fm.names))


def _model_key(job: Measurement) -> tuple:
    """Return what ``auto``'s facts about the model depend on: input structure, per-sample shapes, dtype, mode."""
    leaves = _inputs.leaves(job.x)
    keys = tuple(job.x) if isinstance(job.x, dict) else ()
    output = job.fm.output
    selector = output if output is None or isinstance(output, (str, int)) else getattr(
        output, "__qualname__", type(output).__name__)
    return (keys, tuple((tuple(t.shape[1:]), t.dtype) for t in leaves), job.fm.dtype, job.fm.mode,
            job.fm.names, selector, str(job.fm.device))


def _remember_no_vmap(job: Measurement, exc: PerSampleFailure) -> Choice:
    """Cache that ``vmap`` cannot run this model over samples (whatever ``n``); return the choice that follows."""
    reason = f"auto: {SMALL_WITHOUT_VMAP.label}, because vmap cannot run the model over samples: {_first_sentence(exc)}"
    choice = Choice(SMALL_WITHOUT_VMAP, reason)
    CHOICES.put(job.fm.module, ("no vmap", _model_key(job)), choice)
    return choice


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0][:300]
