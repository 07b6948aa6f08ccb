"""Figures of the rate and of what predicts the final loss: certificate, rate bound, loss predictors, gain.

Each takes a :class:`~diagnostics.width.sweep.SweepResult` and returns a :class:`matplotlib.figure.Figure`
(the quantities are those of :mod:`diagnostics.width.predictors`).
"""

from __future__ import annotations

import textwrap

import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .analysis import counting_threshold, gd_reasons
from .analysis import status_counts as _counts
from .plotting import (
    at_floor,
    family_titles,
    grid,
    hue_order,
    legend_right,
    panel_title,
    panels,
    placeholder,
    threshold_line,
    width_axis,
    width_lines,
    with_labels,
)
from .predictors import KINDS, PREDICTORS, gain_table, linearised_converged, prediction
from .sweep import SweepResult

__all__ = ["certificate", "loss_predictors", "rate_bound", "representation_gain"]

#: Colours of the predictors in :func:`loss_predictors`.
_PREDICTOR_COLOURS = dict(zip(PREDICTORS, ("#444444", "#1b9e77", "#7570b3", "#e7298a", "#e6ab02"), strict=True))


def certificate(sweep: SweepResult) -> Figure:
    """Draw the certificate ``B = ‖J⁺r‖`` (largest over the records, at the end) and ``‖ν‖ = ‖J⁺Y‖`` against width."""
    runs = with_labels(sweep.runs)
    families = sorted(runs["family"].unique())
    thresholds = counting_threshold(sweep.runs)
    fig, axes = grid(families, nrows=2, height=3.4, sharey=False)
    rows = [(("certificate_bar", "B̄ = max over records"), ("final_certificate", "B at the end")),
            (("init_nu_norm", "‖ν‖ at the start"), ("final_nu_norm", "‖ν‖ at the end"))]
    for i, pair in enumerate(rows):
        for j, family in enumerate(families):
            ax, sub = axes[i, j], runs[runs["family"] == family]
            last = j == len(families) - 1
            long = pd.concat([sub.assign(quantity=label, value=sub[column]) for column, label in pair])
            order, palette = hue_order(long)
            sns.lineplot(data=long, x="width", y="value", hue="parameterisation", style="quantity",
                         hue_order=order, palette=palette,
                         estimator="mean", errorbar="sd", marker="o", ax=ax, legend=last)
            threshold_line(ax, thresholds.get(family), label=last and i == 0)
            ax.set_yscale("log")
            width_axis(ax, sub["width"])
            if last:
                ax.legend(fontsize=7, loc="best")
    family_titles(axes, families, ["certificate B = ‖J⁺(f_X − Y)‖", "least-norm ‖ν‖ = ‖J⁺Y‖"])
    return fig


def rate_bound(sweep: SweepResult) -> Figure:
    """Draw the training loss at every step against the gradient-descent rate bound, one colour per width.

    The bound is drawn for the runs where it applies; on the others the loss of every step's batch is drawn alone
    and the box gives the reason.
    """
    runs, trajectories = sweep.runs, sweep.trajectories
    if trajectories.empty:
        return placeholder("Not measured: these runs were read from histories, which hold the tracker's records, "
                           "not the loss and gradient of every step; the rate of gradient descent cannot be checked.")
    pairs = panels(runs)
    fig, axes = grid(pairs, nrows=1, height=3.8, sharey=False)
    seed = runs["seed"].min()
    norm = LogNorm(runs["width"].min(), runs["width"].max())
    for j, (family, param) in enumerate(pairs):
        ax = axes[0, j]
        mine = runs[(runs["family"] == family) & (runs["parameterization"] == param)]
        over = mine[(mine["n_params"] >= mine["n_outputs"]) & (mine["seed"] == seed)]
        for run in over.sort_values("width").itertuples():
            path = trajectories[trajectories["run_id"] == run.run_id]
            colour = sns.color_palette("viridis", as_cmap=True)(norm(run.width))
            ax.plot(path["step"], at_floor(path["loss"]), color=colour, linewidth=1.4, label=f"width {run.width}")
            if run.rate_status != "not applicable":
                ax.plot(path["step"], path["rate_bound"], color=colour, linewidth=1.1, linestyle="--")
        ax.set_yscale("log")
        ax.set_title(panel_title(family, param))
        ax.set_xlabel("training step k")
        ax.set_ylabel("loss (solid), rate bound (dashed)" if j == 0 else "")
        ax.grid(True, alpha=0.3)
        note = f"rate verdict: {_counts(mine['rate_status'])} runs"
        if "rate_applies" in mine and not mine["rate_applies"].astype(object).eq(True).all():
            note += "\nthe recipe: " + "\n".join(textwrap.wrap(gd_reasons(mine, "rate"), 60))
        ax.text(0.03, 0.03, note, transform=ax.transAxes, fontsize=7, va="bottom",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
        if len(over):
            ax.legend(fontsize=7, loc="upper right", title=f"seed {seed}, d ≥ n·m", title_fontsize=7)
    return fig


def loss_predictors(sweep: SweepResult) -> Figure:
    """Draw the final training loss against width with every predictor that applies.

    The predictors of :mod:`~diagnostics.width.predictors`: a priori ones dashed, post hoc ones dotted.
    """
    runs = sweep.runs
    pairs = panels(runs)
    thresholds = counting_threshold(runs)
    fig, axes = grid(pairs, nrows=1, height=4.0, sharey=True)
    for j, (family, param) in enumerate(pairs):
        ax, last = axes[0, j], j == len(pairs) - 1
        sub = runs[(runs["family"] == family) & (runs["parameterization"] == param)]
        missing = []
        for column, name in PREDICTORS.items():
            values = prediction(sub, column)
            if values.isna().all():
                missing.append(name)
                continue
            sns.lineplot(x=sub["width"], y=at_floor(values.clip(upper=1e3)), color=_PREDICTOR_COLOURS[column],
                         estimator="mean", errorbar=None, marker="s", markersize=4, linewidth=1.2,
                         linestyle="--" if KINDS[column] == "a priori" else ":", ax=ax,
                         label=f"{name} ({KINDS[column]})" if last else None)
        sns.lineplot(x=sub["width"], y=at_floor(sub["final_loss"]), color="black", estimator="mean", errorbar="sd",
                     marker="o", linewidth=2.2, ax=ax, label="final training loss L_T" if last else None)
        if missing:
            ax.text(0.03, 0.03, "not applicable here:\n" + "\n".join(missing), transform=ax.transAxes, fontsize=7,
                    va="bottom", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
        threshold_line(ax, thresholds.get(family), label=last)
        ax.set_yscale("log")
        ax.set_title(panel_title(family, param))
        ax.set_ylabel("loss at the end of training" if j == 0 else "")
        width_axis(ax, sub["width"])
    legend_right(fig, axes[0, -1])
    return fig


def representation_gain(sweep: SweepResult) -> Figure:
    """Draw the gain ``L_lin(T)/L_T`` of representation learning against width, one line per parameterisation."""
    runs = sweep.runs
    if pd.to_numeric(runs["linearised_loss"], errors="coerce").isna().all():
        return placeholder("Not applicable: the dynamics linearised at K_0 are those of full-batch gradient descent "
                           f"on the squared loss at a stable step, and these runs are not "
                           f"({gd_reasons(runs, 'linearised')}).")
    gains = with_labels(gain_table(runs))
    converged = runs[linearised_converged(runs)]
    per_seed = with_labels(converged.assign(gain=converged["linearised_loss"] / converged["final_loss"]))
    families = sorted(gains["family"].unique())
    thresholds = counting_threshold(runs)
    fig, axes = grid(families, nrows=1, height=3.6, sharey=True)
    for j, family in enumerate(families):
        ax, last = axes[0, j], j == len(families) - 1
        width_lines(ax, per_seed[per_seed["family"] == family], "gain", legend=last)
        ax.axhline(1.0, color="black", linewidth=1, label="no gain: the initial kernel's dynamics" if last else None)
        threshold_line(ax, thresholds.get(family), label=last)
        ax.set_yscale("log")
        width_axis(ax, gains.loc[gains["family"] == family, "width"])
    family_titles(axes, families, ["gain L_lin(T) / L_T"])
    legend_right(fig, axes[0, -1])
    return fig
