"""Width sweeps: train model families over widths, parameterisations and seeds (theory/width.md).

One *run* is a ``(family, parameterization, width, seed)``: a model built by
:func:`~diagnostics.models.build_model`, trained by full-batch gradient descent on the squared loss
``L = (1/2n)‖f_X − Y‖²`` (one-hot ``Y`` for classes), with an
:class:`~diagnostics.tracking.AlignmentTracker` measuring D1, (I2), (I3) and the kernel movement on the
*whole training set* every ``every`` steps. The probe is the training set, so the tracked loss is
the training loss and the counting threshold of S1 is ``d = n·m`` with ``n = n_train``.

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
import time
import traceback
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import DataSplit
from ..models import learning_rate_multiplier
from ..store import RunStore
from ..targets import Targets
from ..tracking import AlignmentTracker
from .config import RunSpec, SweepConfig, build_run_model, load_data
from .executors import EXECUTORS

__all__ = ["TIMING_COLUMNS", "SweepResult", "load_results", "run_one", "run_sweep"]

#: Tracker columns that measure time, not the model: excluded when comparing tables.
TIMING_COLUMNS: tuple[str, ...] = ("measure_seconds", "wall_time", "seconds")


# ---------------------------------------------------------------------------------------------
# One run


def run_one(config: SweepConfig, spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    """Train one model and track it; return ``{"summary": {...}, "records": [...]}``.

    Uses one ``torch`` thread (restored afterwards), so the numbers do not depend on the executor.
    Raises if the training diverges (non-finite loss) or a measurement fails.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(config, spec, data)
    finally:
        torch.set_num_threads(threads)


def _train(config: SweepConfig, spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    start = time.perf_counter()
    model = build_run_model(spec.family, spec.width, data, spec.parameterization, spec.seed, config.mlp_depth)
    X, T = data.X_train, data.y_train
    n = X.shape[0]
    Y = Targets.build(T, n, data.n_outputs, "mse").Y.to(X.dtype)
    lr = config.lr[spec.parameterization] * learning_rate_multiplier(spec.parameterization, spec.width)
    tracker = AlignmentTracker(model, (X, T), every=config.every, loss="mse", probe_size=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(config.steps + 1):
        tracker.step(step)
        if step == config.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * ((model(X) - Y) ** 2).sum() / n
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()}) with lr {lr:g}")
        loss.backward()
        optimizer.step()
    history = tracker.history
    summary = {
        **spec.to_dict(),
        "run_id": spec.run_id,
        "lr": lr,
        "n_params": int(history["n_params"].iloc[-1]),
        "n_outputs": int(history["n_outputs"].iloc[-1]),
        **_final_and_initial(history),
        **_test_metrics(model, data),
        "seconds": time.perf_counter() - start,
    }
    summary["underparameterised"] = summary["n_params"] < summary["n_outputs"]
    return {"summary": summary, "records": history.to_dict("records")}


_FINAL = (
    "loss", "loss_lower_bound", "residual", "aligned", "rank", "bound_ratio", "certificate", "grad_norm",
    "kernel_movement_init", "param_movement", "effective_rank", "decomposition_gap", "lambda_max",
)


def _final_and_initial(history: pd.DataFrame) -> dict[str, Any]:
    first, last = history.iloc[0], history.iloc[-1]
    out = {f"final_{k}": _plain(last[k]) for k in _FINAL}
    out.update({f"init_{k}": _plain(first[k]) for k in ("loss", "residual", "rank", "lambda_max")})
    return out


def _test_metrics(model: torch.nn.Module, data: DataSplit) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = {}
        for split, X, y in (("train", data.X_train, data.y_train), ("test", data.X_test, data.y_test)):
            f = model(X)
            if data.task == "classification":
                out[f"{split}_accuracy"] = float((f.argmax(1) == y).double().mean())
                y = torch.nn.functional.one_hot(y, data.n_outputs).to(f.dtype)
            out[f"{split}_loss"] = float(0.5 * ((f - y) ** 2).sum() / X.shape[0])
    model.train(was_training)
    return out


def _plain(value: Any) -> Any:
    """Numpy scalars to Python (JSON) scalars."""
    return value.item() if hasattr(value, "item") else value


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

    Attributes
    ----------
    records : pandas.DataFrame
        One row per run per tracker record (the run's fields, then the tracker's columns).
    runs : pandas.DataFrame
        One row per finished run: final and initial values, test metrics, learning rate, time.
    missing : pandas.DataFrame
        One row per run without a result: ``run_id``, the run's fields, ``status`` (``"failed"`` or
        ``"not run"``) and ``error``.
    executed : int
        Runs executed by this call (the others were read from earlier results).
    """

    records: pd.DataFrame
    runs: pd.DataFrame
    missing: pd.DataFrame
    executed: int = 0


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
    records, runs, missing = load_results(config, folder)
    return SweepResult(records, runs, missing, executed=len(todo))


def load_results(config: SweepConfig, folder: str | os.PathLike[str]) -> tuple[pd.DataFrame, ...]:
    """Read the result files of a resolved config: ``(records, runs, missing)`` (see :class:`SweepResult`)."""
    store = RunStore(folder)
    records, runs, missing = [], [], []
    for spec in config.runs():
        fingerprint = config.fingerprint(spec)
        result = store.read(spec.run_id, fingerprint)
        if result is not None:
            runs.append(result["summary"])
            records += [{**spec.to_dict(), "run_id": spec.run_id, **row} for row in result["records"]]
            continue
        failure = store.read(f"{spec.run_id}.failed", fingerprint)
        status, error = ("failed", failure["error"]) if failure is not None else ("not run", "")
        missing.append({"run_id": spec.run_id, **spec.to_dict(), "status": status, "error": error})
    columns = ["run_id", "family", "parameterization", "width", "seed", "status", "error"]
    return pd.DataFrame(records), pd.DataFrame(runs), pd.DataFrame(missing, columns=columns)


def _write_outcome(store: RunStore, spec: RunSpec, outcome: dict[str, Any], fingerprint: str) -> None:
    """``<run_id>.json`` for a finished run (its last failure forgotten), ``<run_id>.failed.json`` otherwise."""
    if outcome["status"] == "ok":
        store.write(spec.run_id, fingerprint, {"run_id": spec.run_id, **outcome})
        store.remove(f"{spec.run_id}.failed")
    else:
        store.write(f"{spec.run_id}.failed", fingerprint, {"run_id": spec.run_id, **outcome})
