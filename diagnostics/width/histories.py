"""A width study from runs trained elsewhere: the histories of their alignment trackers, tagged with width and seed.

An :class:`~diagnostics.tracking.AlignmentTracker` (or an ``AlignmentCallback`` of Lightning or Hugging Face) writes
its records to a JSON-lines history whose header holds ``meta["tags"]`` (``tags=`` of the tracker or callback) and,
for the callbacks, ``meta["optimizer"]`` (the optimiser's class name and hyper-parameters). :func:`from_runs` reads
every history under a folder whose tags name a ``width`` and a ``seed`` (and, optionally, a ``family`` and a
``parameterization``; ``expect`` for the S4 expectation), and builds the tables of a
:class:`~diagnostics.width.study.Study` from their full records, so the report of a sweep the user already ran
needs no retraining::

    AlignmentCallback(probe, tags={"width": 256, "seed": 0})   # in each run of the sweep
    python -m diagnostics width-report --from-runs lightning_logs/ -o reports/my-sweep

What a history cannot give: the loss and gradient of every step (its records are ``every`` steps apart), the
spectra of ``K_0`` and ``K_T``, the coordinate check, per-layer alignment, the distance to the end kernel and test
metrics. A statement about gradient descent is *not applicable* to such a run when its recipe fails its premises
(``meta["optimizer"]``, the loss; :func:`~diagnostics.width.recipe.recipe_premises`), and *not measured* otherwise.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from theory.verdict import not_applicable

from ..errors import DiagnosticsError
from ..tracking.history import read_history
from .kernels import kernel_path
from .plan import RunSpec
from .recipe import GD_STATEMENTS, applies, premise_reasons, recipe_premises
from .report import environment
from .study import Study
from .sweep import SweepResult

__all__ = ["from_runs", "read_runs"]

_FINAL = ("loss", "loss_lower_bound", "residual", "aligned", "d1_status", "rank", "bound_ratio", "certificate",
          "nu_norm", "grad_norm", "kernel_movement_init", "param_movement", "effective_rank", "decomposition_gap",
          "lambda_max", "kernel_target_alignment")
_INITIAL = ("loss", "residual", "rank", "lambda_max", "certificate", "nu_norm", "kernel_target_alignment")
#: Why a history cannot give a statement about gradient descent whose premises its recipe meets.
_NOT_MEASURED = {
    "horizon": "a history keeps no spectrum of K_0",
    "linearised": "a history keeps no spectrum of K_0 nor the residual at step 0",
    "final_horizon": "a history keeps no spectrum of K_T",
    "rate": "a history records every few steps, not every step's loss and gradient",
}


def from_runs(folder: str | os.PathLike[str], *, family: str = "model", parameterization: str = "standard") -> Study:
    """Build a width study from the tagged histories under ``folder`` (searched recursively, ``*.jsonl``).

    Parameters
    ----------
    folder
        Where the histories are (e.g. a Lightning ``default_root_dir``).
    family, parameterization
        Names for runs whose tags do not give their own.

    Returns
    -------
    Study
        Its ``history`` holds the full records of every run, ``runs`` one row per run; :meth:`Study.report` writes
        the report.

    Raises
    ------
    DiagnosticsError
        No history under ``folder``, a history whose tags lack ``width`` or ``seed``, or two histories of one run.
    """
    start = time.perf_counter()
    histories = read_runs(folder, family=family, parameterization=parameterization)
    specs = [h["spec"] for h in histories]
    records, runs, trajectories = [], [], []
    for h in histories:
        keys = {"run_id": h["spec"].run_id, **h["spec"].to_dict()}
        table = _records(h["records"])
        records.append(table.assign(**keys))
        runs.append(_summary(h, table))
        every = pd.DataFrame(h["records"])
        trajectories.append(pd.DataFrame({
            "step": every["step"], "loss": every["loss"], "grad_norm_sq": every["grad_norm"] ** 2,
            "rate_bound": math.nan}).assign(**keys))
    sweep = SweepResult(pd.concat(records, ignore_index=True), pd.DataFrame(runs),
                        pd.DataFrame(columns=["run_id", "family", "parameterization", "width", "seed", "status",
                                              "error"]),
                        trajectories=pd.concat(trajectories, ignore_index=True))
    names = ", ".join(sorted({s.family for s in specs}))
    config = {"from_runs": str(folder), "histories": [
        {"path": str(h["path"]), "tags": h["meta"].get("tags", {}), "optimizer": h["meta"].get("optimizer"),
         "loss": h["meta"].get("loss"), "probe_size": h["meta"].get("probe_size"), "every": h["meta"].get("every"),
         "full_every": h["meta"].get("full_every")} for h in histories]}
    return Study(f"Width study from histories: {names}", _setup(histories, folder), config, sweep,
                 environment(executor="none (read from histories)"), time.perf_counter() - start)


def read_runs(folder: str | os.PathLike[str], *, family: str = "model",
              parameterization: str = "standard") -> list[dict[str, Any]]:
    """Read the tagged histories under ``folder``: ``path``, ``meta``, ``records`` and the run's ``spec`` each.

    Files ending in ``.jsonl`` without a history header (other JSON-lines logs) are skipped.

    Raises
    ------
    DiagnosticsError
        As :func:`from_runs`.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DiagnosticsError(f"--from-runs: {root} is not a folder")
    found, seen = [], {}
    for path in sorted(root.rglob("*.jsonl")):
        try:
            meta, records = read_history(path)
        except DiagnosticsError:
            continue
        tags = meta.get("tags") or {}
        missing = [k for k in ("width", "seed") if k not in tags]
        if missing:
            raise DiagnosticsError(
                f"{path}: the history's tags {tags} lack {', '.join(missing)}; give the tracker or callback "
                "tags={'width': ..., 'seed': ...}"
            )
        spec = RunSpec(str(tags.get("family", family)), str(tags.get("parameterization", parameterization)),
                       int(tags["width"]), int(tags["seed"]))
        if spec in seen:
            raise DiagnosticsError(f"{seen[spec]} and {path} are both the run {spec.run_id}: one history per run")
        full = [r for r in records if r.get("tier", "full") == "full"]
        if not full:
            raise DiagnosticsError(f"{path} holds no full record yet: nothing to report for {spec.run_id}")
        seen[spec] = path
        found.append({"path": path, "meta": meta, "records": records, "full": full, "spec": spec})
    if not found:
        raise DiagnosticsError(f"no history (*.jsonl with a tracker's header) under {root}")
    return sorted(found, key=lambda h: h["spec"])


def _records(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Return the full records of a history with the kernel velocity (the distance to the end kernel is unknown)."""
    table = pd.DataFrame([r for r in records if r.get("tier", "full") == "full"])
    if "kernel_target_alignment" not in table:
        table["kernel_target_alignment"] = math.nan
    return table.merge(kernel_path(table), on="step")


def _summary(history: dict[str, Any], table: pd.DataFrame) -> dict[str, Any]:
    """Return the row of the runs table of a history: first and last full records, why GD statements do not apply."""
    meta, spec = history["meta"], history["spec"]
    optimizer = meta.get("optimizer")
    tags = meta.get("tags") or {}
    first, last = table.iloc[0], table.iloc[-1]
    premises = {s: recipe_premises(s, optimizer, loss=meta.get("loss", "mse"), full_batch=None) for s in GD_STATEMENTS}
    statements: dict[str, Any] = {}
    for statement, found in premises.items():  # not applicable by the recipe, else not measured by a history
        statements[f"{statement}_applies"] = False if not applies(found) else None
        statements[f"{statement}_reason"] = premise_reasons(found) if not applies(found) else _NOT_MEASURED[statement]
    rate = None if applies(premises["rate"]) else not_applicable(
        "I3.gd", "gradient-descent rate", float(last["loss"]), math.nan, {}, "L_k", "L_0/(1+4L_0τ_k/B̄²)",
        premises["rate"]).status
    summary = {
        **spec.to_dict(), "run_id": spec.run_id, "lr": (optimizer or {}).get("lr"), "steps": int(last["step"]),
        "batch_size": tags.get("batch_size"), "loss_name": meta.get("loss"), "measure_loss": meta.get("loss"),
        "optimizer": (optimizer or {}).get("name", "unknown"), "n_params": int(last["n_params"]),
        "n_outputs": int(last["n_outputs"]), "n_probe": int(last["n_samples"]), "n_train": meta.get("data_size"),
        "s4_expect": tags.get("expect"),
        **{f"final_{k}": _plain(last.get(k)) for k in _FINAL},
        **{f"init_{k}": _plain(first.get(k)) for k in _INITIAL},
        "init_horizon_residual": None, "init_horizon_loss_floor": None, "certificate_bar": float(
            table["certificate"].max()),
        **statements, "init_step_ratio": None, "final_step_ratio": None, "init_unstable_directions": None,
        "init_unstable_share": None, "final_unstable_directions": None, "final_unstable_share": None,
        "linearised_loss": None,
        "final_horizon_floor": None, "rate_status": rate, "rate_bound": None, "rate_rising_steps": None, "rate_c": None,
        "rate_c_bound": None, "rate_largest_rise": None,
        "train_seconds": math.nan,
        "measure_seconds": float(pd.DataFrame(history["records"])["measure_seconds"].sum()),
        "seconds": math.nan,
    }
    summary["underparameterised"] = summary["n_params"] < summary["n_outputs"]
    return summary


def _setup(histories: list[dict[str, Any]], folder: str | os.PathLike[str]) -> list[str]:
    """Sentences of the *Setup* section: where the histories are, how they were recorded, what they cannot show."""
    metas = [h["meta"] for h in histories]
    optimizers = sorted({_optimizer_text(m.get("optimizer")) for m in metas})
    probes = sorted({str(m.get("probe_size")) for m in metas})
    cadence = sorted({f"every {m.get('every')} steps" + (f", full every {m['full_every']} records"
                                                          if m.get("full_every") else "") for m in metas})
    widths = sorted({h["spec"].width for h in histories})
    seeds = sorted({h["spec"].seed for h in histories})
    return [
        f"Read {len(histories)} histories under `{folder}` (runs trained elsewhere, tagged with width and seed): "
        f"widths {', '.join(map(str, widths))}; seeds {', '.join(map(str, seeds))}.",
        f"Training as the histories record it: {'; '.join(optimizers)}; loss "
        f"{', '.join(sorted({str(m.get('loss')) for m in metas}))}.",
        f"Measurements: `AlignmentTracker` records {'; '.join(cadence)}, on a probe of {', '.join(probes)} samples; "
        "the report uses the full records (the cheap ones have no spectrum).",
        "What histories cannot show, drawn as notes in the figures: the loss and gradient of every step (the rate "
        "of gradient descent), the coordinate check, per-layer alignment, the distance to the end kernel, test "
        "metrics.",
    ]


def _optimizer_text(optimizer: dict[str, Any] | None) -> str:
    if not optimizer:
        return "optimiser not recorded"
    options = ", ".join(f"{k}={v}" for k, v in optimizer.items() if k != "name" and k in (
        "lr", "momentum", "weight_decay", "betas", "eps", "nesterov"))
    return f"{optimizer.get('name')} ({options})"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
