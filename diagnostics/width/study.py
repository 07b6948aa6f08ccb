"""Width studies of any model family, data and training recipe: :func:`study`, and the project's own sweep.

One call trains a family over widths and seeds with the user's recipe, measures every run on a fixed probe at
log-spaced steps, and returns a :class:`Study`: its tidy ``history`` (one row per run per record: width, seed, step
and every tracked quantity), its ``runs`` (one row per run), the figures for a notebook, and :meth:`Study.report`,
which writes the report folder of ``python -m diagnostics width-report`` (``theory/width.md``)::

    from diagnostics.width import study
    result = study(lambda width: MyNet(width), (X, y), widths=[64, 128, 256, 512], optimizer="adamw", lr=1e-3,
                   loss="ce", batch_size=64, steps=2000, seeds=[0, 1])
    result.history            # DataFrame
    result.report("reports/my-net")

The project's own families (``mlp``, ``cnn``, ... of :func:`~diagnostics.models.build_model`) are factories of the
same kind (:func:`~diagnostics.width.config.config_plan`): :func:`build_report` runs a
:class:`~diagnostics.width.config.SweepConfig` through :func:`run_study` like any other study.

Before any run starts, :func:`run_study` checks what it can (:func:`validate`): every factory builds, its parameter
count grows with the width, the probe's targets fit the model's outputs and its Grams fit in memory, and one
training step on the first batch runs; a problem raises :class:`~diagnostics.errors.DiagnosticsError` and nothing is
written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from ..engine import inputs as _inputs
from ..engine.memory import resolve_budget
from ..errors import DiagnosticsError, format_bytes
from ..models import count_parameters
from ..targets import Targets
from .analysis import findings
from .batches import StudyData, study_data
from .config import SweepConfig, config_data, config_plan, config_setup, load_data
from .figures import draw_figures
from .lr_sweep import lr_sweep as run_lr_sweep
from .plan import Family, Plan, as_families, check_growth, record_steps, widths_around_threshold
from .recipe import Recipe, optimizer_factory
from .report import ReportResult, environment, write_report
from .sweep import SweepResult, run_sweep, worker_count
from .training import Trainer

__all__ = ["Study", "build_report", "config_study", "run_study", "study", "validate"]

#: Gram-sized matrices a run holds at once besides one per record: ``K_0``, the previous and current ``K``, the
#: eigenvectors of a spectrum and a working copy.
_RESIDENT_GRAMS = 5


@dataclass
class Study:
    """A width study: what ran and its tables.

    Attributes
    ----------
    title
        The report's title.
    setup
        Sentences saying what was run (the report's *Setup* section).
    config
        JSON-ready description of the study (the report's ``config.json``).
    sweep
        The tables (:class:`~diagnostics.width.sweep.SweepResult`).
    environment
        Versions, CPU, threads and executor (the report's ``environment.json``).
    seconds
        Wall time of the study.
    """

    title: str
    setup: list[str]
    config: dict[str, Any]
    sweep: SweepResult
    environment: dict[str, Any]
    seconds: float

    @property
    def history(self) -> pd.DataFrame:
        """One row per run per record: ``family``, ``parameterization``, ``width``, ``seed``, ``step``, and more.

        Every tracked quantity: the tracker's columns, kernel–target alignment, kernel velocity, distance to the
        end kernel.
        """
        return self.sweep.records

    @property
    def runs(self) -> pd.DataFrame:
        """One row per finished run: final and initial values, predictors, verdicts, test metrics, timings."""
        return self.sweep.runs

    @property
    def missing(self) -> pd.DataFrame:
        """Runs without a result (failed or not run), with their error."""
        return self.sweep.missing

    def findings(self) -> list[str]:
        """Sentences stating what the study shows (:func:`~diagnostics.width.analysis.findings`)."""
        return findings(self.sweep)

    def figures(self) -> dict[str, Figure]:
        """Every figure of the report, by name (they display in a notebook)."""
        return draw_figures(self.sweep)

    def report(self, folder: str | os.PathLike[str]) -> ReportResult:
        """Write the report folder (:func:`~diagnostics.width.report.write_report`).

        ``report.html``, ``report.md``, ``figures/``, the CSV tables, ``config.json``, ``environment.json``.
        """
        return write_report(self, folder)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: title, configuration, environment, seconds, the runs and the missing runs."""
        return {"title": self.title, "config": self.config, "environment": self.environment,
                "seconds": self.seconds, "runs": self.runs.to_dict("records"),
                "missing": self.missing.to_dict("records")}

    def __str__(self) -> str:
        head = (f"{self.title}: {len(self.runs)} of {len(self.runs) + len(self.missing)} runs finished "
                f"({self.seconds:.0f} s)")
        return "\n".join([head, *(f"- {line}" for line in self.findings())])


def study(
    models: Callable[[int], nn.Module] | Mapping[int, Callable[[], nn.Module]] | Family | Sequence[Family],
    data: Any,
    *,
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = None,
    lr: float | None = None,
    steps: int = 300,
    batch_size: int | None = None,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "mse",
    widths: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    records: int = 6,
    probe: Any = None,
    probe_size: int | None = 128,
    test: Any = None,
    scheduler: str | Callable[[torch.optim.Optimizer], Any] | None = None,
    clip_grad_norm: float | None = None,
    amp: str | None = None,
    train_step: Callable[[nn.Module, Any, torch.optim.Optimizer], Any] | None = None,
    name: str | None = None,
    parameterization: str = "standard",
    expect: str | None = None,
    output: _inputs.OutputSelector = None,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    folder: str | os.PathLike[str] | None = None,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Study:
    """Train a model family over widths and seeds by any recipe, measure every run, and return the :class:`Study`.

    Parameters
    ----------
    models
        A factory ``width → nn.Module``, a dict ``{width: factory}`` of factories without arguments, a
        :class:`~diagnostics.width.plan.Family` or a list of families (each may carry its own recipe). Factories are
        called under ``torch.manual_seed(seed)``.
    data
        The training data: a :class:`~diagnostics.data.DataSplit`, a pair ``(X, Y)`` (``X`` a tensor, tuple or dict
        of tensors; ``Y`` class indices, one-hot or real rows), a map-style ``Dataset`` of ``(x, y)`` pairs or a
        ``DataLoader`` (then ``batch_size`` stays ``None``).
    optimizer
        ``"sgd"``, ``"adam"``, ``"adamw"`` (with ``lr``), or a factory ``params → Optimizer`` or
        ``(params, width) → Optimizer``; needed unless every family carries its own recipe.
    lr
        The learning rate of a named optimiser.
    steps, batch_size, loss, scheduler, clip_grad_norm, amp, train_step
        The recipe (:class:`~diagnostics.width.recipe.Recipe`): optimiser steps, samples per step (``None``: full
        batch), ``"mse"``/``"ce"``/callable, learning-rate schedule, gradient clipping, mixed precision
        (``"bf16"``/``"fp16"``), the user's own ``train_step(model, batch, optimizer) → loss``.
    widths
        Widths of a factory (default: powers of two spanning the counting threshold ``d = n·m``).
    seeds
        Seeds of initialisation and batch order: one run per width and seed.
    records
        Measurements after step 0, log-spaced over the steps.
    probe, probe_size
        The fixed probe of the measurements, or its size drawn from ``data`` (seed 0); ``n·m`` of the probe is the
        counting threshold, and its Grams are ``n·m × n·m``.
    test
        Test data for the test metrics (default: a ``DataSplit``'s test split).
    name, parameterization, expect
        The family's name (default: the factory's, else ``"model"``) and parameterisation label in tables and
        figures, and what S4 expects of its kernel movement against width (``"decreasing"``, ``"order-one"``, or
        ``None``: the slope is not judged).
    output
        Output selector of the model (``"logits"``, an index, a callable), for the loss and the measurements.
    device
        Where the runs train and measure (default the CPU).
    dtype
        ``"float32"`` or ``"float64"``: dtype of the measurements (default float64 on the CPU).
    folder
        Keep every finished run in ``folder/runs/`` and resume from there (default: in memory).
    executor, jobs, address
        ``"local"`` (in this process or ``jobs`` processes) or ``"ray"``, as in
        :func:`~diagnostics.width.sweep.run_sweep`. The local processes are spawned, so a script that runs a
        study in several of them calls it under ``if __name__ == "__main__":`` (the report's figures are drawn by
        as many processes).
    resume, progress
        Skip runs already finished in ``folder``; show a progress bar.

    Returns
    -------
    Study

    Raises
    ------
    DiagnosticsError
        Before any run: bad arguments, a factory that fails or whose parameter count does not grow with the width,
        batches or a probe that do not fit the model, a probe whose Grams do not fit in memory.
    """
    start = time.perf_counter()
    prepared = study_data(data, probe=probe, probe_size=probe_size, test=test)
    if isinstance(data, torch.utils.data.DataLoader) and batch_size is not None:
        raise DiagnosticsError("data is a DataLoader, which brings its own batches: leave batch_size=None")
    if isinstance(optimizer, str):
        optimizer = optimizer_factory(optimizer, lr)
    elif lr is not None:
        raise DiagnosticsError("lr= goes with a named optimizer; an optimizer factory sets its own learning rate")
    families = as_families(models, name=name, widths=widths, parameterization=parameterization, expect=expect)
    if optimizer is None:
        if any(f.recipe is None for f in families):
            raise DiagnosticsError("optimizer= is needed (a name with lr=, or a factory of the parameters) unless "
                                   "every family carries its own recipe")
    else:
        recipe = Recipe(optimizer, steps, batch_size, loss, scheduler, clip_grad_norm, amp, train_step)
        families = tuple(f if f.recipe is not None else _with(f, recipe=recipe) for f in families)
    plan = validate(families, prepared, seeds=seeds, records=records, dtype=dtype,
                    device=None if device is None else str(device), output=output)
    names = ", ".join(sorted({f.name for f in plan.families}))
    return run_study(plan, prepared, title=f"Width study: {names} on {prepared.name}",
                     setup=plan_setup(plan, prepared), config=plan_config(plan, prepared), folder=folder,
                     executor=executor, jobs=jobs, address=address, resume=resume, progress=progress, start=start)


def run_study(plan: Plan, data: StudyData, *, title: str, setup: list[str], config: dict[str, Any],
              folder: str | os.PathLike[str] | None = None, executor: str = "local", jobs: int | None = None,
              address: str | None = None, resume: bool = True, progress: bool = True,
              start: float | None = None) -> Study:
    """Run every run of a validated plan (:func:`~diagnostics.width.sweep.run_sweep`) and return the :class:`Study`."""
    start = time.perf_counter() if start is None else start
    jobs = worker_count(plan, data, jobs) if executor == "local" else jobs or len(os.sched_getaffinity(0))
    sweep = run_sweep(plan, data, folder, executor=executor, jobs=jobs, address=address, resume=resume,
                      progress=progress)
    env = environment(executor=executor, jobs=jobs, address=address, device=plan.device or "cpu")
    return Study(title, setup, config, sweep, env, time.perf_counter() - start)


def validate(families: Sequence[Family], data: StudyData, *, seeds: Sequence[int], records: int,
             dtype: str | None = None, device: str | None = None, output: _inputs.OutputSelector = None) -> Plan:
    """Check a study before it runs and return its plan (families with resolved widths).

    Builds every family's model at every width (seed 0) and counts its parameters (:func:`check_growth`); forwards
    the probe through the smallest model and matches its targets to the outputs; estimates the memory of the
    Grams (``records + 6`` matrices of ``(n·m)²`` floats) against the measurement budget; and takes one training
    step of the smallest model on the first batch.

    Raises
    ------
    DiagnosticsError
        With what went wrong and what to change.
    """
    where = torch.device(device or "cpu")
    if where.type == "cuda" and not torch.cuda.is_available():
        raise DiagnosticsError(f"device {device!r} asked for, but torch sees no CUDA device")
    resolved = []
    for family in families:
        if family.recipe is None:
            raise DiagnosticsError(f"family {family.name!r} has no recipe")
        n_train = data.n_train
        if family.recipe.batch_size is not None and n_train is not None and family.recipe.batch_size > n_train:
            raise DiagnosticsError(f"batch_size {family.recipe.batch_size} exceeds the {n_train} training samples")
        m = _check_probe(family, data, device=where, output=output)
        widths = family.widths or widths_around_threshold(family, data.n_probe * m)
        check_growth(family, {w: count_parameters(_build(family, w)) for w in widths})
        _check_memory(data.n_probe * m, records, dtype, where)
        _check_step(family, min(widths), data, where, output)
        resolved.append(_with(family, widths=tuple(widths)))
    return Plan(tuple(resolved), tuple(seeds), records, dtype, device, output)


def plan_setup(plan: Plan, data: StudyData) -> list[str]:
    """Sentences of the report's *Setup* section for a study: data, probe, families, recipes, measurements."""
    info = data.to_dict()
    lines = [
        f"Data: {info['name']}, {info['n_train'] if info['n_train'] is not None else 'an iterable of'} training "
        f"samples; probe of n = {info['n_probe']} samples ({info['probe_inputs']})"
        + (", the whole training set" if data.probe_is_train else ", fixed for every record of every run")
        + (f"; {info['n_test']} test samples." if info["n_test"] else "; no test split."),
    ]
    for family in plan.families:
        r = family.recipe
        batches = "full batch" if r.batch_size is None else f"batches of {r.batch_size}"
        extras = [f"schedule {r.scheduler if isinstance(r.scheduler, str) else 'custom'}" if r.scheduler else "",
                  f"clipping at {r.clip_grad_norm:g}" if r.clip_grad_norm else "", f"autocast {r.amp}" if r.amp else "",
                  "the user's train_step" if r.train_step else ""]
        extra = "".join(f", {e}" for e in extras if e)
        lines.append(
            f"*{family.name}/{family.parameterization}*: widths {', '.join(map(str, family.widths))}; seeds "
            f"{', '.join(map(str, plan.seeds))}; {_optimizer_text(r.optimizer)}, {r.steps} steps, {batches}, loss "
            f"{r.loss_name}{extra}; records at steps "
            f"{', '.join(map(str, record_steps(r.steps, plan.records)))}; S4 expectation: "
            f"{family.expect or 'none (the slope is measured, not judged)'}."
        )
    dtype = plan.dtype or "its default dtype (float64 on the CPU)"
    lines.append(f"Measurements: `AlignmentTracker` on the probe in {dtype}, on {plan.device or 'the CPU'}; every "
                 "record is a full one (the Gram K = JJᵀ of n·m outputs).")
    return lines


def plan_config(plan: Plan, data: StudyData) -> dict[str, Any]:
    """JSON-ready description of a study (``config.json``): data, families with widths and recipes, seeds."""
    return json.loads(json.dumps({
        "data": data.to_dict(), "seeds": list(plan.seeds), "records": plan.records, "dtype": plan.dtype,
        "device": plan.device,
        "families": [{"name": f.name, "parameterization": f.parameterization, "widths": list(f.widths),
                      "expect": f.expect, "factory": f.identity(), "recipe": f.recipe.key()} for f in plan.families],
    }, default=str))


def config_study(config: SweepConfig, folder: str | os.PathLike[str] | None = None, *, executor: str = "local",
                 jobs: int | None = None, address: str | None = None, resume: bool = True,
                 progress: bool = True) -> Study:
    """Run the project's own sweep of ``config`` (resuming from ``folder``) as a study.

    The families of ``config`` become factories of a plan (:func:`~diagnostics.width.config.config_plan`) that runs
    through :func:`run_study` like any study.

    Raises
    ------
    FileNotFoundError
        The data set's files are missing (the message names them).
    """
    start = time.perf_counter()
    data = load_data(config)
    config = config.resolve(data)
    prepared = config_data(config, data)
    plan = validate(config_plan(config, data).families, prepared, seeds=config.seeds, records=config.records,
                    dtype=config.dtype)
    return run_study(plan, prepared, title=f"Width-scaling report: {data.name}", setup=config_setup(config, data),
                     config=config.to_dict(), folder=folder, executor=executor, jobs=jobs, address=address,
                     resume=resume, progress=progress, start=start)


def build_report(config: SweepConfig, folder: str | os.PathLike[str], *, executor: str = "local",
                 jobs: int | None = None, address: str | None = None, resume: bool = True, progress: bool = True,
                 lr_sweep: bool = False) -> ReportResult:
    """Run the project's own sweep of ``config`` (:func:`config_study`, resuming from ``folder``) and write its report.

    With ``lr_sweep``, every run is also trained at every ``lr₀`` of ``config.lr_grid``
    (:mod:`~diagnostics.width.lr_sweep`) and the report gains the learning-rate transfer plot.
    """
    start = time.perf_counter()
    result = config_study(config, folder, executor=executor, jobs=jobs, address=address, resume=resume,
                          progress=progress)
    lr_table = None
    if lr_sweep:
        lr_table = run_lr_sweep(config, jobs=jobs or len(os.sched_getaffinity(0)), progress=progress)
        result.seconds = time.perf_counter() - start
    return write_report(result, Path(folder), lr_table=lr_table)


# ----------------------------------------------------------------------------------------------


def _with(family: Family, **changes: Any) -> Family:
    return replace(family, **changes)


def _build(family: Family, width: int) -> nn.Module:
    try:
        return family.model(width, 0)
    except DiagnosticsError:
        raise
    except Exception as exc:
        raise DiagnosticsError(f"family {family.name!r}: the factory failed for width {width}: "
                               f"{type(exc).__name__}: {exc}") from exc


def _check_probe(family: Family, data: StudyData, *, device: torch.device, output: Any) -> int:
    """Forward the probe through the family's smallest model; return its outputs per sample ``m``."""
    x, y = data.probe
    model = _build(family, min(family.widths) if family.widths else 1).to(device)
    head = _inputs.take(x, slice(0, 2))
    try:
        with torch.no_grad():
            out = _inputs.select_output(_inputs.call(model, _inputs.to(head, device, next(model.parameters()).dtype)),
                                        output, _inputs.batch_size(head))
    except DiagnosticsError:
        raise
    except Exception as exc:
        raise DiagnosticsError(f"family {family.name!r}: the probe's inputs ({_inputs.describe(x)}) do not fit the "
                               f"model: {type(exc).__name__}: {exc}") from exc
    m = int(out.shape[1])
    Targets.build(y, data.n_probe, m, family.recipe.measure_loss)  # raises when the targets do not fit the outputs
    return m


def _check_memory(nm: int, records: int, dtype: str | None, device: torch.device) -> None:
    """Refuse a probe whose Grams (one per record, and the resident ones) exceed the measurement budget."""
    need = (records + 1 + _RESIDENT_GRAMS) * nm * nm * 8
    budget = resolve_budget(None, device)
    if need > budget:
        raise DiagnosticsError(
            f"a probe with n·m = {nm:,} outputs makes {nm:,} × {nm:,} Grams; a run keeps "
            f"{records + 1 + _RESIDENT_GRAMS} of them ({format_bytes(need)}), more than the memory budget of "
            f"{format_bytes(budget)} on {device}: "
            "pass a smaller probe_size (or fewer records)"
        )


def _check_step(family: Family, width: int, data: StudyData, device: torch.device, output: Any) -> None:
    """One training step of the smallest model on the first batch, on a throw-away model."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = _build(family, width).to(device)
        trainer = Trainer(model, family.recipe, data.batches(family.recipe.batch_size, 0, device), width, output)
        try:
            trainer.step()
        except DiagnosticsError:
            raise
        except Exception as exc:
            raise DiagnosticsError(f"family {family.name!r}: a training step on the first batch failed: "
                                   f"{type(exc).__name__}: {exc}") from exc


def _optimizer_text(factory: Any) -> str:
    key = factory.key() if hasattr(factory, "key") and callable(factory.key) else None
    if key is None:
        return f"optimizer {getattr(factory, '__qualname__', type(factory).__name__)}"
    options = ", ".join(f"{k}={v}" for k, v in key["options"].items())
    scaling = f" × {key['scaling']} width scaling" if key["scaling"] else ""
    return f"{key['name']} (lr {key['lr']:g}{scaling}{', ' + options if options else ''})"
