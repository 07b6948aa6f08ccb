"""``strategy="auto"``: on the first call little more than its plan's own time, on later calls the fastest plan.

Every plan computes the same ``J`` and ``K`` exactly (``theory/alignment.md#setup``); the choice changes the
time only. :func:`choose` resolves ``auto`` when a :class:`~diagnostics.engine.measurement.Measurement`
is entered:

- ``vjp`` over the whole batch in ``mode="batch"`` or when the samples interact (the per-sample check,
  made once per model and key);
- otherwise the fastest plan timed on the whole problem, known from this process or, through the files of
  :mod:`~diagnostics.engine.choice_store`, from an earlier one; a plan that needs ``torch.func``'s one-time
  start-up (the import of ``torch._dynamo``, about a second) waits until the judging budget below can pay
  for it, the fastest plan without it serving meanwhile;
- otherwise, untimed, the structured path when the model has layers it covers, ``vmap(jacrev)`` when it has
  none, and once ``vmap`` is known to fail over samples, ``vjp`` by chunks of :data:`CHUNK_ROWS` rows (one chunk
  up to :data:`WHOLE_ROWS` rows).

:func:`learn`, after each measurement, records its time and judges the other plans within a budget: in all,
at most :data:`JUDGING_SHARE` of the time of this problem's measurements so far. So the first call costs at
most ``1 + JUDGING_SHARE`` times its plan's own, and later calls take a faster plan as soon as one has been
timed. A plan is judged in up to three steps, the cheapest first, each of which can rule it out: a lower
bound from its Gram products' FLOPs (ruled out at :data:`BOUND_RATIO` times the fastest timed, without
running it); timed slices of the batch, extrapolated to the whole (:func:`~diagnostics.engine.choice.predict`,
ruled out at :data:`SLICE_RATIO` times); runs on the whole problem, taking turns with the fastest plan (so
that a busy machine slows both alike). Only plans timed on the whole problem are chosen. :func:`fall_back`
replaces a per-sample plan that met a model ``vmap`` cannot run over samples.
"""

from __future__ import annotations

import copy
import importlib
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import DiagnosticsError
from . import choice_store
from . import inputs as _inputs
from .choice import NO_VMAP, PLANS, Choice, Knowledge, PerSampleFailure, Plan, matmul_rate, predict, synchronize
from .functional import PerModel
from .gram import GramTiles
from .precision import dtype_name

if TYPE_CHECKING:
    from .measurement import Measurement

__all__ = [
    "BOUND_RATIO", "CHOICES", "CHUNK_ROWS", "JUDGING_SHARE", "RATE_GUESS", "SLICE_MIN_SAMPLES", "SLICE_MIN_SECONDS",
    "SLICE_RATIO", "STARTUP_GUESS", "WHOLE_ROWS", "choose", "fall_back", "knowledge", "learn",
]

#: The share of the measurements' time that judging other plans may add, in all, for one problem.
JUDGING_SHARE = 0.4
#: A plan whose Gram products alone would take this many times the fastest timed plan is ruled out untimed.
BOUND_RATIO = 2.0
#: A plan predicted from timed slices to take this many times the fastest timed plan is ruled out.
SLICE_RATIO = 1.5
#: Slices are ``n/SLICE_MIN_SAMPLES`` and twice as many samples; problems of fewer samples, or whose fastest plan
#: takes less than :data:`SLICE_MIN_SECONDS` (fixed costs would dominate a slice's time), are timed whole only.
SLICE_MIN_SAMPLES = 16
SLICE_MIN_SECONDS = 0.05
#: Rows ``c·m`` of a chunk of the untimed ``vjp``-by-chunks plan (the chunk search refines ``c``): few, since each
#: row's backward pass runs through the whole chunk; a problem of at most :data:`WHOLE_ROWS` rows is one chunk
#: (there the fixed cost of a chunk weighs more).
CHUNK_ROWS = 32
WHOLE_ROWS = 128
#: Seconds assumed for ``torch.func``'s one-time start-up before it has been measured on this machine.
STARTUP_GUESS = 1.0
#: Seconds assumed for timing the rate of matrix products before it has been measured on this machine.
RATE_GUESS = 0.005
#: ``auto``'s knowledge, per model and problem (:class:`~diagnostics.engine.choice.Knowledge`).
CHOICES = PerModel()
#: The cost of one slices step, as a fraction of the plan's time on the whole problem.
_SLICES_COST = 0.25


def choose(job: Measurement) -> Choice:
    """Return the plan of ``job``: the one asked for, or ``auto``'s; sets ``job.independent``."""
    if job.requested != "auto":
        job.independent = job.requested != "vjp"  # the per-sample check passed on entering
        return Choice(PLANS[job.requested], "asked for (strategy=)")
    if job.fm.mode == "batch":
        return Choice(PLANS["vjp"], "auto: in mode='batch' the samples interact, so the whole batch is differentiated")
    problem = job.per_sample_problem()
    if problem:
        return Choice(PLANS["vjp"], "auto fell back to vjp over the whole batch: " + problem.split(". ")[0])
    job.independent = True
    know = knowledge(job)
    waiting = None
    for label in sorted(know.timed, key=know.timed.get):
        if _ruled_out(know, know.plans[label]):
            continue
        plan, startup = know.plans[label], _startup(job, know.plans[label])
        if startup and startup > _budget(know):
            waiting = waiting or (label, startup)
            continue
        if startup:
            know.spent += _pay_startup(job)
        how = "remembered from an earlier process" if know.measured == 0 else "timed in this process"
        reason = f"auto: {label}, the fastest of the plans timed on the whole problem ({how})"
        if waiting:
            reason += (f"; {waiting[0]} waits for torch.func's one-time start-up ({waiting[1]:.2g} s, not yet paid "
                       "in this process), which the time spent judging plans will pay")
        return _choice(know, plan, reason)
    plan = _default(job, know)
    if _startup(job, plan):  # paid apart, so that the measurement's time, which auto records, does not include it
        _pay_startup(job)
    if know.no_vmap:
        reason = f"auto: {plan.label}, because vmap cannot run the model over samples: {know.no_vmap}"
    else:
        reason = f"auto: {plan.label}, untimed (the default before any plan is timed on this problem)"
    return _choice(know, plan, reason)


def learn(job: Measurement, seconds: float) -> None:
    """After a measurement with ``auto``'s plan that took ``seconds``: record it, and judge other plans within budget.

    What is learnt is kept for this model and problem, and written to the on-disk cache for later processes.
    """
    if job.requested != "auto" or not job.independent:
        return
    know = knowledge(job)
    new = not know.timed
    know.time(job.plan, seconds)
    know.measured += seconds
    if _judge(job, know) or new:
        choice_store.write(_digest(job), know.to_dict())
    job.choice.settled = _next_step(job, know) is None


def fall_back(job: Measurement, exc: PerSampleFailure) -> Choice:
    """Return the plan that replaces ``auto``'s per-sample plan after ``vmap`` failed over samples (and remember it)."""
    know = knowledge(job)
    _no_vmap(job, know, exc)
    choice_store.write(_digest(job), know.to_dict())
    plan = _default(job, know)
    return _choice(know, plan, f"auto fell back to {plan.label}, because vmap cannot run the model over samples: "
                               f"{know.no_vmap}")


def knowledge(job: Measurement) -> Knowledge:
    """Return what ``auto`` knows of ``job``'s problem: from this process, else from the on-disk cache, else nothing."""
    key = (job.key, job.result)
    know = CHOICES.get(job.fm.module, key)
    if know is None:
        stored = choice_store.read(_digest(job))
        try:
            know = Knowledge.from_dict(stored) if stored is not None else Knowledge()
        except (TypeError, ValueError, KeyError, AttributeError):  # written by another version: start afresh
            know = Knowledge()
        CHOICES.put(job.fm.module, key, know)
    return know


def _choice(know: Knowledge, plan: Plan, reason: str) -> Choice:
    if know.ruled_out:
        reason += "; ruled out: " + "; ".join(f"{label} ({why})" for label, why in know.ruled_out.items())
    return Choice(plan, reason, know.times())


def _default(job: Measurement, know: Knowledge) -> Plan:
    """Return the plan taken untimed: structured, else ``vmap(jacrev)``; without ``vmap``, ``vjp`` by chunks."""
    if not know.no_vmap:
        return PLANS["structured"] if job.eligible else PLANS["jacrev"]
    if _structured_alone(job):  # the rest by vjp: a layer the path finds it cannot cover at run time needs no vmap
        return NO_VMAP[0]
    base = NO_VMAP[1]  # the structured layers would only add work to vjp over the same chunks until timed
    return _chunked(job, base, know.chunks.get(base.label) or _default_chunk(job))


def _default_chunk(job: Measurement) -> int:
    """Return the samples per chunk of the untimed ``vjp`` by chunks (all of them up to :data:`WHOLE_ROWS` rows)."""
    return job.n if job.rows <= WHOLE_ROWS else max(1, -(-CHUNK_ROWS // job.m))


def _chunked(job: Measurement, base: Plan, chunk: int) -> Plan:
    return base.chunked(chunk) if chunk < job.n else base


# -- judging -------------------------------------------------------------------------------------------------
def _budget(know: Knowledge) -> float:
    return JUDGING_SHARE * know.measured - know.spent


def _judge(job: Measurement, know: Knowledge) -> bool:
    """Take judging steps, cheapest first, while the budget allows; return whether any was taken."""
    judged = False
    while (step := _next_step(job, know)) is not None and step[0] <= _budget(know):
        cost, plan, run = step
        start = time.perf_counter()
        if plan is not None and _startup(job, plan):  # paid apart, so that no timing includes it
            _pay_startup(job)
        run()
        know.spent += time.perf_counter() - start
        judged = True
    return judged


def _next_step(job: Measurement, know: Knowledge) -> tuple[float, Plan | None, Callable[[], None]] | None:
    """Return the cheapest judging step left, its cost estimated in seconds; ``None`` when every plan is judged."""
    best = know.fastest()
    steps = []
    for plan, family in _candidates(job, know):
        if _ruled_out(know, plan) or (not family and plan.label in know.timed):
            continue
        startup = _startup(job, plan)
        if plan.label not in know.bounds and _bounded(job, plan):
            rate_known = _rate_known(job)
            steps.append((0.0 if rate_known else RATE_GUESS, None, lambda p=plan: _bound(job, know, p)))
            continue
        estimate = max(know.bounds.get(plan.label, 0.0), best)
        if family:
            cost = _SLICES_COST * estimate
            steps.append((startup + cost, plan, lambda p=plan, c=cost: _chunk_search(job, know, p, c)))
        elif plan.label not in know.predicted and _sliced(job, know):
            steps.append((startup + _SLICES_COST * estimate, plan, lambda p=plan: _slices(job, know, p)))
        else:
            cost = startup + 2 * (know.predicted.get(plan.label, estimate) + best)
            steps.append((cost, plan, lambda p=plan: _whole(job, know, p)))
    return min(steps, key=lambda s: s[0], default=None)


def _candidates(job: Measurement, know: Knowledge) -> list[tuple[Plan, bool]]:
    """Return the plans to judge as ``(plan, family)``: a family is ``vjp`` by chunks, its chunk not yet searched."""
    if know.no_vmap:
        plans = [PLANS["structured"]] if _structured_alone(job) else []
        bases = ([NO_VMAP[0]] if job.eligible and not plans else []) + [NO_VMAP[1]]
    else:
        plans, bases = ([PLANS["structured"]] if job.eligible else []) + [PLANS["jacrev"]], [NO_VMAP[1]]
    found = [(p, False) for p in plans]
    for base in bases:
        if base.label in know.chunks:
            found.append((_chunked(job, base, know.chunks[base.label]), False))
        elif _sliced(job, know):
            found.append((base, True))
        else:  # too few samples for a search: the default chunk
            found.append((_chunked(job, base, _default_chunk(job)), False))
    return found


def _sliced(job: Measurement, know: Knowledge) -> bool:
    """Whether plans are judged on slices before the whole problem (enough samples, and time for slices to tell)."""
    return job.n >= SLICE_MIN_SAMPLES and know.fastest() >= SLICE_MIN_SECONDS


def _ruled_out(know: Knowledge, plan: Plan) -> bool:
    """Whether ``plan`` (or, for ``vjp`` by chunks, its whole family) is ruled out."""
    return plan.label in know.ruled_out or (plan.chunk > 0 and Plan(plan.strategy, plan.rest).label in know.ruled_out)


def _bounded(job: Measurement, plan: Plan) -> bool:
    """Whether the Gram products of ``plan`` are known before running it (every parameter by generic columns)."""
    return job.result == "gram" and plan.strategy != "structured"


def _bound(job: Measurement, know: Knowledge, plan: Plan) -> None:
    """Bound ``plan``'s time from below by its Gram products; rule it out when that alone is too slow."""
    seconds = _product_flops(job, plan, job.n) / _rate(job)
    know.bounds[plan.label] = seconds
    know.plans[plan.label] = plan
    if seconds >= BOUND_RATIO * know.fastest():
        know.rule_out(plan, f"its Gram products alone would take {seconds * 1e3:.3g} ms, ≥ {BOUND_RATIO:g}× the "
                            f"fastest timed, {know.fastest() * 1e3:.3g} ms")


def _slices(job: Measurement, know: Knowledge, plan: Plan) -> None:
    """Time ``plan`` on two slices of the batch and predict the whole; rule it out when predicted too slow.

    A first run on the smaller slice absorbs one-time costs; a plan whose first run alone, scaled to the whole
    batch, would take ``2 · SLICE_RATIO`` times the fastest plan is ruled out then.
    """
    s1 = max(1, job.n // SLICE_MIN_SAMPLES)
    s2, best = 2 * s1, know.fastest()
    try:
        warm = _timed_slice(job, plan, s1)[0]
        if warm * job.n / s1 >= 2 * SLICE_RATIO * best:
            know.rule_out(plan, f"{warm * 1e3:.3g} ms on {s1} of {job.n} samples, against {best * 1e3:.3g} ms for "
                                "the fastest on all")
            return
        (t1, p1), (t2, p2) = _timed_slice(job, plan, s1), _timed_slice(job, plan, s2, keep=True)
        pn = _product_flops(job, plan, job.n)
    except Exception as exc:  # noqa: BLE001 - a plan that cannot run is ruled out, saying why
        _failed(job, know, plan, exc)
        return
    finally:
        job.probed = None
    seconds = predict((t1, t2), (s1, s2), job.n, plan.exponent, (p1, p2, pn), _rate(job))
    if seconds >= SLICE_RATIO * best:
        know.rule_out(plan, f"predicted {seconds * 1e3:.3g} ms from slices of {s1} and {s2} samples, ≥ "
                            f"{SLICE_RATIO:g}× the fastest timed")
    else:
        know.predict(plan, seconds)


def _chunk_search(job: Measurement, know: Knowledge, base: Plan, allowance: float) -> None:
    """Time ``base`` by chunks of doubling, else halving, size while the predicted whole improves; keep the best.

    A chunk is a slice of the batch, so ``n/c`` times its time (less its Gram products) is the whole batch's.
    The search starts at ``n/SLICE_MIN_SAMPLES`` samples and goes up while larger chunks are faster (fixed costs
    per chunk dominate), else down while smaller ones are (each row's backward pass runs through the whole chunk,
    so its cost grows with the chunk: a model ``vmap`` cannot run over samples often wants chunks of a few
    samples); it stops before a chunk would take it past ``allowance`` seconds.
    """
    rate, fastest = _rate(job), know.fastest()

    def timed(size: int) -> tuple[float, float]:
        """Return the whole batch's predicted seconds by chunks of ``size`` samples, and the chunk's own seconds."""
        seconds, flops = _timed_slice(job, base, size, keep=True)
        return max(seconds - flops / rate, 0.0) * job.n / size + _product_flops(job, base, job.n) / rate, seconds

    start = max(1, job.n // SLICE_MIN_SAMPLES)
    try:
        total, first = timed(start)
        best, used = (total, start), first
        for factor in (2.0, 0.5):  # up while larger chunks are faster; down from the start if none was
            size, seconds = start, first
            while used + factor * seconds <= allowance:
                following = min(job.n, int(size * factor))
                if following in (0, size):
                    break
                size = following
                total, seconds = timed(size)
                used += seconds
                if total >= best[0]:
                    break
                best = (total, size)
            if best[1] != start:
                break
    except Exception as exc:  # noqa: BLE001 - a plan that cannot run is ruled out, saying why
        _failed(job, know, base, exc)
        return
    finally:
        job.probed = None
    know.chunks[base.label] = best[1]
    plan = _chunked(job, base, best[1])
    if best[0] >= SLICE_RATIO * fastest:
        know.rule_out(base, f"predicted {best[0] * 1e3:.3g} ms with chunks of {best[1]} samples, ≥ "
                            f"{SLICE_RATIO:g}× the fastest timed")
    elif plan.label not in know.timed:
        know.predict(plan, best[0])


def _whole(job: Measurement, know: Knowledge, plan: Plan) -> None:
    """Time ``plan`` on the whole problem against the fastest plan, the two taking turns, twice.

    Its time is recorded as the fastest plan's recorded time scaled by the ratio of the two plans' faster
    runs: taking turns, the two meet the same spells of a busy machine, so the ratio holds where each
    time alone would not.
    """
    best = min((k for k in know.timed if not _ruled_out(know, know.plans[k])), key=know.timed.get)
    runs: dict[str, list[float]] = {plan.label: [], best: []}
    try:
        for _ in range(2):
            for each in (plan, know.plans[best]):
                runs[each.label].append(_timed_slice(job, each, job.n)[0])
    except Exception as exc:  # noqa: BLE001 - a plan that cannot run is ruled out, saying why
        _failed(job, know, plan, exc)
        return
    know.time(plan, know.timed[best] * min(runs[plan.label]) / max(min(runs[best]), 1e-12))


def _failed(job: Measurement, know: Knowledge, plan: Plan, exc: Exception) -> None:
    """Rule out a plan that failed; a ``vmap`` failure rules out every per-sample plan."""
    if isinstance(exc, PerSampleFailure):
        _no_vmap(job, know, exc)
    elif isinstance(exc, (DiagnosticsError, RuntimeError, NotImplementedError)):
        know.rule_out(plan, f"{type(exc).__name__}: {_first_sentence(exc)}")
    else:
        raise exc


def _no_vmap(job: Measurement, know: Knowledge, exc: PerSampleFailure) -> None:
    """Remember that ``vmap`` cannot run the model over samples; rule out the plans that need it."""
    know.no_vmap = _first_sentence(exc)
    for plan in (PLANS["jacrev"], *(() if _structured_alone(job) else (PLANS["structured"],))):
        know.rule_out(plan, "vmap cannot run the model over samples")


def _structured_alone(job: Measurement) -> bool:
    """Whether the structured path's layers hold every measured parameter (it then needs neither vmap nor vjp)."""
    return job.eligible.issuperset(job.fm.names)


def _timed_slice(job: Measurement, plan: Plan, count: int, keep: bool = False) -> tuple[float, float]:
    """Seconds to compute ``job``'s result with ``plan`` on its first ``count`` samples, and the products' FLOPs.

    ``keep``: keep the slice's measurement on ``job.probed`` (its captured layers give the FLOPs at other sizes).
    """
    part = copy.copy(job)
    if count < job.n:
        part.x, part.n, part.rows = _inputs.take(job.x, slice(0, count)), count, count * job.m
    part.requested, part.choice, part._layers, part.structured = plan.strategy, Choice(plan, "judged"), None, None
    part._outputs = None
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
    layers = job.probed._layers if plan.strategy == "structured" and job.probed is not None else None
    if layers is not None:
        covered = layers.covered
        flops += sum(min(layer.rule.gram_costs(layer, job.m, n).values()) for layer in layers.layers.values())
    rest = sum(job.fm.params[k].numel() for k in job.fm.names if k not in covered)
    return flops + GramTiles.upper_fraction(rows, job.m) * 2.0 * rows**2 * rest


# -- one-time costs of the machine: torch.func's start-up, the rate of matrix products ----------------------------
_MACHINES: dict[str, dict] = {}


def _machine(job: Measurement) -> tuple[str, dict]:
    """Return the machine's facts (``startup`` seconds, ``rates`` by dtype), from this process or the on-disk cache."""
    digest = choice_store.problem_digest(("machine", choice_store.machine_key(job.fm.device)))
    if digest not in _MACHINES:
        stored = choice_store.read(digest) or {}
        rates = stored.get("rates") if isinstance(stored.get("rates"), dict) else {}
        startup = stored.get("startup")
        _MACHINES[digest] = {"rates": {str(k): float(v) for k, v in rates.items() if isinstance(v, (int, float))},
                             "startup": float(startup) if isinstance(startup, (int, float)) else None}
    return digest, _MACHINES[digest]


def _rate_known(job: Measurement) -> bool:
    return dtype_name(job.fm.dtype) in _machine(job)[1]["rates"]


def _rate(job: Measurement) -> float:
    """FLOP/s of matrix products in the job's dtype on its device (:func:`~diagnostics.engine.choice.matmul_rate`)."""
    digest, facts = _machine(job)
    name = dtype_name(job.fm.dtype)
    if name not in facts["rates"]:
        facts["rates"][name] = matmul_rate(job.fm.dtype, job.fm.device)
        choice_store.write(digest, facts)
    return facts["rates"][name]


def _uses_torch_func(job: Measurement, plan: Plan) -> bool:
    """Whether ``plan`` differentiates some parameters with ``torch.func`` (all but the structured layers')."""
    return plan.strategy != "structured" or not _structured_alone(job)


def _startup(job: Measurement, plan: Plan) -> float:
    """Seconds of ``torch.func``'s one-time start-up that running ``plan`` would pay now (0 once paid)."""
    if "torch._dynamo" in sys.modules or not _uses_torch_func(job, plan):
        return 0.0
    startup = _machine(job)[1]["startup"]
    return STARTUP_GUESS if startup is None else startup


def _pay_startup(job: Measurement) -> float:
    """Import what ``torch.func``'s first transform imports (``torch._dynamo``); return the seconds it took."""
    start = time.perf_counter()
    importlib.import_module("torch._dynamo")
    seconds = time.perf_counter() - start
    digest, facts = _machine(job)
    facts["startup"] = seconds
    choice_store.write(digest, facts)
    return seconds


def _digest(job: Measurement) -> str:
    return choice_store.problem_digest((choice_store.machine_key(job.fm.device), job.key, job.result))


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0][:300]

