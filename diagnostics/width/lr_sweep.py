"""``width-report --lr-sweep``: the training loss against the base learning rate ``lr₀`` across widths.

Every ``(family, parameterization, width, seed)`` of the config is trained (no measurement, so a trial
costs only its gradient steps) once per ``lr₀`` of :attr:`~diagnostics.width.config.SweepConfig.lr_grid`,
for the config's step budget, and the largest eigenvalue of its initial Gram ``K_0`` is measured once. Drawn
against ``lr₀`` with one line per width, this is the hyper-parameter transfer plot of maximal-update
parameterisation (Yang et al. 2021): under a parameterisation whose training dynamics have a width limit, the
best ``lr₀`` does not move with the width.

:func:`choose_settings` states the rule the defaults of :mod:`diagnostics.width.config` were chosen by: the
largest ``lr₀`` of the grid that keeps the dynamics linearised at ``K_0`` convergent at every width with
``d ≥ n·m`` (``ηλ_max(K_0)/n < 2``, so the lazy prediction exists and no wide run starts in the catapult regime),
and that at every width lets the loss rise by more than round-off in no step of the search and never diverges;
and the first step at which the
*reference width* (the smallest width of a family with ``d ≥ n·m``) reaches
:data:`~diagnostics.width.config.LOSS_LEVEL` with that ``lr₀`` (the largest over seeds).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from theory.recipe import STABLE_STEP

from ..data import DataSplit
from ..engine.jacobian import ntk_gram
from ..models import count_parameters, learning_rate_multiplier
from .config import LOSS_LEVEL, RunSpec, SweepConfig, build_run_model, load_data
from .executors import EXECUTORS
from .recipe import OptimizerFactory, Recipe
from .run import RATE_RTOL
from .training import Trainer

__all__ = ["choose_settings", "lr_sweep"]


def _at_every_rate(config: dict[str, Any], spec: RunSpec, data: DataSplit) -> dict[str, Any]:
    """Train one run at every ``lr₀`` of the grid and measure ``λ_max(K_0)``; never raises (errors are rows)."""
    cfg = SweepConfig.from_dict(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = data.X_train.shape[0]
        steps = cfg.steps_for(spec.family, spec.parameterization)
        multiplier = learning_rate_multiplier(spec.parameterization, spec.width)
        rows = []
        for lr0 in cfg.lr_grid:
            model = build_run_model(spec.family, spec.width, data, spec.parameterization, spec.seed, cfg.mlp_depth)
            if not rows:  # the same initialisation for every lr₀: one kernel
                K = ntk_gram(model, data.X_train, dtype=torch.float32)
                lam = float(torch.linalg.eigvalsh(K.double())[-1])
            recipe = Recipe(OptimizerFactory("sgd", lr0, scaling=spec.parameterization), steps)
            trainer = Trainer(model, recipe, itertools.repeat((data.X_train, data.y_train)), spec.width)
            losses, diverged = [], False
            try:
                losses = [trainer.step()[0] for _ in range(steps)] + [trainer.loss()]
            except FloatingPointError:
                diverged = True
            rows.append({**spec.to_dict(), "lr0": lr0, "run_id": f"{spec.run_id}_lr{lr0:g}", "lr": lr0 * multiplier,
                         "steps": steps, "n_params": count_parameters(model), "n_outputs": n * data.n_outputs,
                         "lambda_max": lam, "edge_lr0": STABLE_STEP * n / (lam * multiplier),
                         **_losses(losses, diverged)})
        return {"status": "ok", "rows": rows}
    except Exception as exc:  # noqa: BLE001 - a failed run is data for the table
        return {"status": "failed", "rows": [{**spec.to_dict(), "run_id": spec.run_id,
                                              "error": f"{type(exc).__name__}: {exc}"}]}
    finally:
        torch.set_num_threads(threads)


def _losses(losses: list[float], diverged: bool) -> dict[str, Any]:
    loss = np.asarray(losses, dtype=float)
    rises = (loss[1:] - loss[:-1]) / np.maximum(loss[:-1], 1e-300) if loss.size > 1 else np.zeros(0)
    reached = np.flatnonzero(loss <= LOSS_LEVEL)
    return {
        "initial_loss": float(loss[0]) if loss.size else math.nan,
        "final_loss": math.inf if diverged else float(loss[-1]),
        "diverged": diverged or bool(loss[-1] > loss[0]),
        "largest_rise": float(rises.max()) if rises.size else 0.0,
        "steps_to_level": int(reached[0]) if reached.size else None,
    }


def lr_sweep(config: SweepConfig, *, data: DataSplit | None = None, jobs: int = 1,
             progress: bool = True) -> pd.DataFrame:
    """Train every run of ``config`` at every ``lr₀`` of its grid; return one row per run and ``lr₀``.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``width``, ``seed``, ``lr0``, ``run_id``, ``lr``, ``steps``,
        ``n_params``, ``n_outputs``, ``lambda_max`` (of the initial Gram ``K_0``), ``edge_lr0`` (the ``lr₀`` at
        which ``ηλ_max(K_0)/n = 2``: above it the dynamics linearised at ``K_0`` diverge), ``initial_loss``,
        ``final_loss`` (``inf`` when the loss overflowed), ``diverged`` (overflowed, or ended above where it
        started), ``largest_rise`` (largest relative increase of the loss in one step), ``steps_to_level``
        (first step with loss ≤ ``LOSS_LEVEL``, or ``None``), ``error`` (runs that failed).
    """
    data = data if data is not None else load_data(config)
    config = config.resolve(data)
    specs = config.runs()
    rows = []
    with tqdm(total=len(specs), desc="learning-rate sweep", unit="run", disable=not progress) as bar:
        for spec, outcome in EXECUTORS["local"](_at_every_rate, config.to_dict(), specs, data, jobs, None):
            if isinstance(outcome, BaseException):
                outcome = {"rows": [{**spec.to_dict(), "run_id": spec.run_id,
                                     "error": f"{type(outcome).__name__}: {outcome}"}]}
            rows += outcome["rows"]
            bar.update()
    table = pd.DataFrame(rows)
    return table.sort_values(["family", "parameterization", "width", "seed", "lr0"]).reset_index(drop=True)


def choose_settings(table: pd.DataFrame) -> pd.DataFrame:
    """Pick ``lr₀`` and the step budget by the rule of the module docstring, per family and parameterisation.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``reference_width``, ``lr0`` (``nan`` when no ``lr₀`` qualifies),
        ``final_loss`` (mean over seeds at the reference width), ``steps_to_level`` (largest over seeds, or
        ``None`` if a seed does not reach the level), ``stable_lr0`` (the qualifying ``lr₀``, as text).
    """
    rows = []
    ok = table[table.get("error", pd.Series(index=table.index, dtype=object)).isna()]
    for (family, param), group in ok.groupby(["family", "parameterization"]):
        over = group[group["n_params"] >= group["n_outputs"]]
        reference = int(over["width"].min()) if not over.empty else int(group["width"].max())
        at_ref = group[group["width"] == reference]
        by_rate = group.groupby("lr0")
        edge = (over if not over.empty else group)["edge_lr0"].min()
        calm = ~by_rate["diverged"].any() & (by_rate["largest_rise"].max() <= RATE_RTOL)
        qualifies = calm & (by_rate["lr0"].first() < edge)
        stable = sorted(lr0 for lr0, ok in qualifies.items() if ok)
        row = {"family": family, "parameterization": param, "reference_width": reference, "lr0": math.nan,
               "final_loss": math.nan, "steps_to_level": None, "stable_lr0": ", ".join(f"{x:g}" for x in stable)}
        if stable:
            chosen = at_ref[at_ref["lr0"] == stable[-1]]
            reached = chosen["steps_to_level"]
            row.update(lr0=stable[-1], final_loss=float(chosen["final_loss"].mean()),
                       steps_to_level=None if reached.isna().any() else int(reached.max()))
        rows.append(row)
    return pd.DataFrame(rows)
