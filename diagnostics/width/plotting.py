"""Shared drawing helpers of the width-report figures (seaborn on :class:`matplotlib.figure.Figure`, no ``pyplot``).

Conventions: one column per model family (or per family and parameterisation); lines are the mean over
seeds and bands one standard deviation; NTK and mean-field have one colour each, any other parameterisation
label one of :data:`EXTRA_COLOURS`; the counting threshold ``d = n·m`` of S1 is the dashed vertical line; quantities
that reach exactly zero are drawn at :data:`FLOOR` on logarithmic axes. A figure whose data the study does not have
(a test split, per-step losses, statements that do not apply to its recipe) is drawn as a :func:`placeholder` that
says why.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

__all__ = [
    "EXTRA_COLOURS", "FLOOR", "LABELS", "PALETTE", "WIDTH_LABEL", "FigureFile", "Placeholder", "at_floor", "colour",
    "family_titles", "grid", "hue_order", "legend_right", "param_label", "panel_title", "panels", "parameterizations",
    "placeholder", "threshold_line", "width_axis", "width_lines", "with_labels",
]

#: Values below this are drawn at it on logarithmic axes.
FLOOR = 1e-8
PALETTE = {"NTK": "#1f66b3", "mean-field": "#d95f02", "standard": "#6b6b6b"}
LABELS = {"ntk": "NTK", "mf": "mean-field", "standard": "standard"}
#: Colours of other parameterisation labels, in order of appearance.
EXTRA_COLOURS = ("#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d")
WIDTH_LABEL = "width (hidden units / channels)"
THRESHOLD_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 1.2}


@dataclass(frozen=True)
class FigureFile:
    """A saved figure: its file stem, title, caption and paths."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path


def param_label(parameterization: str) -> str:
    """Return the legend's word for a parameterisation (``"ntk"`` → ``"NTK"``; other labels as they are)."""
    return LABELS.get(parameterization, parameterization)


def parameterizations(table: pd.DataFrame) -> list[str]:
    """List the parameterisations of a table: the known ones in legend order, then the others sorted."""
    present = set(table["parameterization"])
    return [p for p in LABELS if p in present] + sorted(present - set(LABELS))


def colour(word: str, words: list[str] | None = None) -> str:
    """Return the colour of a parameterisation's legend word (:data:`PALETTE`, else by its place among ``words``)."""
    if word in PALETTE:
        return PALETTE[word]
    others = [w for w in (words or [word]) if w not in PALETTE]
    return EXTRA_COLOURS[others.index(word) % len(EXTRA_COLOURS)] if word in others else EXTRA_COLOURS[0]


def hue_order(data: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Return the legend words of ``data``'s ``parameterisation`` column in order, and their colours."""
    words = [param_label(p) for p in parameterizations(data)]
    return words, {w: colour(w, words) for w in words}


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with a ``parameterisation`` column in words (the legend's labels)."""
    out = runs.copy()
    out["parameterisation"] = out["parameterization"].map(param_label)
    return out


class Placeholder(Figure):
    """A figure that says why it has nothing to draw (its caption in the report is the reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(figsize=(7.0, 1.8), layout="constrained", dpi=150)
        self.reason = reason
        ax = self.subplots()
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(reason, 90)), ha="center", va="center", fontsize=10)
        ax.set_axis_off()


def placeholder(reason: str) -> Placeholder:
    """Return a figure that says why it has nothing to draw."""
    return Placeholder(reason)


def grid(families: list, nrows: int = 1, height: float = 3.6, sharey: str | bool = "row") -> tuple[Figure, np.ndarray]:
    """Return a constrained-layout figure with one column per entry of ``families`` and ``nrows`` rows of axes."""
    ncols = len(families)
    fig = Figure(figsize=(4.6 * ncols + 1.4, height * nrows), layout="constrained", dpi=150)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def width_axis(ax: Axes, widths) -> None:
    """Make ``ax``'s x axis the widths: log base 2, one labelled tick per measured width."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(w) for w in widths))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
    ax.set_xlabel(WIDTH_LABEL)
    ax.grid(True, which="major", alpha=0.3)


def threshold_line(ax: Axes, width: float | None, label: bool = True) -> None:
    """Draw the width where ``d = n·m`` (S1) as a dashed vertical line (nothing when ``None``)."""
    if width is None:
        return
    ax.axvline(width, **THRESHOLD_STYLE, label="d = n·m (S1)" if label else None)


def width_lines(ax: Axes, data: pd.DataFrame, y: str, legend: bool, **kwargs) -> None:
    """Draw ``y`` against width, one line per parameterisation: mean over seeds, band ± one sd (nothing if empty)."""
    if data.empty:
        return
    order, palette = hue_order(data)
    sns.lineplot(
        data=data, x="width", y=y, hue="parameterisation", hue_order=order, palette=palette,
        estimator="mean", errorbar="sd", marker="o", ax=ax, legend=legend, **kwargs,
    )


def at_floor(values: pd.Series) -> pd.Series:
    """Clip at :data:`FLOOR`, so zeros show on logarithmic axes."""
    return values.clip(lower=FLOOR)


def legend_right(fig: Figure, ax: Axes) -> None:
    """Move the legend of ``ax`` outside, to the right of the figure."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="outside right center", frameon=False)


def family_titles(axes, families: list[str], row_labels: list[str] | None = None) -> None:
    """Title the columns by family and label the rows' y axes."""
    for j, family in enumerate(families):
        axes[0, j].set_title(f"{family.upper()}")
    if row_labels:
        for i, label in enumerate(row_labels):
            axes[i, 0].set_ylabel(label)


def panels(table: pd.DataFrame) -> list[tuple[str, str]]:
    """List the ``(family, parameterization)`` pairs of a table: families sorted, parameterisations in legend order."""
    order = {p: i for i, p in enumerate(parameterizations(table))}
    pairs = set(zip(table["family"], table["parameterization"], strict=True))
    return sorted(pairs, key=lambda fp: (fp[0], order[fp[1]]))


def panel_title(family: str, parameterization: str) -> str:
    """``"MLP, NTK"``."""
    return f"{family.upper()}, {param_label(parameterization)}"
