"""The width-scaling report: sweep, tables, figures, ``report.md`` and a self-contained ``report.html``.

:func:`build_report` is the main job of the toolkit (``python -m diagnostics width-report``). It
writes into one folder::

    report.html           self-contained (figures embedded as base64 PNG, inline CSS)
    report.md             the same text, figures linked from figures/
    figures/<name>.png    and .svg, one per entry of diagnostics.width.figures.FIGURES
    records.csv           one row per run per tracker record
    runs.csv              one row per finished run (final and initial values, test metrics)
    missing.csv           runs without a result, with their error
    config.json           the resolved SweepConfig (explicit widths)
    environment.json      versions, CPU, threads, executor
    runs/<run_id>.json    the per-run results the sweep resumes from

Every sentence in the "What the figures show" section is computed from the tables
(:func:`diagnostics.width.analysis.findings`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..models import learning_rate_multiplier
from ..store import write_json
from .analysis import findings, movement_slopes, seed_means
from .config import SweepConfig, load_data
from .figures import FigureFile, make_figures
from .sweep import SweepResult, run_sweep

__all__ = ["ReportResult", "build_report", "environment"]

_PACKAGES = ("torch", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "scikit-learn", "tqdm", "ray")


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes
    ----------
    folder : pathlib.Path
        The report folder.
    sweep : SweepResult
        The tables.
    figures : list of FigureFile
        The saved figures (none when no run finished).
    config : SweepConfig
        The resolved configuration.
    seconds : float
        Wall time of the whole call.
    """

    folder: Path
    sweep: SweepResult
    figures: list[FigureFile]
    config: SweepConfig
    seconds: float


def build_report(
    config: SweepConfig,
    folder: str | os.PathLike[str],
    *,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> ReportResult:
    """Run the sweep of ``config`` (resuming) and write the report folder.

    Parameters
    ----------
    config : SweepConfig
        What to train; widths left out get :func:`~diagnostics.width.config.default_widths`.
    folder : path-like
        Output folder (created).
    executor, jobs, address, resume, progress
        As in :func:`~diagnostics.width.sweep.run_sweep`.

    Returns
    -------
    ReportResult

    Raises
    ------
    FileNotFoundError
        The data set's files are missing (the message names them).
    """
    start = time.perf_counter()
    folder = Path(folder)
    data = load_data(config)
    config = config.resolve(data)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", config.to_dict())
    env = environment(executor=executor, jobs=jobs or len(os.sched_getaffinity(0)), address=address)
    write_json(folder / "environment.json", env)
    sweep = run_sweep(config, folder, data=data, executor=executor, jobs=jobs, address=address, resume=resume,
                      progress=progress)
    sweep.records.to_csv(folder / "records.csv", index=False)
    sweep.runs.to_csv(folder / "runs.csv", index=False)
    sweep.missing.to_csv(folder / "missing.csv", index=False)
    figures = make_figures(sweep.runs, sweep.records, folder / "figures") if not sweep.runs.empty else []
    seconds = time.perf_counter() - start
    doc = _document(config, data.to_dict(), sweep, figures, env, seconds)
    (folder / "report.md").write_text(doc.markdown(folder))
    (folder / "report.html").write_text(doc.html())
    return ReportResult(folder, sweep, figures, config, seconds)


def environment(**extra: Any) -> dict[str, Any]:
    """Versions, CPU and thread settings of this process, plus ``extra`` (executor, jobs, ...)."""
    versions = {name: _installed_version(name) for name in _PACKAGES}
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch_threads_driver": torch.get_num_threads(),
        "torch_threads_per_run": 1,
        "diagnostics": _installed_version("alignment-diagnostics"),
        "git_commit": _git_commit(),
        "packages": versions,
        **extra,
    }


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------------------------
# The document: one list of blocks rendered to Markdown and to HTML


class _Document:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def figure(self, fig: FigureFile) -> None:
        self.blocks.append(("figure", fig))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self, folder: Path) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "paragraph":
                out.append(value)
            elif kind == "bullets":
                out.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                out.append(_markdown_table(value))
            elif kind == "figure":
                rel = value.png.relative_to(folder).as_posix()
                svg = value.svg.relative_to(folder).as_posix()
                out.append(f"![{value.title}]({rel})\n\n*{value.caption}* ([SVG]({svg}))")
            else:
                out.append(f"```json\n{value}\n```")
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{_inline(value[1])}</h{value[0]}>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in value) + "</ul>")
            elif kind == "table":
                body.append(_formatted(value).to_html(index=False, border=0, escape=True))
            elif kind == "figure":
                data = base64.b64encode(value.png.read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{html.escape(value.title)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(value.caption)}</figcaption></figure>"
                )
            else:
                body.append(f"<pre>{html.escape(value)}</pre>")
        title = next(v[1] for k, v in self.blocks if k == "heading")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.5;"
    "color:#222}img{max-width:100%}figure{margin:1.5em 0}figcaption{font-style:italic;color:#444}"
    "table{border-collapse:collapse;font-size:0.85em;margin:1em 0}th,td{padding:3px 8px;"
    "border-bottom:1px solid #ddd;text-align:right}th{background:#f3f3f3}pre{background:#f6f6f6;"
    "padding:1em;overflow-x:auto;font-size:0.85em}code{background:#f3f3f3;padding:0 3px}"
)


def _inline(text: str) -> str:
    """Escape, then render the Markdown inline marks the report uses: **bold**, *italic*, `code`."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    return frame.apply(lambda col: col.map(cell))


def _markdown_table(frame: pd.DataFrame) -> str:
    frame = _formatted(frame)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Contents


def _document(
    config: SweepConfig,
    data: dict[str, Any],
    sweep: SweepResult,
    figures: list[FigureFile],
    env: dict[str, Any],
    seconds: float,
) -> _Document:
    doc = _Document()
    nm = data["n_train"] * data["n_outputs"]
    doc.heading(1, f"Width-scaling report: {data['name']}")
    doc.paragraph(
        f"{len(sweep.runs)} of {len(sweep.runs) + len(sweep.missing)} runs finished "
        f"({sweep.executed} executed by this call, {env['executor']} executor, {seconds:.0f} s wall); "
        f"created {env['created']}. theory/width.md (S1–S4) states what is measured."
    )
    doc.heading(2, "What the figures show")
    doc.bullets(findings(sweep.runs, sweep.records, sweep.missing))
    doc.heading(2, "Setup")
    doc.bullets(_setup(config, data, nm))
    for fig in figures:
        doc.heading(3, fig.title)
        doc.figure(fig)
    if not sweep.runs.empty:
        doc.heading(2, "Mean over seeds")
        doc.table(_summary_table(sweep.runs))
        slopes = movement_slopes(sweep.runs)
        if not slopes.empty:
            doc.heading(2, "S4 verdicts (theory.verdicts.kernel_movement_trend)")
            doc.table(slopes[["family", "parameterization", "slope", "expect", "holds", "widths"]])
    doc.heading(2, "Missing runs")
    if sweep.missing.empty:
        doc.paragraph("None: every run finished.")
    else:
        doc.paragraph("Rerun the same command to run only these (finished runs are skipped).")
        doc.table(sweep.missing[["run_id", "status", "error"]])
    doc.heading(2, "Files")
    doc.paragraph(
        "`records.csv` (one row per run per record: the tracker's columns), `runs.csv` (one row per run), "
        "`missing.csv`, `config.json`, `environment.json`, `figures/` (PNG and SVG), `runs/` (per-run "
        "results the sweep resumes from)."
    )
    doc.heading(2, "Configuration")
    doc.code(json.dumps(config.to_dict(), indent=2))
    doc.heading(2, "Environment")
    doc.code(json.dumps(env, indent=2))
    return doc


def _setup(config: SweepConfig, data: dict[str, Any], nm: int) -> list[str]:
    widths = "; ".join(f"{fam}: {', '.join(map(str, ws))}" for fam, ws in config.widths.items())
    rules = "; ".join(
        f"{p}: lr = {config.lr[p]:g} × {_multiplier_text(p)}" for p in config.parameterizations
    )
    task = "one-hot class targets" if data["task"] == "classification" else "real-valued targets"
    return [
        f"Data: {data['name']}, n = {data['n_train']} training samples ({task}, m = {data['n_outputs']} "
        f"outputs), {data['n_test']} test samples. The probe is the whole training set, so n·m = {nm} and "
        "the tracked loss is the training loss.",
        f"Families {', '.join(config.families)} (MLP: {config.mlp_depth} hidden layer(s); CNN: two 3×3 "
        f"convolutions with max-pooling), widths {widths}; seeds {', '.join(map(str, config.seeds))}.",
        f"Training: {config.steps} steps of full-batch gradient descent on the squared loss "
        f"L = (1/2n)‖f_X − Y‖², measured every {config.every} steps by `AlignmentTracker`.",
        f"Learning rates per parameterisation (theory/width.md#s4-lazy-versus-rich): {rules}. "
        f"NTK keeps an O(1) step (its kernel "
        "has a width-independent limit); mean-field scales the step up by the width (its kernel shrinks like "
        "1/width), the maximal-update choice that keeps feature learning O(1).",
    ]


def _multiplier_text(parameterization: str) -> str:
    factor = learning_rate_multiplier(parameterization, 2)
    return {0.5: "1/width", 1.0: "1", 2.0: "width"}[factor]


def _summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    means = seed_means(runs)
    metric = "test_accuracy" if "test_accuracy" in means else "test_loss"
    table = pd.DataFrame({
        "family": means["family"],
        "param.": means["parameterization"],
        "width": means["width"],
        "d": means["n_params"].astype(int),
        "d/(nm)": means["n_params"] / means["n_outputs"],
        "rank/(nm)": means["final_rank"] / means["n_outputs"],
        "residual": means["final_residual"],
        "loss": means["final_loss"],
        "(I2) floor": means["final_loss_lower_bound"],
        "bound ratio": means["final_bound_ratio"],
        "ΔK": means["final_kernel_movement_init"],
        "Δθ": means["final_param_movement"],
        metric.replace("_", " "): means[metric],
    })
    return table
