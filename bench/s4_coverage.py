"""How often the S4 verdict says *holds* when the true slope sits exactly at its threshold: the interval's coverage.

Simulated sweeps (``theory/width.md#the-interval-of-the-slope``): ``log Δ = α log w + b_seed + ε`` at four widths
16–128 with ``α = −0.25`` (the threshold of ``expect="decreasing"``), a Gaussian offset per seed (sd 0.3) and
Gaussian noise (sd 0.1). A 90 % interval may lie wholly below ``−0.25`` — the verdict *holds* — in 5 % of the
sweeps. The table gives that rate and the two-sided coverage for :func:`theory.kernel_movement_trend` (the
``t``-interval over per-seed slopes) and for the percentile bootstrap over seeds it replaced::

    python -m bench.s4_coverage                      # 3 and 5 seeds, 2000 and 1000 sweeps; seconds
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

import theory

WIDTHS = (16.0, 32.0, 64.0, 128.0)
THRESHOLD = -0.25


def replicates(seeds: int, reps: int, slope: float = THRESHOLD, rng_seed: int = 7
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(widths, movements, seed labels)`` of ``reps`` simulated sweeps with ``seeds`` seeds each."""
    rng = np.random.default_rng(rng_seed)
    widths = np.repeat(WIDTHS, seeds)
    groups = np.tile(np.arange(seeds), len(WIDTHS))
    for _ in range(reps):
        log_mv = slope * np.log(widths) + 0.3 * rng.normal(size=seeds)[groups] + 0.1 * rng.normal(size=widths.size)
        yield widths, np.exp(log_mv), groups


def percentile_bootstrap(widths: np.ndarray, movements: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                         level: float = 0.9, n_boot: int = 1000) -> tuple[float, float]:
    """Return the former interval: whole seeds resampled with replacement, the slope refitted, its percentiles.

    Every seed has the same widths, so the pooled slope of a resample is the mean of its seeds' slopes.
    """
    seeds = np.unique(groups)
    slopes = np.array([np.polyfit(np.log(widths[groups == g]), np.log(movements[groups == g]), 1)[0] for g in seeds])
    resampled = slopes[rng.integers(seeds.size, size=(n_boot, seeds.size))].mean(axis=1)
    lo, hi = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def coverage(seeds: int, reps: int) -> dict[str, float]:
    """Rates of *holds* and of intervals containing the true slope, for the verdict and the former bootstrap."""
    rng = np.random.default_rng(0)
    held = covered = boot_held = boot_covered = 0
    for widths, movements, groups in replicates(seeds, reps):
        verdict = theory.kernel_movement_trend(widths, movements, expect="decreasing", groups=groups)
        lo, hi = verdict.details["interval"]
        held += verdict.holds
        covered += lo <= THRESHOLD <= hi
        blo, bhi = percentile_bootstrap(widths, movements, groups, rng)
        boot_held += bhi <= THRESHOLD
        boot_covered += blo <= THRESHOLD <= bhi
    return {"seeds": seeds, "sweeps": reps, "holds": held / reps, "coverage": covered / reps,
            "bootstrap_holds": boot_held / reps, "bootstrap_coverage": boot_covered / reps}


def main(argv: list[str] | None = None) -> int:
    """Print the table for 3 and 5 seeds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, nargs=2, default=(2000, 1000), metavar=("THREE", "FIVE"))
    args = parser.parse_args(argv)
    print("| seeds | sweeps | holds (allowed 5 %) | coverage (90 %) | former bootstrap: holds | its coverage |")
    print("|---|---|---|---|---|---|")
    for seeds, reps in zip((3, 5), args.reps, strict=True):
        r = coverage(seeds, reps)
        print(f"| {seeds} | {reps} | {r['holds']:.1%} | {r['coverage']:.1%} | {r['bootstrap_holds']:.1%} | "
              f"{r['bootstrap_coverage']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
