"""First calls in a fresh process, and ``auto`` warmed until it has judged every plan.

Most users call ``check_alignment`` once, so the first call is what they see. ``first_calls`` times it: one
fresh Python process per method, which imports torch, the library and the model's own library (as a
user's script has), builds the model and the inputs, and only then starts the clock, so the time includes
whatever the call starts up itself: ``torch.func``'s one-time import of ``torch._dynamo``, a plan's first
run, ``auto``'s judging. ``auto`` runs twice: with an empty cache folder (nothing known: its first call
anywhere), and again with what that call left there (its first call in every later process).

    python -m bench.first_call --suite zoo --model gru-classifier --n 32 --method "ours: auto"

prints one line of JSON: the seconds, and for ``auto`` the plan and why. Results: docs/benchmarks.md,
"Models people bring".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from diagnostics.engine.choice_store import CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
#: ``auto``'s first call with nothing cached, and with what that call cached.
AUTO_COLD, AUTO_CACHED = "ours: auto (nothing cached)", "ours: auto (cached)"


def first_calls(suite: str, model: str, n: int, methods: list[str], timeout: float = 600.0) -> dict[str, dict]:
    """Time the first call of each method in a fresh process; ``"ours: auto"`` gives :data:`AUTO_COLD` and
    :data:`AUTO_CACHED`. Returns ``method → {"seconds": …}`` (and ``"plan"``, ``"reason"`` for auto), or
    ``{"error": …}`` for a method that fails."""
    found = {}
    with tempfile.TemporaryDirectory(prefix="first-call-") as cache:
        for method in methods:
            for label in ((AUTO_COLD, AUTO_CACHED) if method == "ours: auto" else (method,)):
                found[label] = _child(suite, model, n, method, cache, timeout)
    return found


def _child(suite: str, model: str, n: int, method: str, cache: str, timeout: float) -> dict:
    env = {**os.environ, CACHE_ENV: cache, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                         os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "bench.first_call", "--suite", suite, "--model", model, "--n", str(n),
           "--method", method]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:150]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def problem(suite: str, model: str, n: int) -> tuple[object, object, dict, dict[str, Callable[[], object]]]:
    """The suite's model, its inputs, the keyword arguments of every measurement of it, and its methods by name."""
    if suite == "ntk":
        from bench.methods import METHODS
        from bench.models import M, build

        net, x = build(model, n // M)
        return net, x, {}, {name: (lambda fn=fn: fn(net, x)) for name, (fn, _) in METHODS.items()}
    from bench.zoo import REGISTRY, methods

    entry = REGISTRY[model]
    net, x = entry.model(), entry.data(n)
    return net, x, {"output": entry.output, "mode": entry.mode}, methods(entry, net, x)


def settle_auto(model: object, x: object, kwargs: dict, max_calls: int = 300) -> tuple[int, float, object]:
    """Call ``auto`` until it has judged every plan (at most ``max_calls`` times); return the calls, the first
    call's seconds in this process, and the last measurement's choice."""
    from diagnostics.engine import Measurement

    first, calls = None, 0
    while calls < max_calls:
        calls += 1
        start = time.perf_counter()
        with Measurement(model, x, **kwargs) as job:
            job.gram()
        first = first or time.perf_counter() - start
        if job.choice.settled:
            break
    return calls, first, job.choice


def _time_one(args: argparse.Namespace) -> dict:
    from diagnostics.engine import Measurement

    net, x, kwargs, fns = problem(args.suite, args.model, args.n)
    start = time.perf_counter()
    if args.method != "ours: auto":
        fns[args.method]()
        return {"seconds": time.perf_counter() - start}
    with Measurement(net, x, **kwargs) as job:  # as ntk_gram(strategy="auto"), the choice kept for the record
        job.gram()
    return {"seconds": time.perf_counter() - start, "plan": job.strategy, "reason": job.choice.reason}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("ntk", "zoo"), required=True,
                        help="the benchmark models of bench.ntk (n is n·m there) or the zoo of bench.zoo")
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--method", required=True)
    print(json.dumps(_time_one(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
