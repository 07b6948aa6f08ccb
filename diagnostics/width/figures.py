"""Figures of a width-scaling report (theory/width.md), drawn with seaborn and saved as PNG and SVG.

Every figure has one column per model family; lines are the mean over seeds and bands one standard
deviation; NTK and mean-field runs have one colour each; the counting threshold ``d = n·m`` of S1
is the dashed vertical line. Quantities that reach exactly zero (the alignment residual and the
(I2) floor once ``rank J = n·m``) are drawn at :data:`FLOOR` on logarithmic axes.

Figures are :class:`matplotlib.figure.Figure` objects built without ``pyplot``, so making them
changes no global state (they still display in a notebook).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from .analysis import counting_threshold, movement_slopes

__all__ = ["FIGURES", "FLOOR", "FigureFile", "make_figures"]

#: Values below this are drawn at it on logarithmic axes.
FLOOR = 1e-8
PALETTE = {"NTK": "#1f66b3", "mean-field": "#d95f02", "standard": "#6b6b6b"}
LABELS = {"ntk": "NTK", "mf": "mean-field", "standard": "standard"}
WIDTH_LABEL = "width (hidden units / channels)"
_THRESHOLD_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.2}


@dataclass(frozen=True)
class FigureFile:
    """A saved figure: its file stem, title, caption and paths."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path


# ---------------------------------------------------------------------------------------------
# Helpers


def _prepare(runs: pd.DataFrame) -> pd.DataFrame:
    out = runs.copy()
    out["parameterisation"] = out["parameterization"].map(LABELS)
    return out


def _grid(families: list[str], nrows: int = 1, height: float = 3.6, sharey: str | bool = "row"):
    ncols = len(families)
    fig = Figure(figsize=(4.6 * ncols + 1.4, height * nrows), layout="constrained", dpi=150)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _width_axis(ax: Axes, widths) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(w) for w in widths))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
    ax.set_xlabel(WIDTH_LABEL)
    ax.grid(True, which="major", alpha=0.3)


def _threshold(ax: Axes, width: float | None, label: bool = True) -> None:
    if width is None:
        return
    ax.axvline(width, **_THRESHOLD_STYLE, label="d = n·m (S1)" if label else None)


def _lines(ax: Axes, data: pd.DataFrame, y: str, legend: bool, **kwargs) -> None:
    hue_order = [p for p in PALETTE if p in set(data["parameterisation"])]
    sns.lineplot(
        data=data, x="width", y=y, hue="parameterisation", hue_order=hue_order, palette=PALETTE,
        estimator="mean", errorbar="sd", marker="o", ax=ax, legend=legend, **kwargs,
    )


def _floor(values: pd.Series) -> pd.Series:
    return values.clip(lower=FLOOR)


def _legend_right(fig: Figure, ax: Axes) -> None:
    """Move the legend of ``ax`` outside, to the right of the figure."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside right center", frameon=False)


def _titles(axes, families: list[str], row_labels: list[str] | None = None) -> None:
    for j, family in enumerate(families):
        axes[0, j].set_title(f"{family.upper()}")
    if row_labels:
        for i, label in enumerate(row_labels):
            axes[i, 0].set_ylabel(label)


# ---------------------------------------------------------------------------------------------
# The figures: each takes (runs, records) and returns a Figure


def residual_width(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw the final alignment residual ``‖(I−P)Y‖/‖Y‖`` against width (D1, S1)."""
    data, families = _prepare(runs), sorted(runs["family"].unique())
    data["residual"] = _floor(data["final_residual"])
    thresholds = counting_threshold(runs)
    fig, axes = _grid(families)
    for j, family in enumerate(families):
        ax = axes[0, j]
        _lines(ax, data[data["family"] == family], "residual", legend=j == len(families) - 1)
        _threshold(ax, thresholds.get(family), label=j == len(families) - 1)
        ax.set_yscale("log")
        _width_axis(ax, data["width"][data["family"] == family])
    _titles(axes, families, ["alignment residual ‖(I−P)Y‖ / ‖Y‖\n(end of training)"])
    _legend_right(fig, axes[0, -1])
    return fig


def residual_training(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw the alignment residual over training, one line per width (mean over seeds)."""
    data = records.copy()
    data["residual"] = _floor(data["residual"])
    families = sorted(data["family"].unique())
    params = [p for p in LABELS if p in set(data["parameterization"])]
    fig, axes = _grid(families, nrows=len(params), height=3.0)
    norm = LogNorm(data["width"].min(), data["width"].max())
    for i, param in enumerate(params):
        for j, family in enumerate(families):
            ax = axes[i, j]
            sub = data[(data["family"] == family) & (data["parameterization"] == param)]
            sns.lineplot(data=sub, x="step", y="residual", hue="width", palette="viridis", hue_norm=norm,
                         errorbar=None, marker="o", markersize=4, ax=ax, legend="full")
            ax.set_yscale("log")
            ax.set_title(f"{family.upper()}, {LABELS[param]}")
            ax.set_xlabel("training step")
            ax.set_ylabel(f"residual ({LABELS[param]})" if j == 0 else "")
            ax.grid(True, alpha=0.3)
            ax.legend(title="width", fontsize=7, title_fontsize=8, ncols=2, loc="lower left")
    return fig


def rank(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw ``rank J/(n·m)`` against width, the counting bound ``min(1, d/(n·m))`` and threshold (S1)."""
    data, families = _prepare(runs), sorted(runs["family"].unique())
    data["rank_fraction"] = data["final_rank"] / data["n_outputs"]
    thresholds = counting_threshold(runs)
    fig, axes = _grid(families)
    for j, family in enumerate(families):
        ax, sub = axes[0, j], data[data["family"] == family]
        last = j == len(families) - 1
        _lines(ax, sub, "rank_fraction", legend=last)
        bound = sub.groupby("width")[["n_params", "n_outputs"]].first()
        ax.plot(bound.index, np.minimum(1.0, bound["n_params"] / bound["n_outputs"]), color="black",
                linestyle=":", linewidth=1.5, label="counting bound min(1, d/(n·m))" if last else None)
        _threshold(ax, thresholds.get(family), label=last)
        ax.set_ylim(0, 1.05)
        _width_axis(ax, sub["width"])
    _titles(axes, families, ["rank J / (n·m)  (end of training)"])
    _legend_right(fig, axes[0, -1])
    return fig


def loss_lower_bound(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw the training loss and its (I2) floor ``(1/2n)‖(I−P)Y‖²``: against width, every record."""
    data, families = _prepare(runs), sorted(runs["family"].unique())
    thresholds = counting_threshold(runs)
    long = pd.concat([
        data.assign(quantity="training loss L", value=_floor(data["final_loss"])),
        data.assign(quantity="(I2) floor (1/2n)‖(I−P)Y‖²", value=_floor(data["final_loss_lower_bound"])),
    ])
    fig, axes = _grid(families, nrows=2, height=3.6, sharey=False)
    points = records.assign(
        floor=_floor(records["loss_lower_bound"]), loss=_floor(records["loss"]),
        parameterisation=records["parameterization"].map(LABELS),
    )
    norm = LogNorm(points["width"].min(), points["width"].max())
    for j, family in enumerate(families):
        last = j == len(families) - 1
        ax = axes[0, j]
        sub = long[long["family"] == family]
        hue_order = [p for p in PALETTE if p in set(sub["parameterisation"])]
        sns.lineplot(data=sub, x="width", y="value", hue="parameterisation", hue_order=hue_order,
                     palette=PALETTE, style="quantity", estimator="mean", errorbar="sd", marker="o", ax=ax,
                     legend=last)
        _threshold(ax, thresholds.get(family), label=last)
        ax.set_yscale("log")
        ax.set_ylabel("end of training" if j == 0 else "")
        _width_axis(ax, sub["width"])
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
    _titles(axes, families)
    _legend_right(fig, axes[0, -1])
    return fig


def bound_ratio(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw the (I3) ratio ``L / (½‖∇L‖B)`` against width: final, and largest over aligned records."""
    data, families = _prepare(runs), sorted(runs["family"].unique())
    aligned = records[records["aligned"].astype(bool)]
    worst = aligned.groupby("run_id")["bound_ratio"].max().rename("max_aligned_ratio")
    data = data.merge(worst, left_on="run_id", right_index=True, how="left")
    thresholds = counting_threshold(runs)
    fig, axes = _grid(families, nrows=2, height=3.3)
    rows = [("final_bound_ratio", "bound ratio L / (½‖∇L‖B)\n(end of training)"),
            ("max_aligned_ratio", "largest ratio over the\nrecords where D1 holds")]
    for i, (column, label) in enumerate(rows):
        for j, family in enumerate(families):
            ax, sub = axes[i, j], data[data["family"] == family].dropna(subset=[column])
            last = i == 0 and j == len(families) - 1
            if not sub.empty:
                _lines(ax, sub, column, legend=last)
            else:
                ax.text(0.5, 0.5, "D1 held at no record", transform=ax.transAxes, ha="center", va="center",
                        bbox={"facecolor": "white", "edgecolor": "0.7"})
            ax.axhline(1.0, color="black", linewidth=1,
                       label="(I3) bound: ratio ≤ 1 when D1 holds" if last else None)
            threshold = thresholds.get(family)
            if threshold is not None:
                ax.axvspan(data["width"].min() / 2, threshold, color="0.9", zorder=0,
                           label="d < n·m: D1 fails generically" if last else None)
            _threshold(ax, threshold, label=last)
            ax.set_yscale("log")
            ax.set_ylabel(label if j == 0 else "")
            _width_axis(ax, data["width"][data["family"] == family])
    _titles(axes, families)
    _legend_right(fig, axes[0, -1])
    return fig


def kernel_movement(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw the kernel movement ``‖K_T − K_0‖_F/‖K_0‖_F`` and parameter movement against width (S4)."""
    data, families = _prepare(runs), sorted(runs["family"].unique())
    thresholds = counting_threshold(runs)
    fig, axes = _grid(families, nrows=2, height=3.4, sharey=False)
    rows = [("final_kernel_movement_init", "kernel movement\n‖K_T − K_0‖_F / ‖K_0‖_F"),
            ("final_param_movement", "parameter movement\n‖θ_T − θ_0‖ / ‖θ_0‖")]
    for i, (column, label) in enumerate(rows):
        slopes = movement_slopes(runs, column)
        for j, family in enumerate(families):
            ax, sub = axes[i, j], data[data["family"] == family]
            last = i == 0 and j == len(families) - 1
            _lines(ax, sub, column, legend=last)
            notes = []
            for r in slopes[slopes["family"] == family].itertuples():
                w = np.array([float(x) for x in r.widths.split(", ")])
                ax.plot(w, np.exp(r.intercept) * w**r.slope, color=PALETTE[LABELS[r.parameterization]],
                        linestyle=":", linewidth=1.5)
                notes.append(f"{LABELS[r.parameterization]}: slope {r.slope:+.2f}")
            ax.text(0.03, 0.04, "\n".join(notes), transform=ax.transAxes, fontsize=8, va="bottom",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
            _threshold(ax, thresholds.get(family), label=last)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylabel(label if j == 0 else "")
            _width_axis(ax, sub["width"])
    _titles(axes, families)
    _legend_right(fig, axes[0, -1])
    return fig


def test_performance(runs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """Draw the test accuracy (classification) or test loss (regression) against width."""
    data, families = _prepare(runs), sorted(runs["family"].unique())
    classification = "test_accuracy" in data and data["test_accuracy"].notna().any()
    column = "test_accuracy" if classification else "test_loss"
    thresholds = counting_threshold(runs)
    fig, axes = _grid(families)
    for j, family in enumerate(families):
        ax, sub = axes[0, j], data[data["family"] == family]
        last = j == len(families) - 1
        _lines(ax, sub, column, legend=last)
        _threshold(ax, thresholds.get(family), label=last)
        if not classification:
            ax.set_yscale("log")
        _width_axis(ax, sub["width"])
    _titles(axes, families, ["test accuracy" if classification else "test loss (1/2n)‖f − Y‖²"])
    _legend_right(fig, axes[0, -1])
    return fig


#: ``(name, title, function, caption)`` of every figure, in report order.
FIGURES: list[tuple[str, str, Callable[[pd.DataFrame, pd.DataFrame], Figure], str]] = [
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
     "training, log-log; dotted lines are the fitted power laws over the over-parameterised widths."),
    ("test_performance", "Test performance against width", test_performance,
     "Test accuracy (classification) or test loss (regression) at the end of training; mean ± sd over "
     "seeds."),
]


def make_figures(runs: pd.DataFrame, records: pd.DataFrame, folder: str | Path) -> list[FigureFile]:
    """Draw every figure of :data:`FIGURES` and save it as ``<folder>/<name>.png`` and ``.svg``.

    Parameters
    ----------
    runs, records
        The tables of :class:`~diagnostics.width.sweep.SweepResult` (finished runs only).
    folder
        Output folder (created).

    Returns
    -------
    list of FigureFile
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    with sns.axes_style("ticks"), sns.plotting_context("notebook", font_scale=0.85):
        for name, title, draw, caption in FIGURES:
            fig = draw(runs, records)
            fig.suptitle(title, fontsize=12)
            png, svg = folder / f"{name}.png", folder / f"{name}.svg"
            fig.savefig(png)
            fig.savefig(svg)
            saved.append(FigureFile(name, title, caption, png, svg))
    return saved
