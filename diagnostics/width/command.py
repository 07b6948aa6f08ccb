"""``python -m diagnostics width-report``: its options, the sweep config they give, and the run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..data import DATASETS
from .config import FULL, SweepConfig
from .executors import EXECUTORS
from .report import build_report

__all__ = ["config_from", "configure", "run"]


def _comma_list(cast: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from exc

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``width-report`` to its parser."""
    d = SweepConfig()
    parser.description = (
        "Train model families over widths, parameterisations and seeds, track the alignment quantities "
        "(theory/width.md: S1 counting threshold d = n·m, S4 lazy versus rich; theory/results.md: (I2) loss floor, "
        "(I3) gradient domination and the gradient-descent rate) with the loss predictors, the coordinate check, "
        "the kernel dynamics and per-layer alignment, and write a report folder: report.html, report.md, figures "
        "(PNG, SVG), CSV tables, config.json, environment.json. With no arguments: the bundled digits, MLP and CNN "
        "families, NTK and mean-field, 3 seeds (about ten minutes on two cores). Rerunning resumes: finished runs "
        "are skipped. Options override --full and --config."
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help=f"data set (default {d.dataset})")
    data.add_argument("--data-dir", help="folder of the data files (file-based data sets; default "
                      "$DIAGNOSTICS_DATA or ./data)")
    data.add_argument("--n-train", type=int,
                      help=f"training samples n, all used as the probe (default {d.n_train})")
    data.add_argument("--n-test", type=int, help="test samples (default: the whole test split)")
    data.add_argument("--teacher", nargs="+", metavar="KEY=VALUE",
                      help="teacher-student options: d_in, m, teacher_width, teacher_depth, activation, "
                           "noise")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--families", type=_comma_list(str),
                      help="model families, comma-separated (default mlp,cnn; mlp for teacher-student)")
    runs.add_argument("--parameterizations", type=_comma_list(str),
                      help=f"ntk, mf, standard, comma-separated (default {','.join(d.parameterizations)})")
    runs.add_argument("--widths", nargs="+", metavar="[FAMILY:]W1,W2,...",
                      help="widths for every family, or per family (mlp:4,8 cnn:2,4); default: powers of two "
                           "spanning d = n·m")
    runs.add_argument("--seeds", type=_comma_list(int),
                      help=f"initialisation seeds (default {','.join(map(str, d.seeds))})")
    steps_defaults = " ".join(f"{k}={v}" for k, v in d.steps.items())
    runs.add_argument("--steps", nargs="+", metavar="[PARAM=]STEPS",
                      help="full-batch gradient steps, for every run or per parameterisation (ntk=600 mf=300; "
                           f"FAMILY/PARAM=STEPS for one family) (default {steps_defaults})")
    runs.add_argument("--records", type=int,
                      help=f"measurements after step 0, log-spaced over the steps (default {d.records})")
    lr_defaults = " ".join(f"{k}={v:g}" for k, v in d.lr.items())
    runs.add_argument("--lr", nargs="+", metavar="PARAM=LR0",
                      help="base learning rate per parameterisation (or FAMILY/PARAM=LR0); the step is LR0 (ntk), "
                           f"LR0*width (mf), LR0/width (standard) (default {lr_defaults})")
    runs.add_argument("--dtype", choices=("float32", "float64"),
                      help="dtype of the measurements (default float64: B and D1 near d = n·m need it)")
    runs.add_argument("--full", action="store_true",
                      help="the full configuration of docs/width.md: five seeds, five or more widths above d = n·m "
                           "per family; given the default's folder (-o) it reuses its runs")
    runs.add_argument("--lr-sweep", action="store_true",
                      help="also train every run at every lr0 of the grid (lr_grid in --config) and add the "
                           "learning-rate transfer plot and the settings chosen by the rule of docs/width.md")
    runs.add_argument("--mlp-depth", type=int, help=f"hidden layers of the MLP (default {d.mlp_depth})")
    runs.add_argument("--config", type=Path, help="a config.json to start from")
    out = parser.add_argument_group("execution and output")
    out.add_argument("-o", "--output", type=Path,
                     help="report folder (default reports/width-<dataset>, reports/width-<dataset>-full with --full)")
    out.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local processes, or one Ray task per (width, seed) run (default local)")
    out.add_argument("--address", help="address of an existing Ray cluster (--executor ray)")
    out.add_argument("--jobs", type=int, help="local processes, or CPUs of a new local Ray instance "
                     "(default: the CPUs available)")
    out.add_argument("--no-resume", dest="resume", action="store_false",
                     help="rerun every run instead of skipping finished ones")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _key_values(items: list[str], what: str, cast: Callable[[str], object]) -> dict[str, object]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = cast(value)
    return out


def _literal(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _widths(items: list[str], families: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        family, sep, values = item.rpartition(":")
        widths = tuple(int(v) for v in values.split(",") if v.strip())
        for fam in (family,) if sep else families:
            out[fam] = widths
    return out


def config_from(args: argparse.Namespace) -> SweepConfig:
    """Build the :class:`~diagnostics.width.config.SweepConfig`: defaults, ``--full``, ``--config``, options."""
    values = dict(FULL) if args.full else {}
    values.update(json.loads(args.config.read_text()) if args.config else {})
    for key in ("dataset", "data_dir", "n_train", "n_test", "parameterizations", "seeds", "records", "dtype",
                "mlp_depth", "families"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if "families" not in values and values.get("dataset") == "teacher-student":
        values["families"] = ("mlp",)
    if args.widths:
        families = values.get("families", SweepConfig().families)
        values["widths"] = _widths(args.widths, tuple(families))
    if args.steps:
        values["steps"] = _override(values.get("steps", {}), _steps(args.steps))
    if args.lr:
        values["lr"] = _override(values.get("lr", {}), _key_values(args.lr, "--lr", float))
    if args.teacher:
        values["teacher"] = _key_values(args.teacher, "--teacher", _literal)
    return SweepConfig.from_dict(values)


def _steps(items: list[str]) -> dict[str, int]:
    """Parse ``--steps 300`` (every run) or ``--steps ntk=600 mf=300``."""
    if len(items) == 1 and "=" not in items[0]:
        return {"*": int(items[0])}
    return _key_values(items, "--steps", int)


def _override(current: dict | int, given: dict) -> dict | int:
    """Merge option values into a config's table: a parameterisation key replaces its ``"family/…"`` entries."""
    if "*" in given:
        return given["*"]
    base = dict(current) if isinstance(current, dict) else {}
    for key in given:
        if "/" not in key:
            base = {k: v for k, v in base.items() if k.rpartition("/")[2] != key}
    return {**base, **given}


def run(args: argparse.Namespace) -> int:
    """Build the report; exit code 0, 1 (some runs missing) or 2 (bad options or data)."""
    try:
        config = config_from(args)
        folder = args.output or Path("reports") / f"width-{config.dataset}{'-full' if args.full else ''}"
        result = build_report(config, folder, executor=args.executor, jobs=args.jobs, address=args.address,
                              resume=args.resume, progress=args.progress, lr_sweep=args.lr_sweep)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sweep = result.sweep
    print(f"report: {result.folder / 'report.html'} ({len(sweep.runs)} runs finished, {len(sweep.missing)} "
          f"missing, {sweep.executed} executed in this call, {result.seconds:.0f} s)")
    if not sweep.missing.empty:
        for row in sweep.missing.itertuples():
            print(f"  missing {row.run_id}: {row.status} {row.error}", file=sys.stderr)
        return 1
    return 0
