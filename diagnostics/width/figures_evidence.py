"""The field's standard evidence: coordinate check, kernel dynamics, per-layer alignment, learning-rate transfer.

- coordinate check (Yang & Hu 2021): mean ``|z|`` of every layer's output, and its change since step 0, against
  width at steps 0–3; flat in width when the parameterisation keeps every coordinate of order one;
- kernel velocity and distance to the end kernel over training (Fort et al. 2020), and kernel–target alignment
  ``QᵀKQ/(‖K‖_F‖Q‖²)`` over training (its early rise is the "silent alignment" of the kernel to the target);
- per-layer alignment: each layer's share of ``QᵀKQ`` and its own residual, at the start and the end;
- the loss against the base learning rate across widths (hyper-parameter transfer; :mod:`.lr_sweep`).
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .analysis import counting_threshold
from .plotting import (
    FLOOR,
    at_floor,
    grid,
    legend_right,
    panel_title,
    panels,
    param_label,
    parameterizations,
    placeholder,
    threshold_line,
    width_axis,
)
from .sweep import SweepResult

__all__ = ["MAX_COLUMNS", "MAX_LAYERS", "coordinate_check", "kernel_dynamics", "layer_alignment", "lr_transfer"]

#: Layers side by side in the coordinate check; a deeper model's continue in further rows.
MAX_COLUMNS = 6
#: Layers drawn one by one in a panel of the per-layer alignment; beyond, the smallest shares are summed.
MAX_LAYERS = 8


def coordinate_check(sweep: SweepResult) -> Figure:
    """Draw mean ``|z_t|`` and mean ``|z_t − z_0|`` per layer against width at steps 0–3.

    One column per layer, at most :data:`MAX_COLUMNS` side by side (a deeper model's layers continue in further
    blocks of rows); in each block, two rows per parameterisation: ``|z_t|`` and ``|z_t − z_0|``.
    """
    data = sweep.coordinates
    if data.empty:
        return placeholder("Not measured: these runs were read from histories, which hold the tracker's records "
                           "only, not the layer outputs of the first steps.")
    columns = [(family, layer) for family in sorted(data["family"].unique())
               for layer in data.loc[data["family"] == family, "layer"].unique()]
    params = parameterizations(data)
    rows = [(p, q) for p in params for q in ("mean_abs", "mean_abs_change")]
    blocks = [columns[k:k + MAX_COLUMNS] for k in range(0, len(columns), MAX_COLUMNS)]
    fig, axes = grid(blocks[0], nrows=len(rows) * len(blocks), height=2.6, sharey=False)
    thresholds = counting_threshold(sweep.runs)
    for b, block in enumerate(blocks):
        for i, (param, quantity) in enumerate(rows):
            for j in range(len(block), axes.shape[1]):
                axes[b * len(rows) + i, j].set_axis_off()
            for j, (family, layer) in enumerate(block):
                ax = axes[b * len(rows) + i, j]
                sub = data[(data["family"] == family) & (data["layer"] == layer) & (data["parameterization"] == param)]
                if quantity == "mean_abs_change":
                    sub = sub[sub["step"] > 0]
                sns.lineplot(data=sub.assign(value=at_floor(sub[quantity])), x="width", y="value", hue="step",
                             palette="crest", estimator="mean", errorbar=None, marker="o", markersize=4, ax=ax,
                             legend=b == 0 and i in (0, 1) and j == len(block) - 1)
                threshold_line(ax, thresholds.get(family), label=False)
                ax.set_yscale("log")
                width_axis(ax, sub["width"] if not sub.empty else data["width"])
                ax.set_title(f"{family.upper()} {layer}, {param_label(param)}", fontsize=9)
                ax.set_ylabel(("mean |z_t|" if quantity == "mean_abs" else "mean |z_t − z_0|") if j == 0 else "")
                if i < len(rows) - 1:
                    ax.set_xlabel("")
                if ax.get_legend() is not None:
                    ax.legend(title="step t", fontsize=7, title_fontsize=7, loc="best")
    return fig


def kernel_dynamics(sweep: SweepResult) -> Figure:
    """Draw kernel velocity per step, distance to the end kernel and kernel–target alignment over training."""
    records = sweep.records
    pairs = panels(records)
    quantities = [("kernel_velocity", "kernel velocity per step\n‖K_t − K_t'‖/‖K_t'‖/(t − t')"),
                  ("kernel_distance_end", "distance to the end kernel\n‖K_t − K_T‖/‖K_T‖"),
                  ("kernel_target_alignment", "kernel–target alignment\nQᵀKQ/(‖K‖_F‖Q‖²)")]
    fig, axes = grid(pairs, nrows=len(quantities), height=2.8, sharey="row")
    norm = LogNorm(records["width"].min(), records["width"].max())
    for i, (column, label) in enumerate(quantities):
        for j, (family, param) in enumerate(pairs):
            ax = axes[i, j]
            sub = records[(records["family"] == family) & (records["parameterization"] == param)]
            sub = sub.dropna(subset=[column])
            if column == "kernel_distance_end":
                sub = sub[sub[column] > 0]
            if sub.empty:
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="0.4")
            else:
                sns.lineplot(data=sub, x="step", y=column, hue="width", palette="viridis", hue_norm=norm,
                             errorbar=None, marker="o", markersize=3, ax=ax,
                             legend="full" if i == 0 and j == len(pairs) - 1 else False)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0)
            if column != "kernel_target_alignment" and not sub.empty:
                ax.set_yscale("log")
            ax.set_title(panel_title(family, param) if i == 0 else "")
            ax.set_xlabel("training step t" if i == len(quantities) - 1 else "")
            ax.set_ylabel(label if j == 0 else "")
            ax.grid(True, alpha=0.3)
    legend_right(fig, axes[0, -1])
    return fig


def layer_alignment(sweep: SweepResult) -> Figure:
    """Draw each layer's share of ``QᵀKQ`` and its own residual against width, at the start (dashed) and end (solid).

    A panel of more than :data:`MAX_LAYERS` layers names the ``MAX_LAYERS − 1`` with the largest share (at any width
    and stage) and sums the others' shares into one line; their residuals are in ``layers.csv``.
    """
    layers = sweep.layers
    if layers.empty:
        return placeholder("Not measured: these runs were read from histories, which hold the tracker's records "
                           "only, not the per-layer Grams at the start and the end.")
    pairs = panels(layers)
    thresholds = counting_threshold(sweep.runs)
    fig, axes = grid(pairs, nrows=2, height=3.2, sharey="row")
    for j, (family, param) in enumerate(pairs):
        sub = layers[(layers["family"] == family) & (layers["parameterization"] == param)]
        named, shares = _largest_layers(sub)
        palette = dict(zip(shares["layer"].unique(), sns.color_palette("tab10"), strict=False))
        for i, (column, label) in enumerate((("share", "share of QᵀKQ"), ("residual", "own residual ‖(I−P_g)Q‖/‖Q‖"))):
            ax = axes[i, j]
            values = shares if column == "share" else sub[sub["layer"].isin(named)]
            values = values.assign(value=at_floor(values[column]) if column == "residual" else values[column])
            sns.lineplot(data=values, x="width", y="value", hue="layer", palette=palette, style="stage",
                         style_order=["end", "start"], estimator="mean", errorbar=None, marker="o", markersize=4,
                         ax=ax, legend=i == 0)
            threshold_line(ax, thresholds.get(family), label=False)
            if column == "residual":
                ax.set_yscale("log")
                ax.set_ylim(bottom=FLOOR / 2)
            ax.set_title(panel_title(family, param) if i == 0 else "")
            ax.set_ylabel(label if j == 0 else "")
            width_axis(ax, sub["width"])
            if i == 0:
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def _largest_layers(layers: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """Return the layers a panel names and its share table (the rest summed as one layer when there are too many)."""
    order = layers.groupby("layer", sort=False)["share"].max().sort_values(ascending=False).index.tolist()
    if len(order) <= MAX_LAYERS:
        return order, layers
    named, rest = order[:MAX_LAYERS - 1], order[MAX_LAYERS - 1:]
    keys = ["run_id", "width", "seed", "stage"]
    other = layers[layers["layer"].isin(rest)].groupby(keys, as_index=False)["share"].sum()
    other["layer"] = f"the other {len(rest)} layers (sum)"
    return named, pd.concat([layers[layers["layer"].isin(named)], other], ignore_index=True)


def lr_transfer(table: pd.DataFrame, settings: pd.DataFrame) -> Figure:
    """Draw the final training loss against ``lr₀`` (log₂), one line per width; the chosen ``lr₀`` is starred.

    Parameters
    ----------
    table
        :func:`~diagnostics.width.lr_sweep.lr_sweep` output.
    settings
        :func:`~diagnostics.width.lr_sweep.choose_settings` output.
    """
    ok = table[table["final_loss"].notna()] if "final_loss" in table else table.iloc[0:0]
    pairs = panels(ok)
    fig, axes = grid(pairs, nrows=1, height=3.8, sharey=True)
    norm = LogNorm(ok["width"].min(), ok["width"].max())
    ceiling = float(ok["initial_loss"].max()) * 2
    for j, (family, param) in enumerate(pairs):
        ax = axes[0, j]
        sub = ok[(ok["family"] == family) & (ok["parameterization"] == param)]
        sub = sub.assign(loss=sub["final_loss"].clip(upper=ceiling))
        sns.lineplot(data=sub, x="lr0", y="loss", hue="width", palette="viridis", hue_norm=norm, estimator="mean",
                     errorbar=None, marker="o", markersize=4, ax=ax, legend="full" if j == len(pairs) - 1 else False)
        chosen = settings[(settings["family"] == family) & (settings["parameterization"] == param)]
        for row in chosen.itertuples():
            at = sub[(sub["lr0"] == row.lr0) & (sub["width"] == row.reference_width)]
            if not at.empty:
                ax.plot([row.lr0], [at["loss"].mean()], marker="*", markersize=14, color="black", linestyle="",
                        label=f"chosen lr₀ = {row.lr0:g} (width {row.reference_width})")
                ax.legend(fontsize=7, loc="upper left")
        ax.axhline(ceiling, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(panel_title(family, param))
        ax.set_xlabel("base learning rate lr₀")
        ax.set_ylabel("training loss after the step budget\n(diverged runs drawn at the dotted line)" if j == 0 else "")
        ax.grid(True, alpha=0.3)
    legend_right(fig, axes[0, -1])
    return fig
