"""What a width sweep shows, computed from its tables (``theory/width.md``, S1–S4).

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

from theory.verdict import STATUSES
from theory.verdicts import kernel_movement_trend

from ..tracking.verification import verify_history
from .sweep import SweepResult

__all__ = [
    "EXPECTED_TREND",
    "counting_threshold",
    "findings",
    "movement_slopes",
    "record_verdicts",
    "seed_means",
    "status_counts",
]

#: S4 expectation per parameterisation: the NTK (and the standard one, whose step shrinks like
#: ``1/width``) is lazy, mean-field is rich.
EXPECTED_TREND = {"ntk": "decreasing", "standard": "decreasing", "mf": "order-one"}
GROUP = ["family", "parameterization", "width"]
#: Coverage of the intervals of the fitted slopes.
LEVEL = 0.9


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
    """Fit the log-log slope of a movement against width, its interval and S4 verdict, per family and parameterisation.

    The fit (:func:`theory.verdicts.kernel_movement_trend`, every run a point) uses the over-parameterised
    widths (``d ≥ n·m``) when there are two or more, else all widths; its interval is the ``t``-interval of the
    mean of the per-seed slopes at level :data:`LEVEL` (``theory/width.md#the-interval-of-the-slope``), and its
    verdict expects ``"decreasing"`` for NTK and ``"order-one"`` for mean-field: *not established* when the
    interval allows both.

    Returns
    -------
    pandas.DataFrame
        Columns ``family``, ``parameterization``, ``slope``, ``low``, ``high`` (the interval), ``intercept``
        (of ``log Δ`` against ``log width``), ``expect``, ``status`` (the verdict's word), ``widths`` (the
        fitted widths, as text), ``seeds`` (their number), ``verdict`` (the verdict's sentence).
    """
    rows = []
    for (family, param), group in runs.groupby(["family", "parameterization"]):
        fit = _overparameterised_widths(group)
        fit = fit[fit[column] > 0]
        if fit["width"].nunique() < 2 or param not in EXPECTED_TREND:
            continue
        verdict = kernel_movement_trend(fit["width"], fit[column], expect=EXPECTED_TREND[param],
                                        groups=fit["seed"], level=LEVEL)
        low, high = verdict.details["interval"] or (math.nan, math.nan)
        rows.append({
            "family": family,
            "parameterization": param,
            "slope": verdict.details["slope"],
            "low": low,
            "high": high,
            "intercept": verdict.details["intercept"],
            "expect": EXPECTED_TREND[param],
            "status": verdict.status,
            "widths": ", ".join(str(w) for w in sorted(fit["width"].unique())),
            "seeds": int(fit["seed"].nunique()),
            "verdict": str(verdict),
        })
    columns = ["family", "parameterization", "slope", "low", "high", "intercept", "expect", "status", "widths",
               "seeds", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def findings(sweep: SweepResult) -> list[str]:
    """Sentences stating what the sweep shows, each number computed from its tables.

    Every pass/fail word is a :mod:`theory` verdict: D1 and (I2)/(I3) at every record
    (:func:`~diagnostics.tracking.verification.verify_history`), the gradient-descent rate per run and the S4
    slopes with their intervals.

    Returns
    -------
    list of str
        Markdown sentences: S1 (counting), the verdicts on the records, the rate, S4 (lazy versus rich), the
        test metric, and the missing runs.
    """
    if sweep.runs.empty:
        return ["No run finished: there is nothing to report yet."]
    return list(_findings(sweep))


def record_verdicts(records: pd.DataFrame) -> pd.DataFrame:
    """Every statement of :func:`~diagnostics.tracking.verification.verify_history` at every record of every run.

    Returns
    -------
    pandas.DataFrame
        ``run_id``, ``family``, ``parameterization``, ``width``, ``step``, ``statement``, ``status``,
        ``sanity``; D1 itself appears as statement ``"D1"`` with the record's ``d1_status``.
    """
    frames = []
    keys = ["run_id", "family", "parameterization", "width"]
    for key, history in records.groupby(keys, sort=False):
        history = history.sort_values("step").reset_index(drop=True)
        table = verify_history(history).drop(columns=["verdict", "lhs", "rhs", "margin", "tolerance"])
        d1 = pd.DataFrame({"step": history["step"], "statement": "D1", "status": history["d1_status"],
                           "sanity": False})
        frames.append(pd.concat([d1, table], ignore_index=True).assign(**dict(zip(keys, key, strict=True))))
    columns = [*keys, "step", "statement", "status", "sanity"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def status_counts(statuses: pd.Series) -> str:
    """Count the verdict words, e.g. ``"holds at 40, not applicable at 8 of 48"``."""
    counts = statuses.value_counts()
    parts = [f"{status} at {counts[status]}" for status in STATUSES if status in counts]
    return f"{', '.join(parts)} of {len(statuses)}"


def _findings(sweep: SweepResult) -> Iterator[str]:
    runs, records, missing = sweep.runs, sweep.records, sweep.missing
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
                f"{_fmt(below['final_residual'].min())} and the (I2) floor (1/2n)‖(I−P)Y‖² at least "
                f"{_fmt(below['final_loss_lower_bound'].min())}."
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
        verdicts = record_verdicts(records)
        names = {"D1": "D1", "I2": "(I2) decomposition", "I2.lower": "(I2) floor L ≥ (1/2n)‖(I−P)Y‖²",
                 "I3": "(I3) gradient domination", "I2.necessity": "(I2) necessity"}
        text = "; ".join(f"{label}: {status_counts(verdicts.loc[verdicts['statement'] == key, 'status'])}"
                         for key, label in names.items() if (verdicts["statement"] == key).any())
        yield (f"**Verdicts at every record** (theory, via `verify_history`; a bound whose premise fails is "
               f"not applicable): {text} records.")
    if "rate_status" in runs:
        parts = []
        for (family, param), group in runs.groupby(["family", "parameterization"]):
            parts.append(f"{family}/{param}: {status_counts(group['rate_status'])} runs")
        rising = runs.loc[runs["rate_status"] != "not applicable", "rate_rising_steps"]
        rises = "" if rising.empty else (
            f" In {int((rising > 0).sum())} of the {len(rising)} runs where it applies some steps raised the loss "
            f"(at most {int(rising.max())} steps in one run; their rise ρ is accounted exactly).")
        yield ("**(I3) gradient-descent rate** 1/L_k ≥ 1/L_0 + 4τ_k/B̄² − ρ_k (theory/results.md#gradient-descent-rate; "
               "not applicable where D1 fails at a record): " + "; ".join(parts) + "." + rises)
    for column, name in (("final_kernel_movement_init", "kernel"), ("final_param_movement", "parameter")):
        slopes = movement_slopes(runs, column)
        if slopes.empty:
            continue
        text = "; ".join(
            f"{r.family}/{r.parameterization} slope {r.slope:+.2f} ({LEVEL:.0%} interval over {r.seeds} seeds "
            f"[{r.low:+.2f}, {r.high:+.2f}]) over widths {r.widths}: {r.expect} {r.status}"
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
