"""Empirical-NTK Gram benchmark: our engine and its peers, side by side (docs/benchmarks.md).

    python -m bench.ntk                 # the default table (MLP, CNN, ResNet-BN; n·m = 1000, 5000)
    python -m bench.ntk --quick         # smoke run: tiny sizes, one repeat, no memory column, no fresh processes
    python -m bench.ntk --device cuda   # the same on a GPU

Every method computes ``K = J Jᵀ`` (float32, eval mode) for the same model and inputs. Reported: our
strategies' and the torch.func recipe's first call in a fresh process (:mod:`bench.first_call`), the
median wall time over repeats (after one warm-up call; ``auto``'s warm-up goes on until it has judged
every plan, in a process whose ``auto`` started with an empty cache folder), peak memory (maximum resident set size
increase in a fresh forked process per method on CPU; ``torch.cuda.max_memory_allocated`` on GPU),
the maximum relative difference ``max|K − K_ref| / max|K_ref|`` to a float64 reference (our
structured path in float64, itself checked against the per-output autograd loop at the smallest
size), and the achieved rate: the FLOPs of the cheapest exact method (:mod:`bench.flops`) divided by
the time, as a fraction of one large float32 ``A @ B`` measured in the same process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import importlib
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from bench.first_call import AUTO_CACHED, AUTO_COLD, first_calls, settle_auto
from bench.flops import cheapest_flops, matmul_peak
from bench.methods import METHODS, NotApplicable, autograd_loop
from bench.models import MODELS, M, build
from diagnostics import InsufficientMemoryError, ntk_gram
from diagnostics.engine.choice import synchronize
from diagnostics.engine.choice_store import CACHE_ENV

PEERS = ("torch.func recipe", "autograd loop", "nngeometry", "curvlinops", "BackPACK")
#: Our strategies a user can name: ``auto``'s first call is held to the fastest of their first calls.
OUR_PLANS = ("ours: structured", "ours: jacrev", "ours: vjp")
#: The methods whose first call in a fresh process is timed (``--first-call``).
FIRST_CALL = ("ours: auto", *OUR_PLANS, "torch.func recipe")
SMALL = 1000  # largest n·m for methods that apply at small sizes only


@dataclass
class Row:
    model: str
    rows: int
    method: str
    time_s: float | None = None
    runs: int = 0
    rel_diff: float | None = None
    rate: float | None = None  # fraction of the matmul peak
    memory_mib: float | None = None
    first: dict | None = None  # first call in a fresh process: label → seconds
    note: str = ""


def machine() -> str:
    """CPU model and cores (``lscpu``), or the GPU name."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        name = fields.get("Model name", platform.processor()).strip()
    except (OSError, subprocess.CalledProcessError):
        name = platform.processor()
    threads = torch.get_num_threads()
    return f"{name}, {os.cpu_count()} logical cores, torch {torch.__version__}, {threads} threads"


def _timed(fn, model, x, device):
    synchronize(torch.device(device))
    start = time.perf_counter()
    K = fn(model, x)
    synchronize(torch.device(device))
    return K, time.perf_counter() - start


def _peak_memory_child(model_name: str, n: int, method: str) -> float:
    """Run one method once in this (fresh) process; return its resident-set increase in MiB."""
    model, x = build(model_name, n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    METHODS[method][0](model, x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def _gpu_peak(fn, model, x) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(model, x)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    importlib.import_module("torch._dynamo")  # torch.func started up: the steady state of a process that used it
    device = args.device
    name = machine() if device == "cpu" else torch.cuda.get_device_name()
    info = {"machine": name, "load_start": os.getloadavg()}
    info["peak"] = matmul_peak(device)
    rows: list[Row] = []
    for model_name in args.models:
        previous: dict[str, tuple[int, float]] = {}
        for size in args.sizes:
            n = size // M
            model, x = build(model_name, n, device)
            ref = ntk_gram(copy.deepcopy(model).double(), x.double(), strategy="structured")
            if size == args.sizes[0]:
                loop = autograd_loop(copy.deepcopy(model).double(), x.double())
                info.setdefault("reference_check", {})[model_name] = float(
                    (ref - loop).abs().max() / loop.abs().max()
                )
            flops = cheapest_flops(model, x)
            methods = [m for m in FIRST_CALL if m in args.methods] if args.first_call and size <= SMALL else []
            fresh = first_calls("ntk", model_name, size, methods)
            calls, _, choice = settle_auto(model, x, {})
            chose = f"auto chose {choice.plan.label} (settled after {calls} calls)"
            for method in args.methods:
                fn, large = METHODS[method]
                row = Row(model_name, size, method)
                labels = (AUTO_COLD, AUTO_CACHED) if method == "ours: auto" else (method,)
                row.first = {k: fresh[k]["seconds"] for k in labels if "seconds" in fresh.get(k, {})}
                rows.append(row)
                if not large and size > SMALL:
                    row.note = f"small sizes only (n·m ≤ {SMALL})"
                    continue
                if method in previous:
                    last_size, last_time = previous[method]
                    predicted = last_time * (size / last_size) ** 2
                    if predicted > args.max_seconds:
                        row.note = f"skipped: predicted ≈ {predicted:.0f} s (> --max-seconds)"
                        continue
                try:
                    K, first = _timed(fn, model, x, device)
                except NotApplicable as exc:
                    row.note = f"does not apply: {exc}"[:120]
                    continue
                except (torch.OutOfMemoryError, InsufficientMemoryError) as exc:  # on a GPU: the next method runs
                    row.note = f"out of memory: {exc}"[:120]
                    continue
                times = [first] if first > args.single_run_above else [
                    _timed(fn, model, x, device)[1] for _ in range(args.repeats)
                ]
                row.time_s, row.runs = statistics.median(times), len(times)
                row.rel_diff = float((K.double() - ref).abs().max() / ref.abs().max())
                row.rate = flops / row.time_s / info["peak"]
                row.note = chose if method == "ours: auto" else row.note
                previous[method] = (size, row.time_s)
                if device != "cpu":
                    row.memory_mib = _gpu_peak(fn, model, x)
                del K
            print(f"  {model_name} n·m={size} done", file=sys.stderr, flush=True)
    if args.memory and device == "cpu":
        slow = [r for r in rows if r.time_s is not None and r.time_s > args.memory_max_seconds]
        for r in slow:
            r.note = f"memory not measured (run > {args.memory_max_seconds:.0f} s)"
        _measure_memory([r for r in rows if r.time_s is not None and r not in slow])
    info["load_end"] = os.getloadavg()
    peak_end = matmul_peak(device)  # the peak is the better of two measurements, before and after
    if peak_end > info["peak"]:
        for r in rows:
            r.rate = None if r.rate is None else r.rate * info["peak"] / peak_end
        info["peak"] = peak_end
    return rows, info


def _measure_memory(rows: list[Row]) -> None:
    """Peak memory of each timed run, each in a fresh process forked from a preloaded server."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.methods", "bench.models"])
    for row in rows:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            try:
                job = pool.submit(_peak_memory_child, row.model, row.rows // M, row.method)
                row.memory_mib = job.result()
            except Exception as exc:  # noqa: BLE001 - a crashed child is reported, not fatal
                row.note = (row.note + f" memory run failed: {type(exc).__name__}").strip()


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[Row], info: dict, args: argparse.Namespace) -> str:
    """The markdown table and the summary lines."""
    lo = " / ".join(f"{v:.2f}" for v in info["load_start"])
    le = " / ".join(f"{v:.2f}" for v in info["load_end"])
    lines = [
        f"Machine: {info['machine']}; device {args.device}; float32, eval mode.",
        f"Load average (1/5/15 min) at start {lo}, at end {le}. "
        f"Matmul peak (2048² float32 A@B, best of 10, before and after): {info['peak'] / 1e9:.1f} GFLOP/s.",
        "Reference: our structured path in float64; its max relative difference to the per-output "
        "autograd loop (float64) at the smallest size: "
        + ", ".join(f"{k} {v:.1e}" for k, v in info.get("reference_check", {}).items()) + ".",
        "",
        "First call: one fresh process per method (auto: with nothing cached / with what that call cached), "
        f"at n·m ≤ {SMALL}. Median time: after warm-up calls (auto's until it had judged every plan).",
        "",
        "| model | n·m | method | first call (s) | median time (s) | runs | vs torch.func recipe | peak memory (MiB) "
        "| max rel. diff | % of peak | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    naive = {(r.model, r.rows): r.time_s for r in rows if r.method == "torch.func recipe" and r.time_s}
    for r in rows:
        base = naive.get((r.model, r.rows))
        speed = f"{base / r.time_s:.1f}×" if base and r.time_s else "—"
        rate = _fmt(None if r.rate is None else 100 * r.rate, ".1f")
        lines.append(
            f"| {r.model} | {r.rows} | {r.method} | {' / '.join(f'{v:.3f}' for v in (r.first or {}).values()) or '—'} "
            f"| {_fmt(r.time_s, '.3f')} | {r.runs or '—'} | {speed} | "
            f"{_fmt(r.memory_mib, '.0f')} | {_fmt(r.rel_diff, '.1e')} | {rate} | {r.note} |"
        )
    lines += ["", "Summary (ours: auto against the fastest peer that ran, and the torch.func recipe):"]
    for key in dict.fromkeys((r.model, r.rows) for r in rows):
        here = [r for r in rows if (r.model, r.rows) == key and r.time_s]
        auto = next((r for r in here if r.method == "ours: auto"), None)
        peers = [r for r in here if r.method in PEERS]
        if auto is None or not peers:
            continue
        best = min(peers, key=lambda r: r.time_s)
        lines.append(
            f"- {key[0]}, n·m = {key[1]}: auto {auto.time_s:.3f} s; fastest peer {best.method} "
            f"{best.time_s:.3f} s ({best.time_s / auto.time_s:.1f}× slower than auto)"
        )
    lines += ["", "auto against the fastest of our strategies and the torch.func recipe (first call: our strategies' "
              "own first calls; 1.00 = as fast, above 1 = slower):"]
    for key in dict.fromkeys((r.model, r.rows) for r in rows):
        lines += _against_fastest(key, [r for r in rows if (r.model, r.rows) == key])
    ratios = [naive[(r.model, r.rows)] / r.time_s for r in rows
              if r.method == "ours: auto" and r.time_s and (r.model, r.rows) in naive]
    if ratios:
        geo = statistics.geometric_mean(ratios)
        count = len(ratios)
        lines.append(f"- auto against the torch.func recipe: {geo:.1f}× faster (geom. mean, {count} runs)")
    lines.append("")
    lines.append("Command: `python -m bench.ntk " + " ".join(sys.argv[1:]) + "`")
    return "\n".join(lines)


def _against_fastest(key: tuple[str, int], here: list[Row]) -> list[str]:
    """One summary line: auto's first calls and steady time against the fastest."""
    auto = next((r for r in here if r.method == "ours: auto"), None)
    if auto is None:
        return []
    parts = []
    firsts = [(r.method, r.first[r.method]) for r in here if r.method in OUR_PLANS and r.first and r.method in r.first]
    if firsts and auto.first and AUTO_COLD in auto.first and AUTO_CACHED in auto.first:
        name, best = min(firsts, key=lambda mv: mv[1])
        cold, cached = auto.first[AUTO_COLD], auto.first[AUTO_CACHED]
        parts.append(f"first call {cold:.3f} s with nothing cached, {cached:.3f} s cached; fastest {name} {best:.3f} s "
                     f"→ {cold / best:.2f} / {cached / best:.2f}")
    steady = [r for r in here if r.time_s and r.method in (*OUR_PLANS, "torch.func recipe")]
    if auto.time_s and steady:
        best_row = min(steady, key=lambda r: r.time_s)
        parts.append(f"steady {auto.time_s:.3f} s, fastest {best_row.method} {best_row.time_s:.3f} s → "
                     f"{auto.time_s / best_row.time_s:.2f}")
    return [f"- {key[0]}, n·m = {key[1]}: " + "; ".join(parts)] if parts else []


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat, no memory")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000], help="values of n·m (m = 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=15.0,
                        help="skip a method at a larger size if its time scaled by (n·m)² would exceed this")
    parser.add_argument("--single-run-above", type=float, default=2.0,
                        help="a warm-up call longer than this is the measurement (one run)")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--memory-max-seconds", type=float, default=10.0,
                        help="measure the memory of runs up to this long (each needs one more run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-first-call", dest="first_call", action="store_false",
                        help="skip the first calls in fresh processes (one process per method, model and size)")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.memory, args.first_call = [40], 1, False, False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ntk-") as cache:  # auto starts with nothing cached
        os.environ[CACHE_ENV] = cache
        rows, info = run(args)
    text = table(rows, info, args)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
