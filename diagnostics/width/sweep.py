"""Width sweeps: train model families over widths, parameterisations and seeds (``theory/width.md``).

What one run trains and measures is in :mod:`diagnostics.width.run`; this module runs them all and
collects their tables.

Execution. Every run is independent and deterministic (seeded initialisation, full-batch steps,
``torch`` limited to one thread inside the run), so the ``local`` executor (in-process, or a pool
of ``jobs`` processes) and the ``ray`` executor (one Ray task per run) produce identical tables.
Each finished run is written atomically to ``<folder>/runs/<run_id>.json`` (temporary file, then
:func:`os.replace`) by the driver as soon as it arrives, so an interrupted sweep loses only the runs
in flight and a rerun skips the finished ones. A run that raises is written to
``<run_id>.failed.json`` with its error, listed as missing and retried on the next rerun.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..data import DataSplit
from ..store import RunStore
from .config import RunSpec, SweepConfig, load_data
from .executors import EXECUTORS
from .run import run_one

__all__ = ["TIMING_COLUMNS", "SweepResult", "load_results", "run_one", "run_sweep"]

#: Tracker columns that measure time, not the model: excluded when comparing tables.
TIMING_COLUMNS: tuple[str, ...] = ("measure_seconds", "wall_time", "seconds")


# ---------------------------------------------------------------------------------------------
# Executors: each yields one outcome per run, in completion order


def _outcome(config: dict[str, Any], spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    """Run ``spec`` and wrap the result or the error; never raises (one failure loses one run)."""
    try:
        result = run_one(SweepConfig.from_dict(config), spec, data)
        return {"status": "ok", **result}
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
        One row per finished run: final and initial values, loss predictors, rate verdict, test metrics,
        learning rate, steps, time.
    missing : pandas.DataFrame
        One row per run without a result: ``run_id``, the run's fields, ``status`` (``"failed"`` or
        ``"not run"``) and ``error``.
    executed : int
        Runs executed by this call (the others were read from earlier results).
    trajectories : pandas.DataFrame
        One row per run per step: ``step``, training ``loss``, ``grad_norm_sq`` (``nan`` at the last step),
        ``rate_bound``.
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
    config: SweepConfig,
    folder: str | os.PathLike[str],
    *,
    data: DataSplit | None = None,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> SweepResult:
    """Run every run of ``config`` not finished in ``folder`` and return the tables of all of them.

    Parameters
    ----------
    config : SweepConfig
        Widths left out are resolved with :func:`default_widths`.
    folder : path-like
        Output folder; results go to ``folder/runs/``.
    data : DataSplit, optional
        The loaded data (default: :func:`load_data`).
    executor : str
        ``"local"`` or ``"ray"``.
    jobs : int, optional
        Local processes (1: in-process) or CPUs of a Ray instance started here; default the CPUs
        available to this process.
    address : str, optional
        Address of an existing Ray cluster (``executor="ray"``).
    resume : bool
        Skip runs whose result file has the same :meth:`SweepConfig.fingerprint`.
    progress : bool
        Show a tqdm progress bar over runs.

    Returns
    -------
    SweepResult
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    data = data if data is not None else load_data(config)
    config = config.resolve(data)
    jobs = jobs or len(os.sched_getaffinity(0))
    store, specs = RunStore(folder), config.runs()
    todo = [s for s in specs if not (resume and store.read(s.run_id, config.fingerprint(s)))]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="width sweep", unit="run",
               disable=not progress)
    if todo:
        bar.write(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; running {len(todo)} "
                  f"({executor} executor)")
    with bar:
        for spec, outcome in EXECUTORS[executor](_outcome, config.to_dict(), todo, data, jobs, address):
            if isinstance(outcome, BaseException):
                outcome = _failure(spec, outcome)
            _write_outcome(store, spec, outcome, config.fingerprint(spec))
            bar.set_postfix_str(spec.run_id + ("" if outcome["status"] == "ok" else " FAILED"))
            bar.update()
    result = load_results(config, folder)
    result.executed = len(todo)
    return result


def load_results(config: SweepConfig, folder: str | os.PathLike[str]) -> SweepResult:
    """Read the result files of a resolved config into a :class:`SweepResult` (``executed = 0``)."""
    store = RunStore(folder)
    tables: dict[str, list[dict[str, Any]]] = {k: [] for k in ("records", "coordinates", "layers")}
    runs, missing, trajectories = [], [], []
    for spec in config.runs():
        fingerprint = config.fingerprint(spec)
        result = store.read(spec.run_id, fingerprint)
        if result is not None:
            runs.append(result["summary"])
            keys = {"run_id": spec.run_id, **spec.to_dict()}
            for name, rows in tables.items():
                rows += [{**keys, **row} for row in result[name]]
            trajectory = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in result["trajectory"].items()})
            trajectories.append(trajectory.rename_axis("step").reset_index().assign(**keys))
            continue
        failure = store.read(f"{spec.run_id}.failed", fingerprint)
        status, error = ("failed", failure["error"]) if failure is not None else ("not run", "")
        missing.append({"run_id": spec.run_id, **spec.to_dict(), "status": status, "error": error})
    columns = ["run_id", "family", "parameterization", "width", "seed", "status", "error"]
    trajectory = pd.concat(trajectories, ignore_index=True) if trajectories else pd.DataFrame()
    return SweepResult(pd.DataFrame(tables["records"]), pd.DataFrame(runs), pd.DataFrame(missing, columns=columns),
                       trajectories=trajectory, coordinates=pd.DataFrame(tables["coordinates"]),
                       layers=pd.DataFrame(tables["layers"]))


def _write_outcome(store: RunStore, spec: RunSpec, outcome: dict[str, Any], fingerprint: str) -> None:
    """``<run_id>.json`` for a finished run (its last failure forgotten), ``<run_id>.failed.json`` otherwise."""
    if outcome["status"] == "ok":
        store.write(spec.run_id, fingerprint, {"run_id": spec.run_id, **outcome})
        store.remove(f"{spec.run_id}.failed")
    else:
        store.write(f"{spec.run_id}.failed", fingerprint, {"run_id": spec.run_id, **outcome})
