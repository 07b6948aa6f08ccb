"""Which numbers came closest to the final training loss of each run, and how much representation learning gained.

Each run of a sweep carries five numbers that speak of its final loss ``L_T`` (:mod:`diagnostics.width.run`); two
are known before training (*a priori*: the ``K_0`` horizon floor and the linearised dynamics at ``K_0``), three only
after it (*post hoc*: they read the final kernel or the run's certificates, so they explain ``L_T``, they do not
predict it):

- the exact floor of (I2), ``(1/2n)‖(I − P)Y‖²`` at ``θ_T`` (``theory/results.md#i2-loss-decomposition``):
  no training of the coefficients at that representation goes below it;
- the horizon floor of the initial kernel ``K_0`` for the run's own ``(η, T)``: the part of ``Y`` in the
  eigen-directions with ``ηλT/n < 1``, which ``T`` steps of size ``η`` cannot fit while the kernel stays put;
- the horizon floor of the final kernel ``K_T`` for the same ``(η, T)``;
- the loss of the dynamics linearised at ``K_0`` after ``T`` steps (the lazy prediction);
  the horizon floors and the linearised loss are ``nan`` (not applicable) for a kernel with ``ηλ_max/n > 2``, where
  linearised gradient descent diverges (``theory/recipe.md#stability``; :func:`stability_findings` names those runs);
- the gradient-descent rate bound ``L_0/(1 + 4L_0τ_T/B̄²)`` (``theory/results.md#gradient-descent-rate``), an
  upper bound; used only on runs where it applies (D1 at every record) and no step raised the loss (where steps
  rise, the bound follows the loss through them and predicts nothing).

A number's *error* on a run is ``|log₁₀(L_T / prediction)|`` (decades; ``inf`` for a prediction of 0 when
``L_T > 0``); per family, parameterisation and side of the counting threshold the closest is the one with the
smallest median error (a post-hoc number that is closest explains the loss; only an a-priori one predicts it).
The *gain* of representation learning is ``L_lin(T)/L_T``: how many times lower the loss is than the kernel the
run started with would have reached; it is defined only where those linearised dynamics converge
(:func:`linearised_converged`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

__all__ = ["PREDICTORS", "best_predictors", "gain_table", "linearised_converged", "predictor_errors",
           "predictor_findings", "stability_findings"]

#: Column of the runs table → the predictor in words.
PREDICTORS: dict[str, str] = {
    "final_loss_lower_bound": "exact (I2) floor at θ_T (post hoc)",
    "init_horizon_loss_floor": "horizon floor of K_0",
    "final_horizon_floor": "horizon floor of K_T (post hoc)",
    "linearised_loss": "linearised dynamics at K_0",
    "rate_bound": "gradient-descent rate bound (post hoc: B̄ of the run)",
}
_KEYS = ["family", "parameterization", "side"]


def _with_side(runs: pd.DataFrame) -> pd.DataFrame:
    side = np.where(runs["n_params"] >= runs["n_outputs"], "d ≥ n·m", "d < n·m")
    return runs.assign(side=side)


def _error(loss: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(np.log10(loss / prediction))
    return np.where((loss == 0) & (prediction == 0), 0.0, np.nan_to_num(err, nan=math.inf, posinf=math.inf))


def predictor_errors(runs: pd.DataFrame) -> pd.DataFrame:
    """Median ratio ``L_T/prediction`` and median error in decades, per predictor, family, parameterisation and side.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``side`` (``"d < n·m"`` or ``"d ≥ n·m"``), ``predictor`` (the column),
        ``name``, ``ratio`` (median of ``L_T/prediction``), ``low``, ``high`` (its range over runs), ``error``
        (median decades off), ``runs``.
    """
    rows = []
    for key, group in _with_side(runs).groupby(_KEYS):
        for column, name in PREDICTORS.items():
            if column not in group:
                continue
            usable = group[column].notna()
            if column == "rate_bound" and "rate_rising_steps" in group:  # a bound that follows rises predicts nothing
                usable &= group["rate_rising_steps"] == 0
            if not usable.any():
                continue
            loss = group.loc[usable, "final_loss"].to_numpy(float)
            prediction = group.loc[usable, column].to_numpy(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = loss / prediction
            rows.append({**dict(zip(_KEYS, key, strict=True)), "predictor": column, "name": name,
                         "ratio": float(np.median(ratios)), "low": float(np.min(ratios)),
                         "high": float(np.max(ratios)), "error": float(np.median(_error(loss, prediction))),
                         "runs": len(loss)})
    return pd.DataFrame(rows, columns=[*_KEYS, "predictor", "name", "ratio", "low", "high", "error", "runs"])


def best_predictors(runs: pd.DataFrame) -> pd.DataFrame:
    """Name the predictor with the smallest median error, and the runner-up, per family, parameterisation and side."""
    errors = predictor_errors(runs).sort_values([*_KEYS, "error"], kind="stable")
    rows = []
    for key, group in errors.groupby(_KEYS, sort=True):
        best, second = group.iloc[0], group.iloc[1] if len(group) > 1 else None
        rows.append({**dict(zip(_KEYS, key, strict=True)), "best": best["name"], "ratio": best["ratio"],
                     "low": best["low"], "high": best["high"], "error": best["error"], "runs": best["runs"],
                     "second": None if second is None else second["name"],
                     "second_error": math.nan if second is None else second["error"]})
    return pd.DataFrame(rows)


def linearised_converged(runs: pd.DataFrame) -> pd.Series:
    """Whether the dynamics linearised at ``K_0`` end no higher than they start, ``L_lin(T) ≤ L_0``, per run.

    They diverge when ``ηλ_k/n > 2`` in a direction that carries part of ``r_0`` (the run then starts beyond the
    edge of stability of its initial kernel, and its ``linearised_loss`` is ``nan``, not applicable); their loss,
    and a gain measured against it, say nothing there.
    """
    return runs["linearised_loss"] <= runs["init_loss"]


def gain_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Tabulate the gain ``L_lin(T)/L_T`` per family, parameterisation and width (geometric mean over seeds).

    Runs whose linearised dynamics diverge (:func:`linearised_converged`) are left out of the mean and counted in
    ``diverged``; ``gain`` is ``nan`` where every seed diverged.
    """
    converged = linearised_converged(runs)
    data = runs.assign(log_gain=np.log(runs["linearised_loss"] / runs["final_loss"]).where(converged),
                       diverged=~converged)
    table = data.groupby(["family", "parameterization", "width"], as_index=False).agg(
        log_gain=("log_gain", "mean"), diverged=("diverged", "sum"), n_params=("n_params", "first"),
        n_outputs=("n_outputs", "first"))
    return table.assign(gain=np.exp(table["log_gain"])).drop(columns="log_gain")


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def predictor_findings(runs: pd.DataFrame) -> list[str]:
    """Sentences naming, per family and parameterisation, the number closest to the final loss, with its numbers."""
    if runs.empty or not set(PREDICTORS) <= set(runs):
        return []
    return [*_predictor_findings(runs), *stability_findings(runs)]


def stability_findings(runs: pd.DataFrame) -> list[str]:
    """Name, in one sentence, the runs whose step is beyond the stable step ``ηλ_max/n ≤ 2`` of ``K_0`` or ``K_T``."""
    if not {"init_step_ratio", "final_step_ratio"} <= set(runs):
        return []
    parts = []
    for column, kernel, left_out in (("init_step_ratio", "K_0", "horizon floor and linearised dynamics"),
                                     ("final_step_ratio", "K_T", "horizon floor")):
        beyond = runs[runs[column] > 2].sort_values("run_id")
        if len(beyond):
            named = ", ".join(f"{r.run_id} ({getattr(r, column):.3g})" for r in beyond.itertuples())
            parts.append(f"{len(beyond)} with ηλ_max({kernel})/n > 2 — {named} — whose {kernel} {left_out} are "
                         "not applicable and left out")
    if not parts:
        return []
    return ["**Runs beyond the stable step** (linearised gradient descent multiplies a direction with ηλ/n > 2 by "
            "ηλ/n − 1 > 1 per step: it diverges instead of fitting, theory/recipe.md#stability): "
            + "; ".join(parts) + "."]


def _predictor_findings(runs: pd.DataFrame) -> Iterator[str]:
    for (family, param), group in best_predictors(runs).groupby(["family", "parameterization"]):
        parts = []
        for r in group.itertuples():
            text = (f"{r.side}: **{r.best}** (final loss / prediction = {_fmt(r.ratio)}, range "
                    f"{_fmt(r.low)}–{_fmt(r.high)} over {r.runs} runs, median {_fmt(r.error)} decades off)")
            if r.second is not None:
                text += f", then the {r.second} ({_fmt(r.second_error)} decades)"
            parts.append(text)
        yield f"*{family}/{param}*: " + "; ".join(parts) + "."
    gains = gain_table(runs)
    over = gains[(gains["n_params"] >= gains["n_outputs"]) & gains["gain"].notna()]
    if over.empty:
        return
    parts = []
    for (family, param), group in over.groupby(["family", "parameterization"]):
        group = group.sort_values("width")
        parts.append(f"{family}/{param} {_fmt(group['gain'].iloc[0])} at width {group['width'].iloc[0]} → "
                     f"{_fmt(group['gain'].iloc[-1])} at width {group['width'].iloc[-1]}")
    diverged = int(gains.loc[gains["n_params"] >= gains["n_outputs"], "diverged"].sum())
    left_out = (f" ({diverged} runs whose linearised dynamics diverge, ηλ_max(K_0)/n > 2, are left out)"
                if diverged else "")
    yield ("**Gain of representation learning** L_lin(T)/L_T (the loss of the dynamics linearised at K_0 over "
           "the loss reached; 1 means the kernel's own learning added nothing), over the widths with d ≥ n·m"
           + left_out + ": " + "; ".join(parts) + ".")
