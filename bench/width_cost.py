"""Where the time of a width study goes: training against measuring, per family, parameterisation and width.

Runs the project's own sweep (``width-report``'s default configuration, or the families, widths, seeds and steps
given) from scratch in a temporary folder, and prints the mean seconds per run spent in the optimiser steps
(``train_seconds``) and in the measurements (``measure_seconds``: the tracker's records, the coordinate check,
per-layer alignment, the kernel path and the test metrics) with their ratio, then the totals and the wall time of
the sweep and of drawing the report. The same numbers are in every report's *Cost* section and ``runs.csv``.

    python -m bench.width_cost --jobs 2                                   # the default digits report
    python -m bench.width_cost --families mlp --widths 8,64 --seeds 0 --steps 100 --jobs 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from diagnostics.width.analysis import cost_findings, cost_table
from diagnostics.width.config import SweepConfig
from diagnostics.width.report import write_report
from diagnostics.width.study import config_study


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
        start = time.perf_counter()
        study = config_study(config, folder, jobs=args.jobs, resume=False, progress=False)
        sweep_seconds = time.perf_counter() - start
        start = time.perf_counter()
        write_report(study, folder)
        report_seconds = time.perf_counter() - start
    print(cost_table(study.runs).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print()
    print("\n".join(cost_findings(study.runs)))
    print(f"\nsweep: {len(study.runs)} runs in {sweep_seconds:.1f} s wall (jobs={args.jobs}); "
          f"report (tables, figures, HTML): {report_seconds:.1f} s; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
