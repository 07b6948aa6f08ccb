"""Whole-data-set Jacobian products at scale: time per solver iteration and memory against n·m (docs/benchmarks.md).

    python -m bench.distributed_scale                         # n = 1k, 6k, 60k (n·m up to 6·10⁵), 1 and 2 processes
    python -m bench.distributed_scale --n 60000 --nproc 2 --repeats 1
    python -m bench.distributed_scale --resnet18              # per-sample cost of ResNet-18 on CIFAR-sized inputs
    python -m bench.distributed_scale --n 60000 --nproc 2 --check 1200 --checkpoint-dir ckpt   # D1 on 6·10⁵ rows
    python -m bench.distributed_scale --n 6000 --nproc 2 --check 600 --solver lsqr              # the unpreconditioned
    torchrun --nproc-per-node 8 -m bench.distributed_scale --device cuda --model resnet18 --n 50000 --nproc 1
    python -m bench.distributed_scale --n 60000 --nproc 1 --check 1200 --device cuda            # one GPU
    torchrun --nproc-per-node 2 -m bench.distributed_scale --n 60000 --check 1200 --device cuda  # NCCL

The data are a synthetic MNIST-sized set streamed from a map-style ``Dataset`` that computes each sample
from its index (a scikit-learn digit, 1×8×8, plus a fixed deterministic jitter), so nothing is held whole;
the model is the benchmark digits CNN (``bench.models``, d = 9,930) in float64. One LSQR iteration costs
one ``J v`` and one ``Jᵀ u`` on the whole set (:class:`~diagnostics.engine.matrix_free.sharded.ShardedJacobian`);
the script times both (median of ``--repeats``, after a warm-up on two samples that pays the one-time
imports of ``torch.func``), the first pass (outputs), one pass over the per-sample Jacobian blocks (what the
preconditioned solver's Gram and Rayleigh–Ritz passes cost), and reads each process's peak resident set from
``getrusage``. ``--check`` runs ``check_alignment`` itself on the whole set (``--solver``: ``auto`` picks the
sketch-preconditioned solver for this tall ``J``), with progress bars, resumable from ``--checkpoint-dir``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

from bench.models import build
from bench.resnet18 import BasicBlock
from diagnostics import check_alignment
from diagnostics.distributed import init_from_environment, launch
from diagnostics.engine.matrix_free.preconditioned import METHODS
from diagnostics.engine.matrix_free.sharded import ShardedJacobian, process_group_size
from diagnostics.engine.matrix_free.sketch import BLOCK_BYTES
from diagnostics.engine.matrix_free.streamed import StreamedJacobianOperator, shard_range


class JitteredDigits(Dataset):
    """``n`` samples: digit ``i mod 1797`` (scaled to [0, 1]) plus ``0.05·sin(i + 0.7k)`` on pixel ``k``."""

    def __init__(self, n: int, shape: tuple[int, ...] = (1, 8, 8)) -> None:
        X, y = load_digits(return_X_y=True)
        self.X, self.y, self.n, self.shape = torch.tensor(X / 16), torch.tensor(y), n, shape
        self.phase = 0.7 * torch.arange(int(np.prod(shape)), dtype=torch.float64)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The samples ``indices``, computed together (the streamed operator reads a batch at once)."""
        i = torch.as_tensor(indices)
        k, size = i % len(self.X), int(np.prod(self.shape))
        base = self.X[k].repeat(1, size // 64 + 1)[:, :size]
        x = (base + 0.05 * torch.sin(i[:, None] + self.phase)).reshape(len(indices), *self.shape)
        return list(zip(x, self.y[k], strict=True))


def resnet18(n_out: int = 10) -> nn.Module:
    """ResNet-18 as trained on CIFAR: the BasicBlocks 2-2-2-2 of :mod:`bench.resnet18` (widths 64-512) behind a
    3×3 stem without max pool (torchvision's 7×7 stem and pool would shrink 32×32 inputs to 8×8 at once);
    d = 11,173,962 with 10 outputs.
    """
    layers, c = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c, width, stride), BasicBlock(width, width)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, n_out)]
    return nn.Sequential(*layers)


def measure(n: int, model_name: str, device: str, dtype: str, batch_size: int, repeats: int,
            threads: int | None = None) -> dict:
    """On this process: build the shard's operator, time ``J v`` and ``Jᵀ u`` on the whole set, read peak memory."""
    rank, world = process_group_size()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = resnet18() if model_name == "resnet18" else build("CNN", 1)[0]
    model = model.eval().to(device)
    data = JitteredDigits(n, (3, 32, 32) if model_name == "resnet18" else (1, 8, 8))
    warm = StreamedJacobianOperator(model, data, shard=(0, 2), dtype=getattr(torch, dtype))  # one-time imports
    warm.rmatvec(warm.matvec(torch.zeros(warm.shape[1], dtype=torch.float64)))
    start = time.perf_counter()
    local = StreamedJacobianOperator(model, data, shard=shard_range(n, rank, world), batch_size=batch_size,
                                     dtype=getattr(torch, dtype))
    op = ShardedJacobian(local)
    first = time.perf_counter() - start
    v = torch.randn(op.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = {"Jv": [], "JTu": []}
    for _ in range(repeats):
        t = time.perf_counter()
        u = op.matvec(v)
        times["Jv"].append(time.perf_counter() - t)
        t = time.perf_counter()
        op.rmatvec(u)
        times["JTu"].append(time.perf_counter() - t)
    next(iter(local.row_blocks(BLOCK_BYTES)))  # a first block pays strategy="auto"'s one-time timing of its plans
    t = time.perf_counter()
    for _ in local.row_blocks(BLOCK_BYTES):  # the per-sample Jacobian blocks, as the Gram pass forms them
        pass
    blocks = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rank": rank, "world": world, "n": n, "rows": op.shape[0], "d": op.shape[1], "first_pass_s": first,
            "Jv_s": statistics.median(times["Jv"]), "JTu_s": statistics.median(times["JTu"]), "blocks_s": blocks,
            "peak_rss_gb": peak / 1e9, "memmapped_vectors": local.vectors.files}


def whole_set_check(n: int, budget: float, batch_size: int, checkpoint_dir: str | None, progress: bool,
                    solver: str = "auto", device: str = "cpu", horizon: tuple[float, int] | None = None) -> dict:
    """On this process: ``check_alignment`` on all ``n`` samples, streamed, within ``budget`` s; report, memory."""
    torch.manual_seed(0)
    model = build("CNN", 1)[0].eval().to(device)
    start = time.perf_counter()
    report = check_alignment(model, JitteredDigits(n), path="matrix-free", probe_size=None, dtype=torch.float64,
                             horizon=horizon,
                             solver={"method": solver, "time_budget": budget, "batch_size": batch_size,
                                     "checkpoint_dir": checkpoint_dir,
                                     "progress": progress and process_group_size()[0] == 0})
    return {"report": report, "wall_s": time.perf_counter() - start,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 6000, 60000])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="cnn", choices=("cnn", "resnet18"))
    parser.add_argument("--resnet18", action="store_true", help="ResNet-18, CIFAR-sized inputs, n = 32, float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per process (default CPUs/nproc)")
    parser.add_argument("--check", type=float, metavar="SECONDS",
                        help="instead: check_alignment on the whole set (first --n, first --nproc) within this budget")
    parser.add_argument("--checkpoint-dir", default=None, help="with --check: solver checkpoints (a rerun resumes)")
    parser.add_argument("--solver", default="auto", choices=METHODS, help="with --check: the whole-set solver")
    parser.add_argument("--horizon", type=float, nargs=2, metavar=("ETA", "STEPS"), default=None,
                        help="with --check: the horizon residual of gradient descent with step ETA for STEPS steps")
    args = parser.parse_args(argv)
    if args.check is not None:
        n, nproc = args.n[0], args.nproc[0]
        horizon = None if args.horizon is None else (args.horizon[0], int(args.horizon[1]))
        check = (n, args.check, args.batch_size, args.checkpoint_dir, True, args.solver, args.device, horizon)
        if init_from_environment():  # under torchrun: this process is one of the group
            result = whole_set_check(*check)
            if process_group_size()[0] == 0:
                print(result["report"], flush=True)
            return
        print(f"check_alignment on n = {n:,} (n·m = {10 * n:,}), {nproc} process(es), solver {args.solver}, time "
              f"budget {args.check:.0f} s; load average at start: {os.getloadavg()}", flush=True)
        results = launch(whole_set_check, nproc, *check, threads=args.threads)
        print(results[0]["report"])
        print(f"wall time {results[0]['wall_s']:.0f} s; peak RSS per process "
              + " / ".join(f"{r['peak_rss_gb']:.2f} GB" for r in results)
              + f"; load average at end: {os.getloadavg()}", flush=True)
        return
    if args.resnet18:
        args.model, args.n, args.nproc, args.dtype, args.batch_size = "resnet18", [32], [1], "float32", 16
    print(f"load average at start: {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    if init_from_environment():  # under torchrun: one measurement per size, across the group
        for n in args.n:
            result = measure(n, args.model, args.device, args.dtype, args.batch_size, args.repeats)
            if result["rank"] == 0:
                print(result, flush=True)
        return
    print("| model | n | n·m | d | processes × threads | first pass (s) | J v (s) | Jᵀ u (s) | s / iteration "
          "| s / iteration per sample (ms) | Jacobian blocks pass (s) | peak RSS per process (GB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        for nproc in args.nproc:
            threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
            results = launch(measure, nproc, n, args.model, args.device, args.dtype, args.batch_size, args.repeats,
                             threads)
            r = results[0]
            iteration = r["Jv_s"] + r["JTu_s"]
            rss = "/".join(f"{x['peak_rss_gb']:.2f}" for x in results)
            print(f"| {args.model} | {n:,} | {r['rows']:,} | {r['d']:,} | {nproc} × {threads} | "
                  f"{r['first_pass_s']:.2f} | {r['Jv_s']:.2f} | {r['JTu_s']:.2f} | {iteration:.2f} | "
                  f"{1e3 * iteration / n:.3f} | {r['blocks_s']:.2f} | {rss} |",
                  flush=True)
    print(f"load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
