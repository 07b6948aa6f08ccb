"""Overhead of AlignmentTracker records relative to a training step: start-up, full and cheap records.

For the digits CNN (``diagnostics.models``) and a tiny BERT built from a config (default attention, SDPA; the
digits read as 64 tokens each), trained on mini-batches (the CNN with SGD and momentum, BERT with AdamW, dropout
on), prints for each probe size, measured side by side in one process (training steps and records alternate, so
all see the same load):

- a training step (forward, backward, optimiser step on a batch);
- the start-up, what a callback pays when training starts: creating the tracker on the fresh model (its
  reference ``K_0``, ``θ_0``, ``J_0ᵀQ``) and its first record, which reuses that measurement;
- a full record (the Gram on the probe set, its float64 eigen-decomposition, every quantity of the report);
- a cheap record (the loss, ``‖∇L‖``, ``QᵀKQ/‖Q‖²`` and the movement of ``JᵀQ``: one forward and two reverse
  passes over the probe in the model's dtype), and the same in float64.

The targets: a cheap record ≤ 2 training steps, the start-up ≤ 2 full records. The last column is the cost of the
callbacks' default cadence over a run of 10,000 steps (records every 500 steps, full at the start, at step 5,000
and at the end: start-up + 2 full + 18 cheap). On the CPU the times are the process's CPU time
(``time.process_time``, one intra-op thread with ``--threads 1``), which other processes on a shared machine do not
inflate; on an accelerator, wall time. A full record slower than ``--max-full-seconds`` in the warm-up round is
timed there only.

    python -m bench.bench_tracker --threads 1                      # probe 128, 7 rounds
    python -m bench.bench_tracker --threads 1 --probe-sizes 128 512
    python -m bench.bench_tracker --probe-sizes 128 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from diagnostics.engine.choice import synchronize
from diagnostics.models import CNN
from diagnostics.tracking import AlignmentTracker

#: Records of the callbacks' default cadence over a run of 10,000 steps, besides the start-up: (full, cheap).
DEFAULT_RUN = (10_000, 2, 18)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of ``fn()``: CPU time of this process on the CPU (other processes on a shared machine do not
    count), wall time with synchronisation on an accelerator."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


class Workload:
    """A model, its optimiser, its data and a seeded stream of mini-batches."""

    def __init__(self, name: str, batch_size: int, device: torch.device) -> None:
        digits = load_digits()
        self.y = torch.as_tensor(digits.target, dtype=torch.long, device=device)
        torch.manual_seed(0)
        if name == "CNN width 16":
            self.inputs = (torch.as_tensor(digits.images, dtype=torch.float32, device=device) / 16).unsqueeze(1)
            self.model = CNN(1, 16, 10, image_size=8).to(device)
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
            self.options: dict = {}
        else:
            transformers = __import__("transformers")
            config = transformers.BertConfig(vocab_size=18, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=64, num_labels=10)
            ids = torch.as_tensor(digits.data, dtype=torch.long, device=device) + 1  # intensities 0–16; 0 pads
            self.inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            self.model = transformers.BertForSequenceClassification(config).to(device)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
            self.options = {"output": "logits"}
        self.generator = torch.Generator().manual_seed(0)
        self.batch_size, self.device = batch_size, device

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.inputs, dict):
            return self.model(**{k: v[index] for k, v in self.inputs.items()}).logits
        return self.model(self.inputs[index])

    def step(self) -> None:
        index = torch.randint(0, len(self.y), (self.batch_size,), generator=self.generator).to(self.device)
        self.opt.zero_grad()
        F.cross_entropy(self.forward(index), self.y[index]).backward()
        self.opt.step()

    def tracker(self, n: int, **options) -> AlignmentTracker:
        return AlignmentTracker(self.model, (self.inputs, self.y), loss="ce", probe_size=n, full_every=10**9,
                                **self.options, **options)


def overhead(name: str, n: int, args, device: torch.device) -> dict[str, float]:
    """Median seconds of a training step, a full and a cheap record (alternating, ``args.repeats`` rounds after a
    warm-up round), and the start-up on the fresh model."""
    work = Workload(name, args.batch_size, device)
    work.model.train()
    trackers: dict[str, AlignmentTracker] = {}

    def start() -> None:  # what a callback does when training starts
        trackers["tracker"] = work.tracker(n)
        trackers["tracker"].measure(0)

    startup = _timed(start, device)
    tracker = trackers["tracker"]
    float64 = work.tracker(n, dtype=torch.float64)
    times: dict[str, list[float]] = {"step": [], "full": [], "cheap": [], "cheap float64": []}
    slow = False
    for round_ in range(args.repeats + 1):  # round 0 warms up
        step_times = [_timed(work.step, device) for _ in range(10)]
        step = 2 * round_ + 1
        cheap = _timed(lambda s=step: tracker.measure(s, full=False), device)
        cheap64 = _timed(lambda s=step: float64.measure(s, full=False), device)
        full = None if slow else _timed(lambda s=step: tracker.measure(s + 1, full=True), device)
        if round_ == 0 and full > args.max_full_seconds:  # timed once: its warm-up is a small part of it
            slow = True
            times["full"].append(full)
        if round_:
            times["step"] += step_times
            times["cheap"].append(cheap)
            times["cheap float64"].append(cheap64)
            if full is not None:
                times["full"].append(full)
    return {"startup": startup, **{k: statistics.median(v) for k, v in times.items()},
            "d": sum(p.numel() for p in work.model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["CNN width 16", "tiny BERT"],
                        choices=["CNN width 16", "tiny BERT"])
    parser.add_argument("--probe-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-full-seconds", type=float, default=10.0,
                        help="a full record slower than this in the warm-up round is timed there only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "CPU time of the process" if device.type == "cpu" else "wall time"
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; training in float32, "
          f"batch {args.batch_size}; full records in the tracker's default dtype, cheap ones in the model's; "
          f"{clock}, median of {args.repeats} rounds (training steps: 10 per round); "
          f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    runs, full_records, cheap_records = DEFAULT_RUN
    print("| model | d | probe n | n·m | train step | cheap record | cheap, float64 | full record | start-up "
          "| cheap / step (≤ 2) | start-up / full (≤ 2) | default cadence, 10⁴ steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for n in args.probe_sizes:
            t = overhead(name, n, args, device)
            run = (t["startup"] + full_records * t["full"] + cheap_records * t["cheap"]) / (runs * t["step"])
            print(f"| {name} | {t['d']:,} | {n} | {10 * n:,} | {1e3 * t['step']:.2f} ms | {1e3 * t['cheap']:.2f} ms "
                  f"| {1e3 * t['cheap float64']:.2f} ms | {1e3 * t['full']:.0f} ms | {1e3 * t['startup']:.0f} ms "
                  f"| {t['cheap'] / t['step']:.2f}× | {t['startup'] / t['full']:.2f}× | {100 * run:.1f} % |",
                  flush=True)
    print(f"\nload average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
