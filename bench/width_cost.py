"""Where the time of a width study goes: training against measuring, per family, parameterisation and width.

Runs the project's own sweep (``width-report``'s default configuration, or the families, widths, seeds and steps
given) from scratch in a temporary folder, and prints the mean seconds per run spent in the optimiser steps
(``train_seconds``) and in the measurements (``measure_seconds``: the tracker's records, the coordinate check,
per-layer alignment, the kernel path and the test metrics) with their ratio, then the CPU seconds of the runs per
family and parameterisation, and the totals: the wall time and the CPU time of the sweep (this process and its
worker processes, start-up included) and of drawing the report. The same per-run numbers are in every report's
*Cost* section and ``runs.csv``.

On a shared machine the wall times grow with the load; the CPU seconds do not (much), so they are the figures to
compare: two idle cores finish the sweep in about its CPU seconds / 2, plus the report, which is drawn in one
process.

    python -m bench.width_cost --jobs 2                                   # the default digits report
    python -m bench.width_cost --families mlp --widths 8,64 --seeds 0 --steps 100 --jobs 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from diagnostics.width.analysis import cost_findings, cost_table
from diagnostics.width.config import SweepConfig
from diagnostics.width.report import write_report
from diagnostics.width.study import config_study


def cpu_seconds() -> float:
    """CPU seconds (user and system) of this process and of its finished child processes so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", help="comma-separated (default: the default report's)")
    parser.add_argument("--widths", help="comma-separated widths for every family (default: spanning d = n·m)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the default report's)")
    parser.add_argument("--steps", type=int, help="steps of every run (default: the default report's budgets)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="local processes")
    args = parser.parse_args(argv)
    values: dict = {}
    if args.families:
        values["families"] = tuple(args.families.split(","))
    if args.widths:
        widths = tuple(int(w) for w in args.widths.split(","))
        values["widths"] = {f: widths for f in values.get("families", SweepConfig().families)}
    if args.seeds:
        values["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.steps:
        values["steps"] = args.steps
    config = SweepConfig(**values)
    with tempfile.TemporaryDirectory(prefix="width-cost-") as folder:
        start, cpu = time.perf_counter(), cpu_seconds()
        study = config_study(config, folder, jobs=args.jobs, resume=False, progress=False)
        sweep_seconds, sweep_cpu = time.perf_counter() - start, cpu_seconds() - cpu
        start, cpu = time.perf_counter(), cpu_seconds()
        write_report(study, folder)
        report_seconds, report_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    runs = study.runs
    print(cost_table(runs).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print()
    print("\n".join(cost_findings(runs)))
    if "cpu_seconds" in runs:
        per = runs.groupby(["family", "parameterization"])[["cpu_seconds", "train_seconds", "measure_seconds"]].sum()
        print("\nCPU seconds of the runs (their processes' CPU time), against their wall seconds training and "
              "measuring:")
        print(per.round(1).to_string())
        print(f"all runs: {runs['cpu_seconds'].sum():.1f} CPU s")
    print(f"\nsweep: {len(runs)} runs in {sweep_seconds:.1f} s wall, {sweep_cpu:.1f} CPU s (jobs={args.jobs}, "
          f"start-up and workers included); report (tables, figures, HTML): {report_seconds:.1f} s wall, "
          f"{report_cpu:.1f} CPU s; total {sweep_cpu + report_cpu:.1f} CPU s, about "
          f"{(sweep_cpu / max(args.jobs, 1) + report_cpu) / 60:.1f} min on {max(args.jobs, 1)} idle cores; "
          f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
