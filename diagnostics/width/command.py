"""``python -m diagnostics width-report``: its options, and the study they run.

Three modes, one report:

- the project's own sweep (no ``--family``): the bundled families of ``--families`` on ``--dataset``, trained by
  full-batch gradient descent (:func:`config_from` builds the :class:`~diagnostics.width.config.SweepConfig`);
- the user's family: ``--family MODULE:FUNCTION`` (a factory ``width → nn.Module``) on ``--data MODULE:FUNCTION``
  (a function returning the data), trained by ``--optimizer`` with ``--lr``, ``--batch-size``, ``--steps``, ...
  (:func:`study_from`, then :func:`~diagnostics.width.study.study`);
- runs trained elsewhere: ``--from-runs DIR``, the tagged tracker histories under ``DIR``
  (:func:`~diagnostics.width.histories.from_runs`).

Everything is checked before any run starts; a bad option, an import error, a factory whose parameter count does
not grow with the width, batches or a probe that do not fit the model: a message, exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..errors import DiagnosticsError
from .config import FULL, SweepConfig
from .executors import EXECUTORS
from .histories import from_runs
from .plan import family_name
from .recipe import AMP_DTYPES, OPTIMIZERS, SCHEDULES, optimizer_factory
from .report import ReportResult
from .study import build_report, study

__all__ = ["config_from", "configure", "load_object", "run", "study_from"]

#: Options of the user's family that the project's own sweep does not take, with their defaults.
_FAMILY_OPTIONS = {"data": None, "optimizer": None, "batch_size": None, "loss": None, "probe_size": None,
                   "scheduler": None, "clip_grad_norm": None, "amp": None, "train_step": None, "name": None,
                   "expect": None, "device": None, "model_output": None, "momentum": None, "weight_decay": None}
#: Options of the project's own sweep that the user's family does not take.
_SWEEP_OPTIONS = ("dataset", "data_dir", "n_train", "n_test", "teacher", "families", "parameterizations", "full",
                  "lr_sweep", "mlp_depth", "config")


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
        "families, NTK and mean-field, 3 seeds (about six minutes on two idle cores). Rerunning resumes: finished runs "
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
    yours = parser.add_argument_group(
        "your model family (instead of the bundled ones; --widths, --seeds, --steps, --records, --dtype apply too)")
    yours.add_argument("--family", metavar="MODULE:FUNCTION",
                       help="a factory width → nn.Module, e.g. mypkg.models:make_model (imported from the current "
                            "folder or the Python path)")
    yours.add_argument("--data", metavar="MODULE:FUNCTION",
                       help="a function returning the training data: a DataSplit, a pair (X, Y), a Dataset or a "
                            "DataLoader, or a dict with keys data, probe, test")
    yours.add_argument("--optimizer", metavar="NAME|MODULE:FUNCTION",
                       help=f"{', '.join(OPTIMIZERS)} (with --lr), or a factory (params[, width]) → Optimizer")
    yours.add_argument("--momentum", type=float, help="momentum of --optimizer sgd")
    yours.add_argument("--weight-decay", type=float, help="weight decay of a named optimizer")
    yours.add_argument("--batch-size", type=int, help="samples per step (default: the whole training set)")
    yours.add_argument("--loss", help="mse or ce (default mse)")
    yours.add_argument("--probe-size", type=int, help="probe samples n drawn from the data (default 128)")
    yours.add_argument("--scheduler", choices=SCHEDULES, help="learning-rate schedule over the steps")
    yours.add_argument("--clip-grad-norm", type=float, help="clip the gradient to this norm")
    yours.add_argument("--amp", choices=AMP_DTYPES, help="mixed precision of the training forward pass")
    yours.add_argument("--train-step", metavar="MODULE:FUNCTION",
                       help="your own step train_step(model, batch, optimizer) → loss")
    yours.add_argument("--name", help="the family's name in the report (default: the factory's name)")
    yours.add_argument("--expect", choices=("decreasing", "order-one"),
                       help="what S4 expects of the kernel movement against width (default: not judged)")
    yours.add_argument("--device", help="where the runs train (default cpu)")
    yours.add_argument("--model-output", metavar="KEY",
                       help="the output to measure when the model returns a dict or an object (e.g. logits)")
    yours.add_argument("--from-runs", type=Path, metavar="DIR",
                       help="no training: the report of the tracker histories under DIR (AlignmentCallback / "
                            "AlignmentTracker with tags={'width': ..., 'seed': ...})")
    out = parser.add_argument_group("execution and output")
    out.add_argument("-o", "--output", type=Path,
                     help="report folder (default reports/width-<dataset>, reports/width-<dataset>-full with --full, "
                          "reports/width-<name> for --family, reports/width-<DIR name> for --from-runs)")
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


def load_object(reference: str, option: str) -> Any:
    """Import ``MODULE:FUNCTION`` (the current folder first on the path) and return the object.

    Raises
    ------
    DiagnosticsError
        A reference without ``:``, a module that fails to import, or a missing name.
    """
    module_name, sep, name = reference.partition(":")
    if not sep or not module_name or not name:
        raise DiagnosticsError(f"{option} expects MODULE:FUNCTION, e.g. mypkg.models:make_model; got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise DiagnosticsError(f"{option} {reference}: cannot import {module_name}: "
                               f"{type(exc).__name__}: {exc}") from exc
    try:
        obj = module
        for part in name.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise DiagnosticsError(f"{option} {reference}: {module_name} has no {name!r}") from exc
    return obj


def study_from(args: argparse.Namespace) -> dict[str, Any]:
    """Return the arguments of :func:`~diagnostics.width.study.study` that the options of ``--family`` give.

    Raises
    ------
    DiagnosticsError
        An option of the project's sweep given with ``--family``, a missing ``--data``/``--optimizer``, an import
        that fails, or a value ``study`` refuses.
    """
    given = [f"--{k.replace('_', '-')}" for k in _SWEEP_OPTIONS if getattr(args, k) not in (None, False)]
    if given:
        raise DiagnosticsError(f"{', '.join(given)} belong to the bundled families; with --family give --data and "
                               "the recipe instead")
    for option in ("data", "optimizer"):
        if getattr(args, option) is None:
            raise DiagnosticsError(f"--family needs --{option}")
    factory = load_object(args.family, "--family")
    loaded = load_object(args.data, "--data")
    data = loaded() if callable(loaded) else loaded
    parts = dict(data) if isinstance(data, dict) else {"data": data}
    unknown = set(parts) - {"data", "probe", "test"}
    if unknown or "data" not in parts:
        raise DiagnosticsError(f"--data {args.data} returned a dict with keys {sorted(parts)}; expected data (and "
                               "probe, test)")
    lr = _one(args.lr, "--lr", float)
    if args.optimizer in OPTIMIZERS:
        options = {k: v for k in ("momentum", "weight_decay") if (v := getattr(args, k)) is not None}
        optimizer = optimizer_factory(args.optimizer, lr, **options)
    else:
        if lr is not None or args.momentum is not None or args.weight_decay is not None:
            raise DiagnosticsError("--lr, --momentum and --weight-decay go with a named --optimizer")
        optimizer = load_object(args.optimizer, "--optimizer")
    widths = tuple(w for item in (args.widths or ()) for w in _comma_list(int)(item)) or None
    values = {
        "models": factory, **parts, "optimizer": optimizer, "widths": widths,
        "steps": _one(args.steps, "--steps", int), "batch_size": args.batch_size, "loss": args.loss,
        "seeds": args.seeds, "records": args.records, "probe_size": args.probe_size, "scheduler": args.scheduler,
        "clip_grad_norm": args.clip_grad_norm, "amp": args.amp, "expect": args.expect, "device": args.device,
        "dtype": args.dtype, "output": args.model_output,
        "train_step": load_object(args.train_step, "--train-step") if args.train_step else None,
        "name": args.name,
    }
    return {k: v for k, v in values.items() if v is not None or k in ("batch_size", "widths")}


def _one(values: list[str] | None, option: str, cast: Callable[[str], Any]) -> Any:
    """Return the single value of an option that takes several for the bundled families (``--lr``, ``--steps``)."""
    if not values:
        return None
    if len(values) != 1 or "=" in values[0]:
        raise DiagnosticsError(f"{option} takes one value with --family, got {' '.join(values)}")
    try:
        return cast(values[0])
    except ValueError as exc:
        raise DiagnosticsError(f"{option}: {exc}") from exc


def _report(args: argparse.Namespace) -> ReportResult:
    """Run the mode the options ask for and write its report."""
    if args.from_runs is not None:
        if args.family is not None:
            raise DiagnosticsError("--from-runs reads runs trained elsewhere: it takes no --family")
        folder = args.output or Path("reports") / f"width-{args.from_runs.resolve().name}"
        return from_runs(args.from_runs, family=args.name or "model").report(folder)
    if args.family is not None:
        values = study_from(args)
        folder = args.output or Path("reports") / f"width-{values.get('name') or family_name(values['models'])}"
        result = study(**values, folder=folder, executor=args.executor, jobs=args.jobs, address=args.address,
                       resume=args.resume, progress=args.progress)
        return result.report(folder)
    given = [f"--{k.replace('_', '-')}" for k, default in _FAMILY_OPTIONS.items() if getattr(args, k) != default]
    if given:
        raise DiagnosticsError(f"{', '.join(given)} go with --family MODULE:FUNCTION (your own model family)")
    config = config_from(args)
    folder = args.output or Path("reports") / f"width-{config.dataset}{'-full' if args.full else ''}"
    return build_report(config, folder, executor=args.executor, jobs=args.jobs, address=args.address,
                        resume=args.resume, progress=args.progress, lr_sweep=args.lr_sweep)


def run(args: argparse.Namespace) -> int:
    """Build the report; exit code 0, 1 (some runs missing) or 2 (bad options or data)."""
    try:
        result = _report(args)
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
