"""The width-scaling report: tables, figures, ``report.md`` and a self-contained ``report.html``.

:func:`write_report` writes a :class:`~diagnostics.width.study.Study` into one folder (``python -m diagnostics
width-report``, :meth:`Study.report <diagnostics.width.study.Study.report>`)::

    report.html           self-contained (figures embedded as base64 PNG, inline CSS)
    report.md             the same text, figures linked from figures/
    figures/<name>.png    and .svg, one per entry of diagnostics.width.figures.FIGURES
    records.csv           one row per run per tracker record
    runs.csv              one row per finished run (final and initial values, predictors, test metrics, timings)
    trajectories.csv      one row per run per training step (loss, ‖∇L‖², rate bound)
    coordinates.csv       the coordinate check (steps 0–3, every layer)
    layers.csv            per-layer alignment at the start and the end
    missing.csv           runs without a result, with their error
    lr_sweep.csv          with an lr table: one row per (run, lr₀) of the learning-rate sweep
    config.json           what ran (the resolved SweepConfig, or the study's families, recipes and data)
    environment.json      versions, CPU, threads, executor
    runs/<run_id>.json    the per-run results a study resumes from (when it ran with this folder)

Every sentence of the report is computed from the tables (:mod:`diagnostics.width.analysis`,
:mod:`diagnostics.width.predictors`); every pass/fail word in it is a :mod:`theory` verdict. The report says what
applies to what was run: the statements about a point of training for every run, those about gradient descent only
where :func:`~diagnostics.width.recipe.gradient_descent_premise` holds (else *not applicable*, with the reason).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from ..store import write_json
from .analysis import LEVEL, applicability, cost_findings, cost_table, findings, movement_slopes, seed_means
from .config import LOSS_LEVEL
from .document import Document
from .figures import FigureFile, make_figures, save_figure
from .figures_evidence import lr_transfer
from .lr_sweep import choose_settings
from .predictors import best_predictors, predictor_findings
from .sweep import SweepResult

if TYPE_CHECKING:
    from .study import Study

__all__ = ["ReportResult", "environment", "write_report"]

_PACKAGES = ("torch", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "scikit-learn", "tqdm", "ray")


@dataclass
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    folder : pathlib.Path
        The report folder.
    study : Study
        The study it reports.
    figures : list of FigureFile
        The saved figures (none when no run finished).
    lr_table : pandas.DataFrame, optional
        The learning-rate sweep, when one was given.
    """

    folder: Path
    study: Study
    figures: list[FigureFile]
    lr_table: pd.DataFrame | None = None

    @property
    def sweep(self) -> SweepResult:
        """The study's tables."""
        return self.study.sweep

    @property
    def seconds(self) -> float:
        """Wall time of the study."""
        return self.study.seconds


def write_report(study: Study, folder: str | os.PathLike[str], *, lr_table: pd.DataFrame | None = None) -> ReportResult:
    """Write the report folder of ``study`` (created; files of an earlier report are replaced).

    Parameters
    ----------
    study
        What ran, and its tables.
    folder
        Output folder.
    lr_table
        A learning-rate sweep (:func:`~diagnostics.width.lr_sweep.lr_sweep`) to add with its transfer plot.

    Returns
    -------
    ReportResult
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", study.config)
    write_json(folder / "environment.json", study.environment)
    sweep = study.sweep
    for name in ("records", "runs", "trajectories", "coordinates", "layers", "missing"):
        getattr(sweep, name).to_csv(folder / f"{name}.csv", index=False)
    # the figures are drawn by as many processes as the runs were (none for a study read from histories)
    jobs = study.environment.get("jobs") if study.environment.get("executor") == "local" else None
    figures = make_figures(sweep, folder / "figures", jobs=jobs or 1) if not sweep.runs.empty else []
    lr_figure = None
    if lr_table is not None:
        lr_table.to_csv(folder / "lr_sweep.csv", index=False)
        lr_figure = save_figure(lr_transfer(lr_table, choose_settings(lr_table)), folder / "figures", "lr_transfer",
                                "Training loss against the base learning rate across widths",
                                _LR_CAPTION.format(level=LOSS_LEVEL))
    doc = _document(study, figures, lr_table, lr_figure)
    (folder / "report.md").write_text(doc.markdown(folder))
    (folder / "report.html").write_text(doc.html())
    return ReportResult(folder, study, figures + ([lr_figure] if lr_figure else []), lr_table)


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
# Contents

_LR_CAPTION = (
    "Training loss after each run's step budget against lr₀, one line per width (seed mean; diverged runs at the "
    "dotted line). The star marks the lr₀ the rule of diagnostics.width.lr_sweep picks on the smallest width with "
    "d ≥ n·m: the largest whose loss never rises in a step and that diverges at no width. Loss level for the "
    "step budgets: {level:g}."
)

def _document(study: Study, figures: list[FigureFile], lr_table: pd.DataFrame | None,
              lr_figure: FigureFile | None) -> Document:
    sweep, env = study.sweep, study.environment
    doc = Document()
    doc.heading(1, study.title)
    doc.paragraph(
        f"{len(sweep.runs)} of {len(sweep.runs) + len(sweep.missing)} runs finished "
        f"({sweep.executed} executed by this call, {env.get('executor', 'no')} executor, {study.seconds:.0f} s wall); "
        f"created {env['created']}. theory/width.md (S1–S4) and theory/results.md (I2, I3) state what is measured."
    )
    doc.heading(2, "What the figures show")
    doc.bullets(findings(sweep))
    if not sweep.runs.empty:
        doc.heading(2, "What applies to what was run")
        doc.paragraph(
            "Statements about a point of training (D1, (I2), (I3), rank and the counting threshold, the certificate, "
            "S4 kernel movement, the coordinate check, kernel–target alignment, per-layer alignment) hold for any "
            "optimiser. The statements about gradient descent have premises on the recipe (theory/recipe.md): the "
            "horizon floors of K_0 and K_T and the dynamics linearised at K_0 describe plain full-batch gradient "
            "descent on (1/2n)‖f − Y‖², the linearised dynamics at a stable step ηλ_max(K_0)/n ≤ 2 as well; a horizon "
            "floor counts the slow directions (ηλT/n < 1) at any step, and where the step is beyond the stable step "
            "of its kernel the directions with ηλ/n > 2, which grow instead of being fitted, are named as its "
            "unstable part. The rate bound holds for any update rule whose losses and gradients are the squared "
            "loss's on the whole training set. Where a premise fails the statement is not applicable, for the "
            "reason given."
        )
        doc.table(applicability(sweep.runs))
        doc.heading(2, "What predicted the final loss")
        doc.paragraph(
            "Per family and parameterisation, on each side of the counting threshold, the predictor whose value "
            "was closest to the final training loss L_T (median over runs of |log₁₀(L_T / prediction)|, in "
            "decades). *A priori* predictors are computable at step 0 (the horizon floor of K_0 for the run's own "
            "(η, T), the loss of the dynamics linearised at K_0); *post hoc* explanations need the end of training "
            "(the exact (I2) floor at θ_T, the horizon floor of K_T, the gradient-descent rate bound, which uses the "
            "certificate over the run)."
        )
        doc.bullets(predictor_findings(sweep.runs))
        best = best_predictors(sweep.runs)
        if not best.empty:
            doc.table(best)
        doc.heading(2, "Cost: measuring against training")
        doc.bullets(cost_findings(sweep.runs))
        doc.table(cost_table(sweep.runs))
    doc.heading(2, "Setup")
    doc.bullets(study.setup)
    for fig in figures:
        doc.heading(3, fig.title)
        doc.figure(fig)
    if lr_table is not None:
        doc.heading(2, "Learning rates (--lr-sweep)")
        doc.paragraph("The settings the rule of `diagnostics.width.lr_sweep` picks from this sweep (steps to the "
                      f"loss level {LOSS_LEVEL:g} at the reference width, within the step budget):")
        doc.table(choose_settings(lr_table))
        if lr_figure is not None:
            doc.figure(lr_figure)
    if not sweep.runs.empty:
        doc.heading(2, "Mean over seeds")
        doc.table(_summary_table(sweep.runs))
        slopes = movement_slopes(sweep.runs)
        if not slopes.empty:
            doc.heading(2, f"S4 verdicts ({LEVEL:.0%} t-intervals over the per-seed slopes)")
            doc.table(slopes[["family", "parameterization", "slope", "low", "high", "expect", "status", "widths",
                              "seeds"]])
    doc.heading(2, "Missing runs")
    if sweep.missing.empty:
        doc.paragraph("None: every run finished.")
    else:
        doc.paragraph("Rerun the same command to run only these (finished runs are skipped).")
        doc.table(sweep.missing[["run_id", "status", "error"]])
    doc.heading(2, "Files")
    doc.paragraph(
        "`records.csv` (one row per run per record: the tracker's columns and the kernel dynamics), `runs.csv` "
        "(one row per run), `trajectories.csv` (every training step), `coordinates.csv`, `layers.csv`, "
        "`missing.csv`, `config.json`, `environment.json`, `figures/` (PNG and SVG), `runs/` (per-run results "
        "a rerun resumes from)."
    )
    doc.heading(2, "Configuration")
    doc.code(json.dumps(study.config, indent=2))
    doc.heading(2, "Environment")
    doc.code(json.dumps(env, indent=2))
    return doc


#: Columns of the table of seed means: ``(column of the runs table, heading)``; columns no run has are left out.
_SUMMARY = (
    ("n_params", "d"), ("final_residual", "residual"), ("final_loss", "loss"), ("final_loss_lower_bound", "(I2) floor"),
    ("init_horizon_residual", "horizon residual K_0"), ("init_horizon_loss_floor", "horizon floor K_0"),
    ("final_horizon_floor", "horizon floor K_T"), ("init_unstable_share", "unstable share K_0"),
    ("final_unstable_share", "unstable share K_T"), ("linearised_loss", "linearised"), ("certificate_bar", "B̄"),
    ("init_nu_norm", "‖ν‖"), ("final_kernel_movement_init", "ΔK"), ("final_param_movement", "Δθ"),
    ("test_accuracy", "test accuracy"), ("test_loss", "test loss"),
)


#: Columns shown only when some run has an unstable part (the share of ‖Q‖² its horizon floor leaves out).
_UNSTABLE = ("init_unstable_share", "final_unstable_share")


def _summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    means = seed_means(runs)
    table = pd.DataFrame({"family": means["family"], "param.": means["parameterization"], "width": means["width"]})
    for column, heading in _SUMMARY:
        if column in means and means[column].notna().any() and (column not in _UNSTABLE or means[column].gt(0).any()):
            table[heading] = means[column].astype(int) if column == "n_params" else means[column]
        if column == "n_params":
            table["d/(nm)"] = means["n_params"] / means["n_outputs"]
    if "test accuracy" in table:
        table = table.drop(columns="test loss", errors="ignore")
    return table
