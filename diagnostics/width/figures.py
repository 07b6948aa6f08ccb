"""Figures of a width-scaling report (``theory/width.md``), drawn with seaborn and saved as PNG and SVG.

The figures of S1–S4 are here; those of the loss predictors and the rate are in
:mod:`~diagnostics.width.figures_predictors`, those of the field's standard evidence (coordinate check, kernel
dynamics, per-layer alignment, learning-rate transfer) in :mod:`~diagnostics.width.figures_evidence`; the
conventions they share are in :mod:`~diagnostics.width.plotting`.

Figures are :class:`matplotlib.figure.Figure` objects built without ``pyplot``, so making them
changes no global state (they still display in a notebook).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .analysis import LEVEL, NOT_JUDGED, counting_threshold, movement_slopes
from .executors import local
from .figures_evidence import coordinate_check, kernel_dynamics, layer_alignment
from .figures_predictors import certificate, loss_predictors, rate_bound, representation_gain
from .plotting import (
    FLOOR,
    FigureFile,
    Placeholder,
    at_floor,
    colour,
    family_titles,
    grid,
    hue_order,
    legend_right,
    param_label,
    parameterizations,
    placeholder,
    threshold_line,
    width_axis,
    width_lines,
    with_labels,
)
from .sweep import SweepResult

__all__ = ["FIGURES", "FLOOR", "FigureFile", "draw_figures", "make_figures", "save_figure"]


# ---------------------------------------------------------------------------------------------
# The figures: each takes the SweepResult and returns a Figure


def residual_width(sweep: SweepResult) -> Figure:
    """Draw the final alignment residual ``‖(I−P)Y‖/‖Y‖`` against width (D1, S1)."""
    runs = sweep.runs
    data, families = with_labels(runs), sorted(runs["family"].unique())
    data["residual"] = at_floor(data["final_residual"])
    thresholds = counting_threshold(runs)
    fig, axes = grid(families)
    for j, family in enumerate(families):
        ax = axes[0, j]
        width_lines(ax, data[data["family"] == family], "residual", legend=j == len(families) - 1)
        threshold_line(ax, thresholds.get(family), label=j == len(families) - 1)
        ax.set_yscale("log")
        width_axis(ax, data["width"][data["family"] == family])
    family_titles(axes, families, ["alignment residual ‖(I−P)Y‖ / ‖Y‖\n(end of training)"])
    legend_right(fig, axes[0, -1])
    return fig


def residual_training(sweep: SweepResult) -> Figure:
    """Draw the alignment residual over training, one line per width (mean over seeds)."""
    records = sweep.records
    data = records.copy()
    data["residual"] = at_floor(data["residual"])
    families = sorted(data["family"].unique())
    params = parameterizations(data)
    fig, axes = grid(families, nrows=len(params), height=3.0)
    norm = LogNorm(data["width"].min(), data["width"].max())
    for i, param in enumerate(params):
        for j, family in enumerate(families):
            ax = axes[i, j]
            sub = data[(data["family"] == family) & (data["parameterization"] == param)]
            sns.lineplot(data=sub, x="step", y="residual", hue="width", palette="viridis", hue_norm=norm,
                         errorbar=None, marker="o", markersize=4, ax=ax, legend="full")
            ax.set_yscale("log")
            ax.set_title(f"{family.upper()}, {param_label(param)}")
            ax.set_xlabel("training step")
            ax.set_ylabel(f"residual ({param_label(param)})" if j == 0 else "")
            ax.grid(True, alpha=0.3)
            ax.legend(title="width", fontsize=7, title_fontsize=8, ncols=2, loc="lower left")
    return fig


def rank(sweep: SweepResult) -> Figure:
    """Draw ``rank J/(n·m)`` against width, the counting bound ``min(1, d/(n·m))`` and threshold (S1)."""
    runs = sweep.runs
    data, families = with_labels(runs), sorted(runs["family"].unique())
    data["rank_fraction"] = data["final_rank"] / data["n_outputs"]
    thresholds = counting_threshold(runs)
    fig, axes = grid(families)
    for j, family in enumerate(families):
        ax, sub = axes[0, j], data[data["family"] == family]
        last = j == len(families) - 1
        width_lines(ax, sub, "rank_fraction", legend=last)
        bound = sub.groupby("width")[["n_params", "n_outputs"]].first()
        ax.plot(bound.index, np.minimum(1.0, bound["n_params"] / bound["n_outputs"]), color="black",
                linestyle=":", linewidth=1.5, label="counting bound min(1, d/(n·m))" if last else None)
        threshold_line(ax, thresholds.get(family), label=last)
        ax.set_ylim(0, 1.05)
        width_axis(ax, sub["width"])
    family_titles(axes, families, ["rank J / (n·m)  (end of training)"])
    legend_right(fig, axes[0, -1])
    return fig


def loss_lower_bound(sweep: SweepResult) -> Figure:
    """Draw the training loss and its (I2) floor ``(1/2n)‖(I−P)Y‖²``: against width, every record (squared loss)."""
    runs, records = sweep.runs, sweep.records
    if "measure_loss" in runs:
        runs = runs[runs["measure_loss"] == "mse"]
        records = records[records["run_id"].isin(runs["run_id"])]
    if runs.empty:
        return placeholder("Not applicable: the (I2) floor (1/2n)‖(I−P)Y‖² bounds the squared loss, and these runs "
                           "are measured in cross-entropy; their (I4) bound is in the bound-ratio figure.")
    data, families = with_labels(runs), sorted(runs["family"].unique())
    thresholds = counting_threshold(runs)
    long = pd.concat([
        data.assign(quantity="training loss L", value=at_floor(data["final_loss"])),
        data.assign(quantity="(I2) floor (1/2n)‖(I−P)Y‖²", value=at_floor(data["final_loss_lower_bound"])),
    ])
    fig, axes = grid(families, nrows=2, height=3.6, sharey=False)
    points = records.assign(
        floor=at_floor(records["loss_lower_bound"]), loss=at_floor(records["loss"]),
        parameterisation=records["parameterization"].map(param_label),
    )
    norm = LogNorm(points["width"].min(), points["width"].max())
    for j, family in enumerate(families):
        last = j == len(families) - 1
        ax = axes[0, j]
        sub = long[long["family"] == family]
        order, palette = hue_order(sub)
        sns.lineplot(data=sub, x="width", y="value", hue="parameterisation", hue_order=order,
                     palette=palette, style="quantity", estimator="mean", errorbar="sd", marker="o", ax=ax,
                     legend=last)
        threshold_line(ax, thresholds.get(family), label=last)
        ax.set_yscale("log")
        ax.set_ylabel("end of training" if j == 0 else "")
        width_axis(ax, sub["width"])
        ax = axes[1, j]
        sub = points[points["family"] == family]
        sns.scatterplot(data=sub, x="floor", y="loss", hue="width", palette="viridis", hue_norm=norm,
                        style="parameterisation", s=18, alpha=0.8, ax=ax, legend="full")
        low = min(sub["floor"].min(), sub["loss"].min())
        high = max(sub["floor"].max(), sub["loss"].max())
        ax.plot([low, high], [low, high], color="black", linewidth=1, label="L = floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("(I2) floor (1/2n)‖(I−P)Y‖²  (every record)")
        ax.set_ylabel("training loss L" if j == 0 else "")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncols=2, loc="lower right", framealpha=0.9)
    family_titles(axes, families)
    legend_right(fig, axes[0, -1])
    return fig


def bound_ratio(sweep: SweepResult) -> Figure:
    """Draw the (I3) ratio ``L / (½‖∇L‖B)`` against width: final, and largest over aligned records."""
    runs, records = sweep.runs, sweep.records
    data, families = with_labels(runs), sorted(runs["family"].unique())
    aligned = records[records["aligned"].astype(bool)]
    worst = aligned.groupby("run_id")["bound_ratio"].max().rename("max_aligned_ratio")
    data = data.merge(worst, left_on="run_id", right_index=True, how="left")
    thresholds = counting_threshold(runs)
    fig, axes = grid(families, nrows=2, height=3.3)
    rows = [("final_bound_ratio", "bound ratio L / (½‖∇L‖B)\n(end of training)"),
            ("max_aligned_ratio", "largest ratio over the\nrecords where D1 holds")]
    for i, (column, label) in enumerate(rows):
        for j, family in enumerate(families):
            ax, sub = axes[i, j], data[data["family"] == family].dropna(subset=[column])
            last = i == 0 and j == len(families) - 1
            if not sub.empty:
                width_lines(ax, sub, column, legend=last)
            else:
                ax.text(0.5, 0.5, "D1 held at no record", transform=ax.transAxes, ha="center", va="center",
                        bbox={"facecolor": "white", "edgecolor": "0.7"})
            ax.axhline(1.0, color="black", linewidth=1,
                       label="(I3) bound: ratio ≤ 1 when D1 holds" if last else None)
            threshold = thresholds.get(family)
            if threshold is not None:
                ax.axvspan(data["width"].min() / 2, threshold, color="0.9", zorder=0,
                           label="d < n·m: D1 fails generically" if last else None)
            threshold_line(ax, threshold, label=last)
            ax.set_yscale("log")
            ax.set_ylabel(label if j == 0 else "")
            width_axis(ax, data["width"][data["family"] == family])
    family_titles(axes, families)
    legend_right(fig, axes[0, -1])
    return fig


def kernel_movement(sweep: SweepResult) -> Figure:
    """Draw the kernel movement ``‖K_T − K_0‖_F/‖K_0‖_F`` and parameter movement against width (S4)."""
    runs = sweep.runs
    data, families = with_labels(runs), sorted(runs["family"].unique())
    thresholds = counting_threshold(runs)
    fig, axes = grid(families, nrows=2, height=3.4, sharey=False)
    rows = [("final_kernel_movement_init", "kernel movement\n‖K_T − K_0‖_F / ‖K_0‖_F"),
            ("final_param_movement", "parameter movement\n‖θ_T − θ_0‖ / ‖θ_0‖")]
    for i, (column, label) in enumerate(rows):
        slopes = movement_slopes(runs, column)
        for j, family in enumerate(families):
            ax, sub = axes[i, j], data[data["family"] == family]
            last = i == 0 and j == len(families) - 1
            width_lines(ax, sub, column, legend=last)
            notes = []
            for r in slopes[slopes["family"] == family].itertuples():
                w = np.array([float(x) for x in r.widths.split(", ")])
                words = [param_label(p) for p in parameterizations(sub)]
                ax.plot(w, np.exp(r.intercept) * w**r.slope, color=colour(param_label(r.parameterization), words),
                        linestyle=":", linewidth=1.5)
                verdict = "no expectation, not judged" if r.status == NOT_JUDGED else f"{r.expect}: {r.status}"
                notes.append(f"{param_label(r.parameterization)}: slope {r.slope:+.2f} [{r.low:+.2f}, {r.high:+.2f}], "
                             f"{verdict}")
            ax.text(0.03, 0.04, "\n".join(notes), transform=ax.transAxes, fontsize=8, va="bottom",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
            threshold_line(ax, thresholds.get(family), label=last)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylabel(label if j == 0 else "")
            width_axis(ax, sub["width"])
    family_titles(axes, families)
    legend_right(fig, axes[0, -1])
    return fig


def test_performance(sweep: SweepResult) -> Figure:
    """Draw the test accuracy (classification) or test loss (regression) against width."""
    runs = sweep.runs
    data, families = with_labels(runs), sorted(runs["family"].unique())
    classification = "test_accuracy" in data and data["test_accuracy"].notna().any()
    column = "test_accuracy" if classification else "test_loss"
    if column not in data or data[column].isna().all():
        return placeholder("No test split: the study was given no test data (test=), so there is no test metric.")
    thresholds = counting_threshold(runs)
    fig, axes = grid(families)
    for j, family in enumerate(families):
        ax, sub = axes[0, j], data[data["family"] == family]
        last = j == len(families) - 1
        width_lines(ax, sub, column, legend=last)
        threshold_line(ax, thresholds.get(family), label=last)
        if not classification:
            ax.set_yscale("log")
        width_axis(ax, sub["width"])
    family_titles(axes, families, ["test accuracy" if classification else "test loss (1/2n)‖f − Y‖²"])
    legend_right(fig, axes[0, -1])
    return fig


#: ``(name, title, function, caption)`` of every figure, in report order.
FIGURES: list[tuple[str, str, Callable[[SweepResult], Figure], str]] = [
    ("residual_width", "Alignment residual against width", residual_width,
     "Final alignment residual ‖(I−P)Y‖/‖Y‖ of D1 (theory/alignment.md#d1); mean ± sd over seeds. The residual is 0 "
     f"once rank J = n·m (drawn at {FLOOR:g})."),
    ("residual_training", "Alignment residual over training", residual_training,
     "Alignment residual at every record, one line per width (mean over seeds)."),
    ("rank", "Rank of the Jacobian against width (S1)", rank,
     "rank J / (n·m) at the end of training; the dotted line is the counting bound min(1, d/(n·m)) and the "
     "dashed line the width where d = n·m."),
    ("loss_lower_bound", "Training loss against its (I2) lower bound", loss_lower_bound,
     "Top: final training loss (solid) and its floor (1/2n)‖(I−P)Y‖² (dashed) against width. Bottom: every "
     "record; (I2) puts every point on or above the diagonal."),
    ("bound_ratio", "Gradient-domination bound ratio (I3)", bound_ratio,
     "Top: final ratio L / (½‖∇L‖B). Bottom: its largest value over the records where D1 holds, where (I3) "
     "requires ≤ 1. Shaded: d < n·m."),
    ("kernel_movement", "Kernel and parameter movement against width (S4)", kernel_movement,
     "Relative movement of the empirical NTK and of the parameters from initialisation to the end of "
     "training, log-log; dotted lines are the fitted power laws over the over-parameterised widths, with the "
     f"{LEVEL:.0%} t-interval of the mean of the per-seed slopes and the S4 verdict "
     "(theory/width.md#s4-lazy-versus-rich)."),
    ("certificate", "Certificate B and least-norm ‖ν‖ against width (I3)", certificate,
     "B = ‖J⁺(f_X − Y)‖ controls the rate of (I3): its largest value over the records (B̄, solid) and at the end "
     "(dashed); ‖ν‖ = ‖J⁺Y‖ at the start (solid) and the end (dashed). Mean ± sd over seeds."),
    ("rate_bound", "Training loss against the gradient-descent rate bound (I3)", rate_bound,
     "Training loss at every step (solid) and the bound L_0/(1 + 4L_0τ_k/B̄²) of "
     "theory/results.md#gradient-descent-rate (dashed; τ_k the effective time, B̄ the largest measured B), for the "
     "over-parameterised widths of one seed; the bound is drawn only for runs where its premises were not "
     "observed to fail. The box counts the verdicts over all runs of the panel."),
    ("loss_predictors", "What predicted the final loss", loss_predictors,
     "Final training loss (black, mean ± sd over seeds) against the exact (I2) floor, the horizon floors of the "
     "initial and final kernels for the run's own step size and steps (the part of Y in eigen-directions with "
     "ηλT/n < 1, at any step; the directions with ηλ/n > 2 of a step beyond the stable step are its unstable "
     "part, named in the tables), the loss of the dynamics linearised at K_0, and the rate bound; zeros drawn at "
     f"{FLOOR:g}, predictions above 10³ (diverging linearised dynamics) at 10³."),
    ("representation_gain", "Gain of representation learning", representation_gain,
     "L_lin(T)/L_T: the loss the initial kernel's linearised dynamics reach in the same steps over the loss "
     "reached; 1 (black line) means the kernel's own learning added nothing. Mean ± sd over the seeds whose "
     "linearised dynamics converge (L_lin(T) ≤ L_0; runs with ηλ_max(K_0)/n > 2 in a direction of r_0 diverge)."),
    ("coordinate_check", "Coordinate check: layer outputs against width at steps 0–3", coordinate_check,
     "Mean |z_t| of every layer's output (rows 1 and 3) and mean |z_t − z_0| (rows 2 and 4) on the probe, in "
     "evaluation mode, at steps t = 0…3, against width, per parameterisation; flat in width when the "
     "parameterisation keeps every coordinate of order one. Mean over seeds."),
    ("kernel_dynamics", "Kernel velocity, distance to the end kernel and kernel–target alignment", kernel_dynamics,
     "Over training (log-spaced records, symmetric-log step axis), one line per width (mean over seeds): the "
     "relative change of K per step since the previous record, the relative distance to the final K, and "
     "the kernel–target alignment QᵀKQ/(‖K‖_F‖Q‖²)."),
    ("layer_alignment", "Per-layer alignment at the start and the end", layer_alignment,
     "K = Σ_g K_g over layers g: each layer's share of QᵀKQ (top) and the residual of Q outside the column "
     "space of its own Gram (bottom), at initialisation (dashed) and the end of training (solid); mean over "
     "seeds."),
    ("test_performance", "Test performance against width", test_performance,
     "Test accuracy (classification) or test loss (regression) at the end of training; mean ± sd over "
     "seeds."),
]


def draw_figures(sweep: SweepResult) -> dict[str, Figure]:
    """Draw every figure of :data:`FIGURES` (for a notebook), by name."""
    with sns.axes_style("ticks"), sns.plotting_context("notebook", font_scale=0.85):
        return {name: draw(sweep) for name, _, draw, _ in FIGURES}


def make_figures(sweep: SweepResult, folder: str | Path, *, jobs: int | None = None) -> list[FigureFile]:
    """Draw every figure of :data:`FIGURES` and save it as ``<folder>/<name>.png`` and ``.svg``.

    Parameters
    ----------
    sweep
        The tables of a sweep (finished runs only).
    folder
        Output folder (created).
    jobs
        Processes drawing the figures side by side (default: the CPUs available to this process; 1: in this
        process). Drawing and saving the fourteen figures of a large study takes about 20 s on one core. Like a
        sweep's local processes, they are spawned: a script that calls this needs the ``__main__`` guard.

    Returns
    -------
    list of FigureFile
        In the order of :data:`FIGURES`.
    """
    names = [name for name, *_ in FIGURES]
    drawn = dict(local(_save_task, folder, names, sweep, min(len(names), jobs or len(os.sched_getaffinity(0))), None))
    for outcome in drawn.values():
        if isinstance(outcome, BaseException):
            raise outcome
    return [drawn[name] for name in names]


def _save_task(folder: str | Path, name: str, sweep: SweepResult) -> FigureFile:
    """Draw the figure ``name`` of :data:`FIGURES` and save it (a task of :func:`~.executors.local`)."""
    _, title, draw, caption = next(entry for entry in FIGURES if entry[0] == name)
    with sns.axes_style("ticks"), sns.plotting_context("notebook", font_scale=0.85):
        return save_figure(draw(sweep), folder, name, title, caption)


def save_figure(fig: Figure, folder: str | Path, name: str, title: str, caption: str) -> FigureFile:
    """Title ``fig`` and save it as ``<folder>/<name>.png`` and ``.svg`` (``folder`` created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig.suptitle(title, fontsize=12)
    caption = f"Not drawn. {fig.reason}" if isinstance(fig, Placeholder) else caption
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    fig.savefig(png)
    fig.savefig(svg)
    return FigureFile(name, title, caption, png, svg)
