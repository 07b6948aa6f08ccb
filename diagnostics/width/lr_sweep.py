"""``width-report --lr-sweep``: the training loss against the base learning rate ``lr₀`` across widths.

Every ``(family, parameterization, width, seed)`` of the config is trained (no measurement, so a trial
costs only its gradient steps) once per ``lr₀`` of :attr:`~diagnostics.width.config.SweepConfig.lr_grid`,
for the config's step budget. Drawn against ``lr₀`` with one line per width, this is the hyper-parameter
transfer plot of maximal-update parameterisation (Yang et al. 2021): under a parameterisation whose
training dynamics have a width limit, the best ``lr₀`` does not move with the width.

:func:`choose_settings` states the rule the defaults of :mod:`diagnostics.width.config` were chosen by: the
largest ``lr₀`` whose loss rises by more than round-off in no step at any width and which diverges at no width
(no run in the catapult or edge-of-stability regime during the search); and the first step at which the
*reference width* (the smallest width of a family with ``d ≥ n·m``) reaches
:data:`~diagnostics.width.config.LOSS_LEVEL` with that ``lr₀``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data import DataSplit
from ..models import learning_rate_multiplier
from ..targets import Targets
from .config import LOSS_LEVEL, SweepConfig, build_run_model, load_data
from .executors import EXECUTORS
from .run import RATE_RTOL
from .training import gradient_descent

__all__ = ["LrTrial", "choose_settings", "lr_sweep"]


@dataclass(frozen=True, order=True)
class LrTrial:
    """One training of the learning-rate sweep."""

    family: str
    parameterization: str
    width: int
    seed: int
    lr0: float

    @property
    def run_id(self) -> str:
        """Identifier, e.g. ``"mlp_ntk_w32_s0_lr0.5"``."""
        return f"{self.family}_{self.parameterization}_w{self.width}_s{self.seed}_lr{self.lr0:g}"


def _trial(config: dict[str, Any], trial: LrTrial, data: DataSplit) -> dict[str, Any]:
    """Train one trial; never raises (a diverged run is a result, any other error is reported)."""
    cfg = SweepConfig.from_dict(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_run_model(trial.family, trial.width, data, trial.parameterization, trial.seed, cfg.mlp_depth)
        n = data.X_train.shape[0]
        Y = Targets.build(data.y_train, n, data.n_outputs, "mse").Y.to(data.X_train.dtype)
        lr = trial.lr0 * learning_rate_multiplier(trial.parameterization, trial.width)
        steps = cfg.steps_for(trial.family, trial.parameterization)
        losses, diverged = [], False
        try:
            losses = [loss for _, loss, _ in gradient_descent(model, data.X_train, Y, lr, steps)]
        except FloatingPointError:
            diverged = True
        return {"status": "ok", "summary": _summary(trial, model, losses, diverged, lr, steps, n * data.n_outputs)}
    except Exception as exc:  # noqa: BLE001 - a failed trial is data for the table
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        torch.set_num_threads(threads)


def _summary(trial: LrTrial, model, losses: list[float], diverged: bool, lr: float, steps: int,
             n_outputs: int) -> dict[str, Any]:
    loss = np.asarray(losses, dtype=float)
    rises = (loss[1:] - loss[:-1]) / np.maximum(loss[:-1], 1e-300) if loss.size > 1 else np.zeros(0)
    reached = np.flatnonzero(loss <= LOSS_LEVEL)
    return {
        **asdict(trial), "run_id": trial.run_id, "lr": lr, "steps": steps,
        "n_params": sum(p.numel() for p in model.parameters()), "n_outputs": n_outputs,
        "initial_loss": float(loss[0]) if loss.size else math.nan,
        "final_loss": math.inf if diverged else float(loss[-1]),
        "diverged": diverged or bool(loss[-1] > loss[0]),
        "largest_rise": float(rises.max()) if rises.size else 0.0,
        "steps_to_level": int(reached[0]) if reached.size else None,
    }


def lr_sweep(config: SweepConfig, *, data: DataSplit | None = None, jobs: int = 1,
             progress: bool = True) -> pd.DataFrame:
    """Train every run of ``config`` at every ``lr₀`` of its grid; return one row per trial.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``width``, ``seed``, ``lr0``, ``run_id``, ``lr``, ``steps``,
        ``n_params``, ``n_outputs``, ``initial_loss``, ``final_loss`` (``inf`` when the loss overflowed),
        ``diverged`` (overflowed, or ended above where it started), ``largest_rise`` (largest relative
        increase of the loss in one step), ``steps_to_level`` (first step with loss ≤ ``LOSS_LEVEL``, or
        ``None``), ``error`` (failed trials).
    """
    data = data if data is not None else load_data(config)
    config = config.resolve(data)
    trials = [LrTrial(s.family, s.parameterization, s.width, s.seed, lr0) for s in config.runs()
              for lr0 in config.lr_grid]
    rows = []
    with tqdm(total=len(trials), desc="learning-rate sweep", unit="run", disable=not progress) as bar:
        for trial, outcome in EXECUTORS["local"](_trial, config.to_dict(), trials, data, jobs, None):
            if isinstance(outcome, BaseException):
                outcome = {"status": "failed", "error": f"{type(outcome).__name__}: {outcome}"}
            rows.append(outcome.get("summary") or {**asdict(trial), "run_id": trial.run_id,
                                                    "error": outcome["error"]})
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
        never_diverges = ~group.groupby("lr0")["diverged"].any()
        monotone = group.groupby("lr0")["largest_rise"].max() <= RATE_RTOL
        stable = sorted(lr0 for lr0 in monotone.index if monotone[lr0] and never_diverges.get(lr0, False))
        row = {"family": family, "parameterization": param, "reference_width": reference, "lr0": math.nan,
               "final_loss": math.nan, "steps_to_level": None, "stable_lr0": ", ".join(f"{x:g}" for x in stable)}
        if stable:
            chosen = at_ref[at_ref["lr0"] == stable[-1]]
            reached = chosen["steps_to_level"]
            row.update(lr0=stable[-1], final_loss=float(chosen["final_loss"].mean()),
                       steps_to_level=None if reached.isna().any() else int(reached.max()))
        rows.append(row)
    return pd.DataFrame(rows)
