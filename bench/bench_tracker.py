"""Overhead of one AlignmentTracker record relative to one training step, on the digits.

For an MLP and a CNN (``diagnostics.models``) trained with SGD on mini-batches of the digits, prints
the median wall time of one training step (forward, backward, optimizer step) and of one tracker
record (``AlignmentTracker.measure``: Gram on the probe set, float64 eigen-decomposition, movements)
for each probe size, and their ratio. With ``every=k`` the amortised overhead per step is ratio / k.

    python bench/bench_tracker.py                       # defaults: probe sizes 32 64 128, 7 repeats
    python bench/bench_tracker.py --probe-sizes 256 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from diagnostics.data import load_dataset
from diagnostics.models import CNN, MLP
from diagnostics.tracking import AlignmentTracker


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    digits = load_dataset("digits")
    X, y = digits.X_train.to(device), digits.y_train.to(device)
    models = {
        "MLP 64-128-128-10": MLP(64, 128, 10, depth=2),
        "CNN width 16": CNN(1, 16, 10, image_size=8),
    }
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, float32, "
          f"batch {args.batch_size}, median of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<20} {'d':>7} {'probe n':>7} {'nm':>5} {'train step':>11} {'record':>10} {'ratio':>8}")
    for name, model in models.items():
        _bench(name, model, X, y, args, device)


def _bench(name: str, model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, args, device) -> None:
    """Print one row per probe size: training-step time, record time and their ratio."""
    torch.manual_seed(0)
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        batch = torch.randint(0, X.shape[0], (args.batch_size,), generator=generator).to(device)
        opt.zero_grad()
        F.cross_entropy(model(X[batch]), y[batch]).backward()
        opt.step()

    step_s = _median_seconds(train_step, args.repeats, device)
    d = sum(p.numel() for p in model.parameters())
    for n in args.probe_sizes:
        tracker = AlignmentTracker(model, (X, y), loss="ce", probe_size=n)
        steps = iter(range(10**9))
        record_s = _median_seconds(lambda t=tracker, s=steps: t.measure(next(s)), args.repeats, device)
        print(f"{name:<20} {d:>7,} {n:>7} {n * 10:>5} {1e3 * step_s:>9.2f}ms {1e3 * record_s:>8.1f}ms "
              f"{record_s / step_s:>7.0f}×")

if __name__ == "__main__":
    main()
