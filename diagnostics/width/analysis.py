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
from .recipe import GD_STATEMENTS, merge_reasons
from .sweep import SweepResult

__all__ = [
    "NOT_JUDGED",
    "applicability",
    "cost_findings",
    "cost_table",
    "counting_threshold",
    "gd_reasons",
    "statement_applies",
    "findings",
    "movement_slopes",
    "record_verdicts",
    "seed_means",
    "status_counts",
    "unstable_note",
]

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
    verdict expects what the family's ``s4_expect`` says (``"decreasing"`` for NTK, ``"order-one"`` for
    mean-field): *not established* when the interval allows both. A family without an expectation gets its slope
    and interval, and no verdict (status ``"not judged"``).

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
        if fit["width"].nunique() < 2:
            continue
        expect = _expectation(group)
        verdict = kernel_movement_trend(fit["width"], fit[column], expect=expect or "decreasing",
                                        groups=fit["seed"], level=LEVEL)
        low, high = verdict.details["interval"] or (math.nan, math.nan)
        rows.append({
            "family": family,
            "parameterization": param,
            "slope": verdict.details["slope"],
            "low": low,
            "high": high,
            "intercept": verdict.details["intercept"],
            "expect": expect or "none",
            "status": verdict.status if expect else NOT_JUDGED,
            "widths": ", ".join(str(w) for w in sorted(fit["width"].unique())),
            "seeds": int(fit["seed"].nunique()),
            "verdict": str(verdict) if expect else "no S4 expectation for this family: the slope is measured, "
                                                   "not judged",
        })
    columns = ["family", "parameterization", "slope", "low", "high", "intercept", "expect", "status", "widths",
               "seeds", "verdict"]
    return pd.DataFrame(rows, columns=columns)


#: The status of a slope fitted for a family without an S4 expectation.
NOT_JUDGED = "not judged"


def _expectation(group: pd.DataFrame) -> str | None:
    """Return the S4 expectation of a family's runs (``s4_expect``), or ``None``."""
    if "s4_expect" not in group:
        return None
    values = group["s4_expect"].dropna()
    return str(values.iloc[0]) if not values.empty else None


def applicability(runs: pd.DataFrame) -> pd.DataFrame:
    """Tabulate what each family was trained by, and whether each statement about gradient descent applies to it.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``optimizer``, ``batch``, ``loss``, then one column per statement of
        :data:`~diagnostics.width.recipe.GD_STATEMENTS` (:func:`statement_applies`).
    """
    rows = []
    for (family, param), group in runs.groupby(["family", "parameterization"]):
        batch = group["batch_size"].dropna() if "batch_size" in group else pd.Series(dtype=float)
        rows.append({"family": family, "parameterization": param,
                     "optimizer": _first(group, "optimizer"), "batch": "full" if batch.empty else
                     ", ".join(str(int(b)) for b in sorted(batch.unique())), "loss": _first(group, "loss_name"),
                     **{title: statement_applies(group, statement)
                        for statement, (_, title) in GD_STATEMENTS.items()}})
    return pd.DataFrame(rows)


def statement_applies(runs: pd.DataFrame, statement: str) -> str:
    """Say on how many of ``runs`` a statement about gradient descent applies, and why not on the others.

    ``"applies (k of N runs)"``, ``"not applicable (j of N runs): reasons"`` (:func:`gd_reasons`) and, for runs read
    from histories, ``"not measured (i of N runs): reason"``; for a horizon floor, its unstable parts
    (:func:`unstable_note`).
    """
    column = f"{statement}_applies"
    if column not in runs:
        return "unknown"
    flags = runs[column].astype(object)
    parts = []
    for value, word in ((True, "applies"), (False, "not applicable"), (None, "not measured")):
        chosen = flags.isna() if value is None else flags.eq(value)
        if chosen.any():
            reasons = "" if value is True else f": {merge_reasons(runs.loc[chosen, f'{statement}_reason'].dropna())}"
            parts.append(f"{word} ({int(chosen.sum())} of {len(runs)} runs){reasons}")
    note = unstable_note(runs, statement)
    return "; ".join(parts + ([note] if note else []))


#: The kernel whose unstable part a horizon floor names, by statement (columns ``<kernel>_unstable_*``).
_HORIZON_KERNELS = {"horizon": "init", "final_horizon": "final"}


def unstable_note(runs: pd.DataFrame, statement: str) -> str:
    """Name the unstable parts of a horizon floor over ``runs`` (``theory/alignment.md#horizon-residual``).

    The floor counts the slow directions whatever the step; the directions with ``ηλ/n > 2`` are not fitted, and
    this says at how many runs there are some, their step ratios, how many and what share of ``‖Q‖²`` they carry
    (``""`` when no run has any, or the statement is not a horizon floor).
    """
    kernel = _HORIZON_KERNELS.get(statement)
    column = f"{kernel}_unstable_directions"
    if kernel is None or column not in runs:
        return ""
    counts = pd.to_numeric(runs[column], errors="coerce")
    chosen = counts > 0
    if not chosen.any():
        return ""
    ratios = pd.to_numeric(runs.loc[chosen, f"{kernel}_step_ratio"])
    shares = pd.to_numeric(runs.loc[chosen, f"{kernel}_unstable_share"])
    low, high = int(counts[chosen].min()), int(counts[chosen].max())
    return (f"unstable part at {int(chosen.sum())} of {len(runs)} runs (ηλ_max/n = {ratios.min():.4g}"
            + (f"–{ratios.max():.4g}" if ratios.max() > ratios.min() else "")
            + f": {low}" + (f"–{high}" if high > low else "") + " directions with ηλ/n > 2, at most "
            f"{100 * shares.max():.3g} % of ‖Q‖², not fitted; the floor counts the slow directions only)")


def gd_reasons(runs: pd.DataFrame, statement: str) -> str:
    """Why a statement about gradient descent does not apply to some of ``runs`` (their reasons merged)."""
    column = f"{statement}_applies"
    if column not in runs:
        return "unknown"
    chosen = ~runs[column].astype(object).eq(True)
    return merge_reasons(runs.loc[chosen, f"{statement}_reason"].dropna()) or "unknown"


def _first(group: pd.DataFrame, column: str) -> str:
    values = group[column].dropna() if column in group else pd.Series(dtype=object)
    return str(values.iloc[0]) if not values.empty else "unknown"


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds spent training and measuring per run (mean over seeds), per family, parameterisation and width.

    Returns
    -------
    pandas.DataFrame
        ``family``, ``parameterization``, ``width``, ``train s``, ``measure s``, ``measure / train`` (``nan``
        where the training time is not known, as for runs read from histories).
    """
    columns = ["family", "parameterization", "width", "train s", "measure s", "measure / train"]
    if "measure_seconds" not in runs:
        return pd.DataFrame(columns=columns)
    data = runs.assign(train=runs.get("train_seconds", math.nan), measure=runs["measure_seconds"])
    table = data.groupby(GROUP, as_index=False)[["train", "measure"]].mean()
    table["ratio"] = table["measure"] / table["train"]
    table.columns = columns
    return table


def cost_findings(runs: pd.DataFrame) -> list[str]:
    """Sentences setting the measurement time of the runs against their training time."""
    if "measure_seconds" not in runs:
        return ["The runs do not record their timings."]
    measure = float(runs["measure_seconds"].sum())
    if "train_seconds" not in runs or runs["train_seconds"].isna().all():
        return [f"Measuring took {measure:.1f} s over {len(runs)} runs (the tracker's records); the training time "
                "is not in the histories."]
    train = float(runs["train_seconds"].sum())
    parts = []
    for (family, param), group in runs.groupby(["family", "parameterization"]):
        t, m = float(group["train_seconds"].sum()), float(group["measure_seconds"].sum())
        parts.append(f"{family}/{param} {m:.1f} s measuring against {t:.1f} s training ({_ratio(m, t)})")
    return [f"Over {len(runs)} runs, measuring took {measure:.1f} s and training {train:.1f} s "
            f"({_ratio(measure, train)}): " + "; ".join(parts) + ". Measuring is the tracker's records (a float64 "
            "Gram and its spectrum each), the coordinate check, per-layer alignment at the start and the end, the "
            "kernel path and the test metrics; training is the optimiser steps with their data."]


def _ratio(measure: float, train: float) -> str:
    return f"{measure / train:.2g}× the training time" if train > 0 else "training took no measurable time"


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
    if statuses.isna().any():
        parts.append(f"not measured at {int(statuses.isna().sum())}")
    return f"{', '.join(parts)} of {len(statuses)}"


def _findings(sweep: SweepResult) -> Iterator[str]:
    runs, records, missing = sweep.runs, sweep.records, sweep.missing
    means = seed_means(runs)
    thresholds = counting_threshold(runs)
    nm = int(runs["n_outputs"].iloc[0])
    probe = _probe_scope(runs)
    yield (
        f"**S1 (counting).** With n·m = {nm} stacked outputs{' of the probe' if probe else ''}, a network with fewer "
        "parameters d cannot fit generic targets exactly (theory/width.md#s1-counting); the rank of J, which never "
        "exceeds min(n·m, d), is measured below and above that threshold."
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
                 "I3": "(I3) gradient domination", "I4": "(I4) convex-loss bound", "I2.necessity": "(I2) necessity"}
        text = "; ".join(f"{label}: {status_counts(verdicts.loc[verdicts['statement'] == key, 'status'])}"
                         for key, label in names.items() if (verdicts["statement"] == key).any())
        yield (f"**Verdicts at every record**{probe} (theory, via `verify_history`; a bound whose premise fails is "
               f"not applicable): {text} records.")
    if "rate_status" in runs:
        parts = []
        for (family, param), group in runs.groupby(["family", "parameterization"]):
            parts.append(f"{family}/{param}: {status_counts(group['rate_status'])} runs")
        rising = runs.loc[runs["rate_status"].isin(("holds", "refuted", "not established")),
                          "rate_rising_steps"].dropna()
        rises = "" if rising.empty else (
            f" In {int((rising > 0).sum())} of the {len(rising)} runs where it applies some steps raised the loss "
            f"(at most {int(rising.max())} steps in one run; their rise ρ is accounted exactly)." if rising.max() > 0
            else f" No step raised the loss in the {len(rising)} runs where it applies.")
        recipe = "" if "rate_applies" not in runs or runs["rate_applies"].astype(object).eq(True).all() else (
            f" On the recipe (theory/recipe.md): {statement_applies(runs, 'rate')}.")
        yield ("**(I3) gradient-descent rate** 1/L_k ≥ 1/L_0 + 4τ_k/B̄² − ρ_k (theory/results.md#gradient-descent-rate; "
               "it needs D1 at every record, and the squared loss and its gradient on the whole training set at "
               "every step, under any update rule): " + "; ".join(parts) + "." + rises + recipe)
    for column, name in (("final_kernel_movement_init", "kernel"), ("final_param_movement", "parameter")):
        slopes = movement_slopes(runs, column)
        if slopes.empty:
            continue
        text = "; ".join(
            f"{r.family}/{r.parameterization} slope {r.slope:+.2f} ({LEVEL:.0%} interval over {r.seeds} seeds "
            f"[{r.low:+.2f}, {r.high:+.2f}]) over widths {r.widths}: "
            + (f"{r.expect} {r.status}" if r.status != NOT_JUDGED else "no expectation given, not judged")
            for r in slopes.itertuples()
        )
        lead = "**S4 (lazy versus rich).** " if name == "kernel" else ""
        note = "" if name == "kernel" or "mf" not in set(runs["parameterization"]) else (
            " (with more than one hidden layer, maximal-update training moves the hidden-to-hidden weights "
            "by O(1/√width) of their size while the features still move by O(1), so the kernel movement, "
            "not this one, decides S4 there)"
        )
        what = f"Log-log slope of the {name} movement against width at the end of training"
        yield f"{lead}{what}: {text}{note}."
    metric = next((m for m in ("test_accuracy", "test_loss") if m in means and means[m].notna().any()), None)
    if metric is None:
        yield "**Test metrics.** None: the study has no test split."
    else:
        scored = means.dropna(subset=[metric])
        by = scored.groupby(["family", "parameterization"])[metric]
        best = scored.loc[by.idxmax() if metric == "test_accuracy" else by.idxmin()]
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


def _probe_scope(runs: pd.DataFrame) -> str:
    """`` on the probe (n of N training samples: …)`` when the runs were measured on part of their training set."""
    if "n_train" not in runs or "n_probe" not in runs:
        return ""
    n, n_train = runs["n_probe"].iloc[0], pd.to_numeric(runs["n_train"], errors="coerce").iloc[0]
    if not n_train > n:
        return ""
    return (f" on the probe ({int(n)} of the {int(n_train)} training samples: D1 and the bounds are the probe's, and a "
            "success there says nothing of the rest, theory/alignment.md#subsets)")


def _widths(group: pd.DataFrame) -> str:
    return ", ".join(str(w) for w in sorted(group["width"].unique()))
