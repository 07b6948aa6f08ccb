"""The zoo benchmark: ``auto`` against every strategy and the torch.func recipe, first call and steady.

    python -m bench.zoo                          # every zoo model that imports here, n = 32
    python -m bench.zoo --models hf-bert-padding gru-classifier --n 64
    python -m bench.zoo --quick                  # smoke run: two models, n = 4, one repeat, no fresh processes

For each model of ``tests/zoo/registry.py`` (float32, as users have them), every method computes the
Gram ``K`` of the same inputs. Reported: the first call in a fresh process (:mod:`bench.first_call`; ``auto``
with nothing cached, and with what that call cached), and the steady median of ``--repeats`` calls, the
methods taking turns, after warm-up calls (``auto``'s until it has judged every plan); the maximum relative
difference to the per-output autograd loop in float64, what ``auto`` chose and why, and ``auto`` against the
fastest. A method that cannot run the model says why. Then the cost of ``check_cms`` against
``check_alignment`` on the same probe (both in float64, their CPU default). The process's own ``auto``
starts with an empty cache folder. Results: docs/benchmarks.md, "Models people bring".
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.func import functional_call, jacrev, vmap

from bench.first_call import AUTO_CACHED, AUTO_COLD, first_calls, settle_auto
from bench.ntk import machine
from diagnostics import check_alignment, check_cms, ntk_gram, reference_gram
from diagnostics.engine import inputs as _inputs
from diagnostics.engine.choice_store import CACHE_ENV

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from zoo.registry import REGISTRY  # noqa: E402

STRATEGIES = ("auto", "structured", "jacrev", "vjp")
#: The methods a user can name whose first calls ``auto``'s is held to.
OUR_PLANS = ("ours: structured", "ours: jacrev", "ours: vjp")


def torch_func_recipe(model, x, output):
    """The PyTorch tutorial's empirical NTK (``vmap(jacrev)`` per sample, einsum per parameter), for any inputs."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def single(p, xi):
        batch = _inputs.map_inputs(lambda t: t.unsqueeze(0), xi)
        out = _inputs.call(lambda *a, **k: functional_call(model, (p, buffers), a, k), batch)
        return _inputs.select_output(out, output, 1)[0]

    jac = vmap(jacrev(single), (None, 0))(params, x)
    n, m = next(iter(jac.values())).shape[:2]
    blocks = [j.flatten(2) for j in jac.values()]
    return torch.stack([torch.einsum("Naf,Mbf->NaMb", j, j) for j in blocks]).sum(0).reshape(n * m, n * m)


def _timed(fns: dict, repeats: int) -> dict:
    """Warm each method up once, then time them in turn ``repeats`` times (interleaved: a slow spell of the
    machine hits every method alike); return ``name → (K, median seconds)`` or ``name → exception``."""
    results, times = {}, {}
    for name, fn in fns.items():
        try:
            results[name] = fn()  # warm-up (auto's probe)
            times[name] = []
        except Exception as exc:  # noqa: BLE001 - a method that cannot run the model is reported
            results[name] = exc
    for _ in range(repeats):
        for name in times:
            start = time.perf_counter()
            results[name] = fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (results[name], statistics.median(times[name])) if name in times else results[name]
            for name in fns}


def run(args: argparse.Namespace) -> list[dict]:
    importlib.import_module("torch._dynamo")  # torch.func started up: the steady state of a process that used it
    rows = []
    for key in args.models:
        rows += _bench_model(key, args)
        print(f"  {key} done", file=sys.stderr, flush=True)
    return rows


def methods(entry, model, x) -> dict:
    """Every method of the table on one zoo model: our strategies and, in eval mode, the torch.func recipe."""
    kwargs = {"output": entry.output, "mode": entry.mode}
    found = {f"ours: {s}": (lambda s=s: ntk_gram(model, x, strategy=s, **kwargs)) for s in STRATEGIES}
    if entry.mode == "eval":
        found["torch.func recipe"] = lambda: torch_func_recipe(model, x, entry.output)
    return found


def _bench_model(key: str, args: argparse.Namespace) -> list[dict]:
    """Every method on one zoo model (first call in a fresh process, steady median), then check_cms against
    check_alignment."""
    entry = REGISTRY[key]
    missing = entry.available()
    if missing:
        return [{"model": key, "method": "—", "note": missing}]
    model, x = entry.model(), entry.data(args.n)
    kwargs = {"output": entry.output, "mode": entry.mode}
    ref = reference_gram(model, x, dtype=torch.float64, **kwargs)
    fns = methods(entry, model, x)
    first = first_calls("zoo", key, args.n, list(fns)) if args.first_call else {}
    calls, _, choice = settle_auto(model, x, kwargs)
    rows = []
    for name, outcome in _timed(fns, args.repeats).items():
        row = {"model": key, "method": name, "rows": ref.shape[0]}
        labels = (AUTO_COLD, AUTO_CACHED) if name == "ours: auto" else (name,)
        row["first"] = {label: first[label] for label in labels if label in first}
        if isinstance(outcome, Exception):
            row["note"] = f"fails: {type(outcome).__name__}: {str(outcome).splitlines()[0][:90]}"
        else:
            K, seconds = outcome
            row["time_s"] = seconds
            row["rel_diff"] = float((K.double() - ref).abs().max() / ref.abs().max())
            if name == "ours: auto":
                row["note"] = f"auto chose {choice.plan.label} (settled after {calls} calls)"
                row["why"] = choice.reason
        rows.append(row)
    if args.checks:
        n = _inputs.batch_size(_inputs.normalise_inputs(x))
        data = (x, torch.arange(n) % 3)
        (_, align), (_, cms) = _timed({
            "align": lambda: check_alignment(model, data, loss="ce", probe_size=None, **kwargs),
            "cms": lambda: check_cms(model, x, **kwargs),
        }, args.repeats).values()
        rows.append({"model": key, "method": "check_cms / check_alignment", "rows": ref.shape[0],
                     "note": f"{cms:.3f} s / {align:.3f} s = {cms / align:.2f} (float64, same probe)"})
    return rows


def _first(r: dict, label: str) -> float | None:
    return r.get("first", {}).get(label, {}).get("seconds")


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The markdown table and the summary of ``auto`` against the fastest method that worked."""
    lines = [
        f"Machine: {machine()}; float32, n = {args.n} samples per model; first call: one fresh process per method "
        f"(auto: with nothing cached / with what that call cached); steady: median of {args.repeats}, the methods "
        "taking turns, after warm-up calls (auto's until it had judged every plan).",
        "",
        "| model | n·m | method | first call (s) | steady (s) | auto / this, steady | max rel. diff to float64 loop "
        "| note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    auto = {r["model"]: r.get("time_s") for r in rows if r["method"] == "ours: auto"}
    for r in rows:
        t, a = r.get("time_s"), auto.get(r["model"])
        ratio = f"{a / t:.2f}" if t and a else "—"
        time_s = f"{t:.3f}" if t is not None else "—"
        diff = f"{r['rel_diff']:.1e}" if "rel_diff" in r else "—"
        first = " / ".join(f"{v:.3f}" for v in (_first(r, k) for k in r.get("first", {})) if v is not None) or "—"
        lines.append(f"| {r['model']} | {r.get('rows', '—')} | {r['method']} | {first} | {time_s} | {ratio} | {diff} "
                     f"| {r.get('note', '')} |")
    lines += ["", "auto against the fastest (first call: our strategies' own first calls; steady: every method that "
              "worked; 1.00 = as fast, above 1 = slower):"]
    for model in dict.fromkeys(r["model"] for r in rows):
        here = [r for r in rows if r["model"] == model]
        auto_row = next((r for r in here if r["method"] == "ours: auto"), None)
        if auto_row is None:
            continue
        parts = []
        firsts = [(r["method"], _first(r, r["method"])) for r in here if r["method"] in OUR_PLANS]
        firsts = [(m, v) for m, v in firsts if v is not None]
        cold, cached = _first(auto_row, AUTO_COLD), _first(auto_row, AUTO_CACHED)
        if firsts and cold is not None and cached is not None:
            name, best = min(firsts, key=lambda mv: mv[1])
            parts.append(f"first call {cold:.3f} s with nothing cached, {cached:.3f} s cached; fastest {name} "
                         f"{best:.3f} s → {cold / best:.2f} / {cached / best:.2f}")
        timed = [r for r in here if r.get("time_s")]
        if auto.get(model) and timed:
            best_row = min(timed, key=lambda r: r["time_s"])
            parts.append(f"steady {auto[model]:.3f} s, fastest {best_row['method']} {best_row['time_s']:.3f} s → "
                         f"{auto[model] / best_row['time_s']:.2f}")
        lines.append(f"- {model}: " + "; ".join(parts))
    lines += ["", "Why auto chose what it chose (the manifest's words):"]
    lines += [f"- {r['model']}: {r['why']}" for r in rows if "why" in r]
    lines += ["", "Command: `python -m bench.zoo " + " ".join(sys.argv[1:]) + "`"]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    parser.add_argument("--n", type=int, default=32, help="samples per model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: two models, n = 4, one repeat")
    parser.add_argument("--no-checks", dest="checks", action="store_false",
                        help="skip timing check_cms against check_alignment")
    parser.add_argument("--no-first-call", dest="first_call", action="store_false",
                        help="skip the first calls in fresh processes (one process per method and model)")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.n, args.repeats, args.first_call = ["gru-classifier", "functional-head"], 4, 1, False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as cache:  # auto starts with nothing cached
        os.environ[CACHE_ENV] = cache
        text = table(run(args), args)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
