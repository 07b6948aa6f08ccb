"""What a width sweep shows, computed from its tables (theory/width.md).

Pure functions of the :class:`~diagnostics.width.sweep.SweepResult` tables, shared by the figures and
the report: the counting threshold ``d = n·m`` in units of width (S1), the log-log slopes of the
kernel and parameter movement against width with their verdicts (S4), and the sentences of the
report, every number in them read from the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

from theory.verdicts import kernel_movement_trend

__all__ = [
    "EXPECTED_TREND",
    "counting_threshold",
    "findings",
    "movement_slopes",
    "seed_means",
]

#: S4 expectation per parameterisation: the NTK (and the standard one, whose step shrinks like
#: ``1/width``) is lazy, mean-field is rich.
EXPECTED_TREND = {"ntk": "decreasing", "standard": "decreasing", "mf": "order-one"}
GROUP = ["family", "parameterization", "width"]


def seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of every numeric column, per (family, parameterization, width)."""
    numeric = runs.select_dtypes(include=["number", "bool"]).columns.difference(GROUP + ["seed"])
    return runs.groupby(GROUP, as_index=False)[list(numeric)].mean()


def counting_threshold(runs: pd.DataFrame) -> dict[str, float | None]:
    """Width at which the parameter count reaches ``n·m`` (S1), per family.

    ``d(width)`` is interpolated linearly in log-log between the two measured widths around the
    crossing; ``None`` when every measured width lies on the same side.
    """
    out: dict[str, float | None] = {}
    for family, group in runs.groupby("family"):
        table = group.groupby("width")[["n_params", "n_outputs"]].first().sort_index()
        nm = float(table["n_outputs"].iloc[0])
        log_w, log_d = np.log(table.index.to_numpy(float)), np.log(table["n_params"].to_numpy(float))
        out[family] = None
        for i in range(len(table) - 1):
            if log_d[i] < math.log(nm) <= log_d[i + 1]:
                t = (math.log(nm) - log_d[i]) / (log_d[i + 1] - log_d[i])
                out[family] = float(math.exp(log_w[i] + t * (log_w[i + 1] - log_w[i])))
    return out


def _overparameterised_widths(group: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``d ≥ n·m`` when they span two widths (S4 is a large-width statement), else all rows."""
    over = group[group["n_params"] >= group["n_outputs"]]
    return over if over["width"].nunique() >= 2 else group


def movement_slopes(runs: pd.DataFrame, column: str = "final_kernel_movement_init") -> pd.DataFrame:
    """Fitted log-log slope of a movement against width, per family and parameterisation (S4).

    The fit (:func:`theory.verdicts.kernel_movement_trend`, every seed a point) uses the
    over-parameterised widths (``d ≥ n·m``) when there are two or more, else all widths; its
    verdict expects ``"decreasing"`` for NTK and ``"order-one"`` for mean-field.

    Returns
    -------
    pandas.DataFrame
        Columns ``family``, ``parameterization``, ``slope``, ``intercept`` (of ``log Δ`` against
        ``log width``), ``expect``, ``holds``, ``widths`` (the fitted widths, as text), ``verdict``
        (the verdict's sentence).
    """
    rows = []
    for (family, param), group in runs.groupby(["family", "parameterization"]):
        fit = _overparameterised_widths(group)
        fit = fit[fit[column] > 0]
        if fit["width"].nunique() < 2 or param not in EXPECTED_TREND:
            continue
        verdict = kernel_movement_trend(fit["width"], fit[column], expect=EXPECTED_TREND[param])
        rows.append({
            "family": family,
            "parameterization": param,
            "slope": verdict.details["slope"],
            "intercept": verdict.details["intercept"],
            "expect": EXPECTED_TREND[param],
            "holds": bool(verdict.holds),
            "widths": ", ".join(str(w) for w in sorted(fit["width"].unique())),
            "verdict": str(verdict),
        })
    columns = ["family", "parameterization", "slope", "intercept", "expect", "holds", "widths", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def findings(runs: pd.DataFrame, records: pd.DataFrame, missing: pd.DataFrame) -> list[str]:
    """Sentences stating what the sweep shows, each number computed from the tables.

    Parameters
    ----------
    runs, records, missing
        The tables of :class:`~diagnostics.width.sweep.SweepResult`.

    Returns
    -------
    list of str
        Markdown sentences: S1 (counting), (I2) (the loss never below its floor), (I3) (bound ratio
        on aligned records), S4 (lazy versus rich) and the test metric, per family.
    """
    if runs.empty:
        return ["No run finished: there is nothing to report yet."]
    return list(_findings(runs, records, missing))


def _findings(runs: pd.DataFrame, records: pd.DataFrame, missing: pd.DataFrame) -> Iterator[str]:
    means = seed_means(runs)
    thresholds = counting_threshold(runs)
    nm = int(runs["n_outputs"].iloc[0])
    yield (
        f"**S1 (counting).** With n·m = {nm} stacked outputs, a network with fewer parameters d cannot fit "
        "generic targets exactly (theory/width.md#s1-counting); the rank of J, which never exceeds "
        "min(n·m, d), is measured below and above that threshold."
    )
    for family, group in means.groupby("family"):
        below, above = group[group["n_params"] < nm], group[group["n_params"] >= nm]
        where = thresholds.get(family)
        at = f"at width ≈ {where:.1f}" if where else "outside the measured widths"
        parts = [f"*{family}*: d crosses n·m {at}."]
        if not below.empty:
            parts.append(
                f"Below it (widths {_widths(below)}) the final rank J/(n·m) is at most "
                f"{_fmt((below['final_rank'] / nm).max())}, the alignment residual at least "
                f"{_fmt(below['final_residual'].min())}, and the training loss stays at or above its (I2) "
                f"floor (1/2n)‖(I−P)Y‖², which is at least {_fmt(below['final_loss_lower_bound'].min())}."
            )
        if not above.empty:
            parts.append(
                f"Above it (widths {_widths(above)}) the final rank J/(n·m) reaches "
                f"{_fmt((above['final_rank'] / nm).max())} and the residual falls to "
                f"{_fmt(above['final_residual'].min())}; the final loss is "
                f"{_fmt(above['final_loss'].min())}–{_fmt(above['final_loss'].max())}."
            )
        yield " ".join(parts)
    if not records.empty:
        gap = records["loss"] - records["loss_lower_bound"]
        worst = float((gap / records["loss"].abs().clip(lower=1e-300)).min())
        holds = bool((gap >= -1e-6 * records["loss"].abs()).all())
        gap_abs = records["decomposition_gap"].abs()
        text = (
            f"**(I2) loss floor.** Over all {len(records)} records the training loss minus its lower bound "
            f"(1/2n)‖(I−P)Y‖² is ≥ 0 {'everywhere' if holds else 'NOT everywhere'}"
            f" (smallest relative gap {_fmt(worst)}). The two sides of (I2) differ by at most {_fmt(gap_abs.max())}"
        )
        if "output_residual" in records:  # absent from results written before the column existed
            relative = gap_abs / records["loss"].abs().clip(lower=1e-300)
            text += (
                f" in absolute terms, {_fmt(relative.max())} of the loss; A1 holds for these models (affine "
                f"output layer), so the difference is the part of f_X that the rank tolerance drops: "
                f"‖(I−P)f_X‖/‖f_X‖ reaches {_fmt(records['output_residual'].max())} "
                f"({', '.join(sorted(set(records['dtype'])))} measurements; the float64 rule keeps more directions)"
            )
        yield text + "."
        aligned = records[records["aligned"].astype(bool)]
        if not aligned.empty:
            ratio = aligned["bound_ratio"]
            yield (
                f"**(I3) gradient domination.** On the {len(aligned)} aligned records the bound ratio "
                f"L / (½‖∇L‖B) is at most {_fmt(ratio.max())} (median {_fmt(ratio.median())}); it must be "
                f"≤ 1 there, and is {'within' if ratio.max() <= 1 + 1e-6 else 'ABOVE'} the bound."
            )
    for column, name in (("final_kernel_movement_init", "kernel"), ("final_param_movement", "parameter")):
        slopes = movement_slopes(runs, column)
        if slopes.empty:
            continue
        text = "; ".join(
            f"{r.family}/{r.parameterization} slope {r.slope:+.2f} over widths {r.widths} "
            f"({'as expected: ' if r.holds else 'NOT as expected: '}{r.expect})"
            for r in slopes.itertuples()
        )
        lead = "**S4 (lazy versus rich).** " if name == "kernel" else ""
        note = "" if name == "kernel" else (
            " (with more than one hidden layer, maximal-update training moves the hidden-to-hidden weights "
            "by O(1/√width) of their size while the features still move by O(1), so the kernel movement, "
            "not this one, decides S4 there)"
        )
        what = f"Log-log slope of the {name} movement against width at the end of training"
        yield f"{lead}{what}: {text}{note}."
    metric = "test_accuracy" if "test_accuracy" in means else "test_loss"
    by = means.groupby(["family", "parameterization"])[metric]
    best = means.loc[by.idxmax() if metric == "test_accuracy" else by.idxmin()]
    yield "**Test " + metric.removeprefix("test_") + ".** " + "; ".join(
        f"{r.family}/{r.parameterization}: best {_fmt(getattr(r, metric))} at width {r.width}"
        for r in best.itertuples()
    ) + "."
    if not missing.empty:
        yield (
            f"**Missing runs.** {len(missing)} run(s) have no result "
            f"({(missing['status'] == 'failed').sum()} failed); they are listed below and rerunning the same "
            "command runs only them."
        )


def _widths(group: pd.DataFrame) -> str:
    return ", ".join(str(w) for w in sorted(group["width"].unique()))
