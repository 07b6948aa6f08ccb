"""What predicted the final training loss of each run, and how much representation learning gained.

Each run of a sweep carries five numbers that speak of its final loss ``L_T`` (:mod:`diagnostics.width.run`).
Two are *a priori* — computable at step 0, before any training:

- the horizon floor of the initial kernel ``K_0`` for the run's own ``(η, T)``: the part of ``Y`` in the
  eigen-directions with ``ηλT/n < 1``, which ``T`` steps of size ``η`` cannot fit while the kernel stays put;
- the loss of the dynamics linearised at ``K_0`` after ``T`` steps (the lazy prediction).

Three are *post hoc* explanations, which need the end of training:

- the exact floor of (I2), ``(1/2n)‖(I − P)Y‖²`` at ``θ_T`` (``theory/results.md#i2-loss-decomposition``):
  no training of the coefficients at that representation goes below it (a statement about the squared loss);
- the horizon floor of the final kernel ``K_T`` for the same ``(η, T)``;
- the gradient-descent rate bound ``L_0/(1 + 4L_0τ_T/B̄²)`` (``theory/results.md#gradient-descent-rate``), an
  upper bound through the certificate over the whole run; used only on runs where it applies (D1 at every record)
  and no step raised the loss (where steps rise, the bound follows the loss through them and predicts nothing).

The horizon floors, the linearised dynamics and the rate bound are statements about gradient descent, with
premises on the recipe (``theory/recipe.md``): a run whose recipe does not meet them has ``None`` in its row, and the
reason in ``<statement>_reason`` (:data:`STATEMENTS`); the (I2) floor predicts only a squared loss;
:func:`predictor_findings` says so.

A predictor's *error* on a run is ``|log₁₀(L_T / prediction)|`` (decades; ``inf`` for a prediction of 0 when
``L_T > 0``); per family, parameterisation, side of the counting threshold and kind (a priori, post hoc) the best
predictor is the one with the smallest median error. The *gain* of representation learning is ``L_lin(T)/L_T``:
how many times lower the loss is than the kernel the run started with would have reached; it is defined only where
those linearised dynamics converge (:func:`linearised_converged`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

from .recipe import merge_reasons

__all__ = ["A_PRIORI", "KINDS", "POST_HOC", "PREDICTORS", "best_predictors", "gain_table", "linearised_converged",
           "prediction", "predictor_errors", "predictor_findings"]

A_PRIORI = "a priori"
POST_HOC = "post hoc"
#: Column of the runs table → the predictor in words.
PREDICTORS: dict[str, str] = {
    "final_loss_lower_bound": "exact (I2) floor",
    "init_horizon_loss_floor": "horizon floor of K_0",
    "final_horizon_floor": "horizon floor of K_T",
    "linearised_loss": "linearised dynamics at K_0",
    "rate_bound": "gradient-descent rate bound",
}
#: Column of the runs table → whether the predictor is computable at step 0 (a priori) or only after (post hoc).
KINDS: dict[str, str] = {
    "init_horizon_loss_floor": A_PRIORI, "linearised_loss": A_PRIORI,
    "final_loss_lower_bound": POST_HOC, "final_horizon_floor": POST_HOC, "rate_bound": POST_HOC,
}
_KEYS = ["family", "parameterization", "side"]


def _with_side(runs: pd.DataFrame) -> pd.DataFrame:
    side = np.where(runs["n_params"] >= runs["n_outputs"], "d ≥ n·m", "d < n·m")
    return runs.assign(side=side)


def _error(loss: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(np.log10(loss / prediction))
    return np.where((loss == 0) & (prediction == 0), 0.0, np.nan_to_num(err, nan=math.inf, posinf=math.inf))


def prediction(runs: pd.DataFrame, column: str) -> pd.Series:
    """Return the values of a predictor, ``nan`` on the runs it does not apply to.

    The statements about gradient descent are ``None`` on runs trained otherwise; the (I2) floor bounds the squared
    loss only, so it is dropped where the runs were measured in cross-entropy.
    """
    values = pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(np.nan, index=runs.index)
    if column == "final_loss_lower_bound" and "measure_loss" in runs:
        values = values.where(runs["measure_loss"] == "mse")
    return values


def _usable(group: pd.DataFrame, column: str) -> pd.Series:
    """Select the runs whose ``column`` predicts their final loss (see the module docstring)."""
    usable = prediction(group, column).notna()
    if column == "rate_bound" and "rate_rising_steps" in group:  # a bound that follows rises predicts nothing
        usable &= group["rate_rising_steps"] == 0
    return usable


def predictor_errors(runs: pd.DataFrame) -> pd.DataFrame:
    """Median ratio ``L_T/prediction`` and median error in decades, per predictor, family, parameterisation and side.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``side`` (``"d < n·m"`` or ``"d ≥ n·m"``), ``kind`` (``"a priori"`` or
        ``"post hoc"``), ``predictor`` (the column), ``name``, ``ratio`` (median of ``L_T/prediction``), ``low``,
        ``high`` (its range over runs), ``error`` (median decades off), ``runs``.
    """
    rows = []
    for key, group in _with_side(runs).groupby(_KEYS):
        for column, name in PREDICTORS.items():
            if column not in group:
                continue
            usable = _usable(group, column)
            if not usable.any():
                continue
            loss = group.loc[usable, "final_loss"].to_numpy(float)
            prediction = group.loc[usable, column].to_numpy(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = loss / prediction
            rows.append({**dict(zip(_KEYS, key, strict=True)), "kind": KINDS[column], "predictor": column,
                         "name": name, "ratio": float(np.median(ratios)), "low": float(np.min(ratios)),
                         "high": float(np.max(ratios)), "error": float(np.median(_error(loss, prediction))),
                         "runs": len(loss)})
    return pd.DataFrame(rows, columns=[*_KEYS, "kind", "predictor", "name", "ratio", "low", "high", "error", "runs"])


def best_predictors(runs: pd.DataFrame) -> pd.DataFrame:
    """Name the predictor with the smallest median error, and the runner-up.

    Per family, parameterisation, side of the counting threshold and kind (a priori, post hoc).
    """
    keys = [*_KEYS, "kind"]
    errors = predictor_errors(runs).sort_values([*keys, "error"], kind="stable")
    rows = []
    for key, group in errors.groupby(keys, sort=True):
        best, second = group.iloc[0], group.iloc[1] if len(group) > 1 else None
        rows.append({**dict(zip(keys, key, strict=True)), "best": best["name"], "ratio": best["ratio"],
                     "low": best["low"], "high": best["high"], "error": best["error"], "runs": best["runs"],
                     "second": None if second is None else second["name"],
                     "second_error": math.nan if second is None else second["error"]})
    return pd.DataFrame(rows)


def linearised_converged(runs: pd.DataFrame) -> pd.Series:
    """Whether the dynamics linearised at ``K_0`` end no higher than they start, ``L_lin(T) ≤ L_0``, per run.

    They diverge when ``ηλ_k/n > 2`` in a direction that carries part of ``r_0`` (the run then starts beyond the
    edge of stability of its initial kernel); their loss, and a gain measured against it, say nothing there. A run
    without linearised dynamics (not trained by gradient descent) is neither converged nor diverged: ``False``.
    """
    return pd.to_numeric(runs["linearised_loss"], errors="coerce") <= runs["init_loss"]


def gain_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Tabulate the gain ``L_lin(T)/L_T`` per family, parameterisation and width (geometric mean over seeds).

    Runs whose linearised dynamics diverge (:func:`linearised_converged`) are left out of the mean and counted in
    ``diverged``; ``gain`` is ``nan`` where every seed diverged or none has linearised dynamics.
    """
    linearised = pd.to_numeric(runs["linearised_loss"], errors="coerce")
    converged = linearised_converged(runs)
    data = runs.assign(log_gain=np.log(linearised / runs["final_loss"]).where(converged),
                       diverged=linearised.notna() & ~converged)
    table = data.groupby(["family", "parameterization", "width"], as_index=False).agg(
        log_gain=("log_gain", "mean"), diverged=("diverged", "sum"), n_params=("n_params", "first"),
        n_outputs=("n_outputs", "first"))
    return table.assign(gain=np.exp(table["log_gain"])).drop(columns="log_gain")


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3g}"


def predictor_findings(runs: pd.DataFrame) -> list[str]:
    """Name, per family and parameterisation, the a priori predictor and the post hoc explanation of the final loss.

    Sentences with their numbers, or why none applies.
    """
    if runs.empty or not set(PREDICTORS) <= set(runs):
        return []
    return list(_predictor_findings(runs))


def _predictor_findings(runs: pd.DataFrame) -> Iterator[str]:
    best = best_predictors(runs)
    for (family, param), group in runs.groupby(["family", "parameterization"]):
        found = best[(best["family"] == family) & (best["parameterization"] == param)] if not best.empty else best
        parts = []
        for kind in (A_PRIORI, POST_HOC):
            rows = found[found["kind"] == kind] if not found.empty else found
            if rows.empty:
                parts.append(f"{kind}: none applies ({_why_none(group, kind)})")
                continue
            texts = []
            for r in rows.itertuples():
                text = (f"{r.side}: **{r.best}** (final loss / prediction = {_fmt(r.ratio)}, range "
                        f"{_fmt(r.low)}–{_fmt(r.high)} over {r.runs} runs, median {_fmt(r.error)} decades off)")
                if isinstance(r.second, str):
                    text += f", then the {r.second} ({_fmt(r.second_error)} decades)"
                texts.append(text)
            parts.append(f"{kind}: " + "; ".join(texts))
        yield f"*{family}/{param}*: " + ". ".join(parts) + "."
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


#: The statement about gradient descent each predictor is (its premises: ``theory/recipe.md``).
STATEMENTS = {"init_horizon_loss_floor": "horizon", "linearised_loss": "linearised",
              "final_horizon_floor": "final_horizon", "rate_bound": "rate"}


def _why_none(group: pd.DataFrame, kind: str) -> str:
    """Why no predictor of ``kind`` applies to a family's runs: the premises on the recipe, and the loss."""
    reasons = []
    for column, statement in STATEMENTS.items():
        flags = group.get(f"{statement}_applies", pd.Series(dtype=object)).astype(object)
        if KINDS[column] == kind and not flags.eq(True).any():
            why = merge_reasons(group.loc[~flags.eq(True), f"{statement}_reason"].dropna()) if len(flags) else ""
            reasons.append(f"the {PREDICTORS[column]} does not apply ({why or 'not measured'})")
    if kind == POST_HOC and "measure_loss" in group and (group["measure_loss"] != "mse").all():
        reasons.append("the (I2) floor bounds the squared loss, and these runs are measured in "
                       f"{group['measure_loss'].iloc[0]}")
    return "; ".join(reasons) or "no run has a usable value"
