"""Width sweeps: run every run of a study's plan and collect their tables (``theory/width.md``).

What one run trains and measures is in :mod:`diagnostics.width.run`; this module runs them all and
collects their tables.

Execution. Every run is independent and deterministic (seeded initialisation and batch order, ``torch``
limited to one thread inside the run on the CPU), so the ``local`` executor (in-process, or a pool of ``jobs``
processes) and the ``ray`` executor (one Ray task per run) produce identical tables. With a folder, each finished
run is written atomically to ``<folder>/runs/<run_id>.json`` (temporary file, then :func:`os.replace`) by the
driver as soon as it arrives, so an interrupted sweep loses only the runs in flight and a rerun skips the finished
ones (those whose fingerprint, :meth:`~diagnostics.width.plan.Plan.fingerprint`, matches). A run that raises is
written to ``<run_id>.failed.json`` with its error, listed as missing and retried on the next rerun.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..errors import DiagnosticsError
from ..store import RunStore
from .batches import StudyData
from .executors import EXECUTORS
from .plan import Plan, RunSpec
from .run import run_one

__all__ = ["TIMING_COLUMNS", "SweepResult", "run_one", "run_sweep", "tables"]

#: Columns that measure time, not the model: excluded when comparing tables.
TIMING_COLUMNS: tuple[str, ...] = ("measure_seconds", "wall_time", "seconds", "train_seconds", "cpu_seconds")
_KEYS = ["run_id", "family", "parameterization", "width", "seed"]


# ---------------------------------------------------------------------------------------------
# Executors: each yields one outcome per run, in completion order


def _outcome(plan: Plan, spec: RunSpec, data: StudyData) -> dict[str, Any]:
    """Run ``spec`` and wrap the result or the error; never raises (one failure loses one run)."""
    try:
        return {"status": "ok", **run_one(plan, spec, data)}
    except Exception as exc:  # noqa: BLE001 - a run's failure is data for the report
        return _failure(spec, exc, traceback.format_exc())


def _failure(spec: RunSpec, exc: BaseException, trace: str = "") -> dict[str, Any]:
    """Return the outcome of a run that raised ``exc`` (or whose worker was lost)."""
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": trace,
            "summary": {**spec.to_dict(), "run_id": spec.run_id}}


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    """Tables of a sweep.

    Every table has the run's ``run_id``, ``family``, ``parameterization``, ``width`` and ``seed``.

    Attributes
    ----------
    records : pandas.DataFrame
        One row per run per tracker record (the tracker's columns, the kernel–target alignment, the kernel
        velocity and the distance to the end kernel).
    runs : pandas.DataFrame
        One row per finished run: final and initial values, loss predictors, rate verdict, whether the statements
        about gradient descent apply (``gd_applies``, ``gd_reason``), test metrics, learning rate, steps, and the
        seconds spent training (``train_seconds``) and measuring (``measure_seconds``), and the run's CPU seconds
        (``cpu_seconds``, its process's CPU time: on a shared machine, what the run costs whatever the load).
    missing : pandas.DataFrame
        One row per run without a result: ``run_id``, the run's fields, ``status`` (``"failed"`` or
        ``"not run"``) and ``error``.
    executed : int
        Runs executed by this call (the others were read from earlier results).
    trajectories : pandas.DataFrame
        One row per run per step: ``step``, training ``loss`` of the step's batch, ``grad_norm_sq`` (``nan`` at the
        last step), ``rate_bound`` (``nan`` where the rate does not apply).
    coordinates : pandas.DataFrame
        The coordinate check: ``step`` (0–3), ``layer``, ``mean_abs``, ``mean_abs_change``.
    layers : pandas.DataFrame
        Per-layer alignment: ``stage`` (``"start"``/``"end"``), ``layer``, ``share``, ``residual``, ``rank``.
    """

    records: pd.DataFrame
    runs: pd.DataFrame
    missing: pd.DataFrame
    executed: int = 0
    trajectories: pd.DataFrame = field(default_factory=pd.DataFrame)
    coordinates: pd.DataFrame = field(default_factory=pd.DataFrame)
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)


def run_sweep(
    plan: Plan,
    data: StudyData,
    folder: str | os.PathLike[str] | None = None,
    *,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> SweepResult:
    """Run every run of ``plan`` not finished in ``folder`` and return the tables of all of them.

    Parameters
    ----------
    plan : Plan
        The runs.
    data : StudyData
        Training data, probe and test split.
    folder : path-like, optional
        Results go to ``folder/runs/`` (and are resumed from there); ``None``: kept in memory only.
    executor : str
        ``"local"`` or ``"ray"``.
    jobs : int, optional
        Local processes (1: in-process) or CPUs of a Ray instance started here; default the CPUs available to this
        process when the plan and data can be sent to other processes, else 1.
    address : str, optional
        Address of an existing Ray cluster (``executor="ray"``).
    resume : bool
        Skip runs whose result file has the same fingerprint.
    progress : bool
        Show a tqdm progress bar over runs.

    Returns
    -------
    SweepResult

    Raises
    ------
    DiagnosticsError
        An unknown executor, or ``jobs > 1`` local processes for a plan that cannot be pickled (a lambda factory).
    """
    if executor not in EXECUTORS:
        raise DiagnosticsError(f"executor must be one of {tuple(EXECUTORS)}, got {executor!r}")
    jobs = worker_count(plan, data, jobs) if executor == "local" else jobs or len(os.sched_getaffinity(0))
    store = RunStore(folder) if folder is not None else None
    key = data.key()
    fingerprints = {spec: plan.fingerprint(spec, key) for spec in plan.runs()}
    done = {spec: store.read(spec.run_id, fp) for spec, fp in fingerprints.items()} if store and resume else {}
    results = {spec: result for spec, result in done.items() if result is not None}
    widest: dict[tuple[str, str], int] = {}
    for spec in fingerprints:
        label = (spec.family, spec.parameterization)
        widest[label] = max(widest.get(label, 0), spec.width)
    todo = sorted((spec for spec in fingerprints if spec not in results),  # widest first: the pool ends on short runs
                  key=lambda spec: -spec.width / widest[spec.family, spec.parameterization])
    bar = tqdm(total=len(fingerprints), initial=len(results), desc="width study", unit="run", disable=not progress)
    if todo and results:
        bar.write(f"{len(results)} of {len(fingerprints)} runs already finished; running {len(todo)} ({executor} "
                  "executor)")
    with bar:
        for spec, outcome in EXECUTORS[executor](_outcome, plan, todo, data, jobs, address):
            if isinstance(outcome, BaseException):
                outcome = _failure(spec, outcome)
            outcome = {"run_id": spec.run_id, **outcome}
            if store is not None:
                _write_outcome(store, spec, outcome, fingerprints[spec])
            results[spec] = outcome
            bar.set_postfix_str(spec.run_id + ("" if outcome["status"] == "ok" else " FAILED"))
            bar.update()
    failures = {spec: store.read(f"{spec.run_id}.failed", fp) for spec, fp in fingerprints.items()
                if spec not in results} if store else {}
    outcomes = [results.get(spec) or failures.get(spec) or {"status": "not run", "summary": spec.to_dict()}
                for spec in fingerprints]
    result = tables(list(fingerprints), outcomes)
    result.executed = len(todo)
    return result


def worker_count(plan: Plan, data: StudyData, jobs: int | None) -> int:
    """Local processes for a sweep: ``jobs``, or the CPUs available when the plan and data can be pickled, else 1.

    Raises
    ------
    DiagnosticsError
        ``jobs > 1`` for a plan or data that cannot be sent to another process.
    """
    try:
        pickle.dumps((plan, data))
        picklable, why = True, ""
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: this process only
        picklable, why = False, f"{type(exc).__name__}: {exc}"
    if jobs is None:
        return len(os.sched_getaffinity(0)) if picklable else 1
    if jobs > 1 and not picklable:
        raise DiagnosticsError(f"jobs={jobs} runs each run in its own process, but the study cannot be sent there "
                               f"({why}); define the factories at module level, or pass jobs=1 or executor='ray'")
    return jobs


def tables(specs: Iterable[RunSpec], outcomes: Iterable[dict[str, Any]]) -> SweepResult:
    """Collect the outcomes of runs (a finished result, a failure or ``{"status": "not run"}``) into tables."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("records", "coordinates", "layers")}
    runs, missing, trajectories = [], [], []
    for spec, result in zip(specs, outcomes, strict=True):
        keys = {"run_id": spec.run_id, **spec.to_dict()}
        if result.get("status", "ok") == "ok" and "records" in result:
            runs.append(result["summary"])
            for name, table in rows.items():
                table += [{**keys, **row} for row in result[name]]
            trajectory = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in result["trajectory"].items()})
            trajectories.append(trajectory.rename_axis("step").reset_index().assign(**keys))
        else:
            status = result.get("status", "not run")
            missing.append({**keys, "status": status, "error": result.get("error", "")})
    trajectory = pd.concat(trajectories, ignore_index=True) if trajectories else pd.DataFrame()
    return SweepResult(pd.DataFrame(rows["records"]), pd.DataFrame(runs),
                       pd.DataFrame(missing, columns=[*_KEYS, "status", "error"]), trajectories=trajectory,
                       coordinates=pd.DataFrame(rows["coordinates"]), layers=pd.DataFrame(rows["layers"]))


def _write_outcome(store: RunStore, spec: RunSpec, outcome: dict[str, Any], fingerprint: str) -> None:
    """``<run_id>.json`` for a finished run (its last failure forgotten), ``<run_id>.failed.json`` otherwise."""
    if outcome["status"] == "ok":
        store.write(spec.run_id, fingerprint, outcome)
        store.remove(f"{spec.run_id}.failed")
    else:
        store.write(f"{spec.run_id}.failed", fingerprint, outcome)
