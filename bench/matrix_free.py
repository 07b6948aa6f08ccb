"""The alignment condition matrix-free at n·m = 10⁵ (docs/benchmarks.md).

    python -m bench.matrix_free                 # digits-sized MLP, n = 10,000, m = 10, float32
    python -m bench.matrix_free --n 2000 --compare-dense

Inputs are the 8×8 scikit-learn digits (1,797 images, shipped with scikit-learn) drawn with
replacement and jittered with Gaussian noise (σ = 0.05 after scaling to [0, 1]) to reach ``n``;
labels are the digits' classes; the model is the benchmark MLP (64→256→256→10, tanh) at its
seeded initialisation. ``check_alignment(..., path="matrix-free")`` computes the residual and ``‖ν‖``
by LSQR and the top eigenvalues by Lanczos; the peak resident-set increase is read from
``getrusage`` around the call, and the memory the dense path would need is printed next to it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from bench.models import build
from diagnostics import check_alignment
from diagnostics.alignment import dense_alignment_bytes
from diagnostics.errors import format_bytes


def digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` jittered digits (``(n, 64)`` float32) and their labels."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(X), n)
    x = X[idx] / 16 + 0.05 * rng.standard_normal((n, X.shape[1]))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y[idx])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--loss", default="ce", choices=["ce", "mse"])
    parser.add_argument("--compare-dense", action="store_true", help="also run the dense path (small n)")
    args = parser.parse_args(argv)
    model, _ = build("MLP", 1)
    x, y = digits(args.n)
    rows = args.n * 10
    print(f"load average at start: {os.getloadavg()}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = check_alignment(model, (x, y), loss=args.loss, probe_size=None, path="matrix-free")
    elapsed = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(report)
    dense_need = format_bytes(dense_alignment_bytes(rows, x.dtype))
    print(
        f"\nmatrix-free: n·m = {rows:,}, d = {report.n_params:,}: {elapsed:.1f} s, peak RSS increase "
        f"{format_bytes(peak)}; the dense path would need ≈ {dense_need}"
    )
    if args.compare_dense:
        start = time.perf_counter()
        dense = check_alignment(model, (x, y), loss=args.loss, probe_size=None, path="dense")
        print(f"dense: {time.perf_counter() - start:.1f} s; residual {dense.residual:.6e} "
              f"(matrix-free {report.residual:.6e}); ‖ν‖ {dense.nu_norm:.6g} "
              f"(matrix-free {report.nu_norm:.6g})")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
