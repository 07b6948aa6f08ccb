"""Overhead of AlignmentTracker records relative to one training step, on the digits: both tiers.

For the digits MLP, CNN and the ResNet of docs/application.md (``diagnostics.models``), trained with SGD
and momentum on mini-batches, prints the median wall time of one training step (forward, backward,
optimiser step) and of one record of each tier, for each probe size, measured side by side: training
steps and records alternate in the same process, so both see the same load. On the CPU the times are the
process's CPU time (``time.process_time``, one intra-op thread with ``--threads 1``), which other processes
on a shared machine do not inflate; on an accelerator, wall time. A full record slower than
``--max-full-seconds`` in the warm-up round is timed there only.

- full record: ``AlignmentTracker.measure`` without a cheap tier (Gram on the probe set, float64
  eigen-decomposition, movements);
- cheap record: the cheap tier's record (``full_every=``: loss, ``‖∇L‖``, the warm-started witness of
  the alignment residual and certificate, the sketched kernel alignment and velocity).

The amortised overhead of ``every``/``full_every`` is ``(cheap + full/full_every) / every`` training
steps per step (every record runs the cheap pass, every ``full_every``-th also the full one).
``--agreement`` also trains each model and compares, at every full record, the cheap tier's witness
residual with the full record's residual.

    python bench/bench_tracker.py --threads 1                         # probe sizes 128 512, 7 rounds
    python bench/bench_tracker.py --threads 1 --agreement             # and the witness against the full residual
    python bench/bench_tracker.py --probe-sizes 128 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from diagnostics.data import load_dataset
from diagnostics.engine.choice import synchronize
from diagnostics.integrations.session import DEFAULT_EVERY, DEFAULT_FULL_EVERY
from diagnostics.models import CNN, MLP, ResNet
from diagnostics.tracking import AlignmentTracker

MODELS = {
    "MLP 64-128-128-10": lambda: MLP(64, 128, 10, depth=2),
    "CNN width 16": lambda: CNN(1, 16, 10, image_size=8),
    "ResNet width 8 (BN)": lambda: ResNet(1, 8, 10, n_blocks=2, image_size=8),
}


def _timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()``: CPU time of this process on the CPU (other processes on a shared machine do not
    count), wall time with synchronisation on an accelerator."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


class Run:
    """A model, its optimiser and a seeded stream of mini-batches."""

    def __init__(self, build, X: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = build().to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.generator = torch.Generator().manual_seed(0)
        self.X, self.y, self.batch_size, self.device = X, y, batch_size, device

    def step(self) -> None:
        batch = torch.randint(0, self.X.shape[0], (self.batch_size,), generator=self.generator).to(self.device)
        self.opt.zero_grad()
        F.cross_entropy(self.model(self.X[batch]), self.y[batch]).backward()
        self.opt.step()


def overhead(build, X, y, n: int, args, device) -> dict[str, float]:
    """Median seconds of a training step, a full record and a cheap record, alternating, ``args.repeats`` rounds."""
    run = Run(build, X, y, args.batch_size, device)
    full = AlignmentTracker(run.model, (X, y), loss="ce", probe_size=n)
    cheap = AlignmentTracker(run.model, (X, y), loss="ce", probe_size=n, full_every=10**9)
    times: dict[str, list[float]] = {"step": [], "full": [], "cheap": []}
    slow = False
    for round_ in range(args.repeats + 1):  # round 0 warms up
        step_times = [_timed(run.step, device) for _ in range(10)]
        full_s = None if slow else _timed(lambda r=round_: full.measure(r + 1), device)
        cheap_s = _timed(lambda r=round_: cheap.measure(r + 1), device)
        if round_ == 0 and full_s > args.max_full_seconds:  # timed once: its warm-up is a small part of it
            slow = True
            times["full"].append(full_s)
        if round_:
            times["step"] += step_times
            times["cheap"].append(cheap_s)
            if full_s is not None:
                times["full"].append(full_s)
    return {k: statistics.median(v) for k, v in times.items()}


def cheap_variants(build, X, y, n: int, args, device) -> dict[str, float]:
    """Median seconds of a training step and of cheap records with fewer columns or in float32."""
    run = Run(build, X, y, args.batch_size, device)
    variants = {
        "default (float64 on CPU, sketch 2, 1 iteration)": {},
        "sketch 0": {"sketch_size": 0},
        "float32": {"dtype": torch.float32},
        "float32, sketch 0": {"dtype": torch.float32, "sketch_size": 0},
        "3 iterations": {"cheap_iterations": 3},
    }
    trackers = {k: AlignmentTracker(run.model, (X, y), loss="ce", probe_size=n, full_every=10**9, **v)
                for k, v in variants.items()}
    times: dict[str, list[float]] = {"step": [], **{k: [] for k in variants}}
    for round_ in range(args.repeats + 1):
        step_times = [_timed(run.step, device) for _ in range(5)]
        record_times = {k: _timed(lambda t=t, r=round_: t.measure(r + 1), device) for k, t in trackers.items()}
        if round_:
            times["step"] += step_times
            for k, v in record_times.items():
                times[k].append(v)
    return {k: statistics.median(v) for k, v in times.items()}


def agreement(build, X, y, n: int, args, device) -> tuple[np.ndarray, np.ndarray]:
    """Witness and full residuals at the full records of a training run (every 20 steps, full every 5)."""
    run = Run(build, X, y, args.batch_size, device)
    tracker = AlignmentTracker(run.model, (X, y), loss="ce", probe_size=n, every=20, full_every=5)
    for step in range(args.agreement_steps + 1):
        tracker.step(step)
        run.step()
    h = tracker.history
    full = h[h.tier == "full"].iloc[1:]  # the first full record is also the first record: no warm start yet
    return full.witness_residual.to_numpy(), full.residual.to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-full-seconds", type=float, default=10.0,
                        help="a full record slower than this in the warm-up round is timed there only")
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--full-every", type=int, default=DEFAULT_FULL_EVERY)
    parser.add_argument("--agreement", action="store_true", help="compare the witness with the full residual")
    parser.add_argument("--agreement-steps", type=int, default=600)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    digits = load_dataset("digits")
    X, y = digits.X_train.to(device), digits.y_train.to(device)
    clock = "CPU time of the process" if device.type == "cpu" else "wall time"
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; training in float32, "
          f"batch {args.batch_size}; records in the tracker's default dtype; {clock}, median of {args.repeats} rounds "
          f"(training steps: 10 per round); "
          f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    every, full_every = args.every, args.full_every
    print(f"| model | d | probe n | n·m | train step | full record | cheap record | full / step | cheap / step "
          f"| amortised, every={every}, full_every={full_every} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, build in MODELS.items():
        d = sum(p.numel() for p in build().parameters())
        for n in args.probe_sizes:
            t = overhead(build, X, y, n, args, device)
            amortised = (t["cheap"] + t["full"] / full_every) / every / t["step"]
            print(f"| {name} | {d:,} | {n} | {10 * n:,} | {1e3 * t['step']:.2f} ms | {1e3 * t['full']:.0f} ms "
                  f"| {1e3 * t['cheap']:.1f} ms | {t['full'] / t['step']:.0f}× | {t['cheap'] / t['step']:.1f}× "
                  f"| {100 * amortised:.0f} % |", flush=True)
    name, build = next(iter(MODELS.items()))
    n = args.probe_sizes[0]
    t = cheap_variants(build, X, y, n, args, device)
    step = t.pop("step")
    print(f"\ncheap record variants, {name}, probe {n} (training step {1e3 * step:.2f} ms in the same rounds)")
    print("| cheap record | time | per training step |")
    print("|---|---|---|")
    for variant, seconds in t.items():
        print(f"| {variant} | {1e3 * seconds:.1f} ms | {seconds / step:.1f}× |")
    if args.agreement:
        print(f"\nwitness residual (cheap tier) against the full record's residual, probe {args.probe_sizes[0]}, "
              f"{args.agreement_steps} steps, records every 20 steps, full every 5th")
        print("| model | full records | full residual (range) | witness residual (range) | witness − full (max) "
              "| witness < full |")
        print("|---|---|---|---|---|---|")
        for name, build in MODELS.items():
            witness, residual = agreement(build, X, y, args.probe_sizes[0], args, device)
            print(f"| {name} | {len(residual)} | {residual.min():.2e} – {residual.max():.2e} "
                  f"| {witness.min():.2e} – {witness.max():.2e} | {(witness - residual).max():.2e} "
                  f"| {int((witness < residual - 1e-12).sum())} |", flush=True)
    print(f"\nload average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
