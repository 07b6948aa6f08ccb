"""Where tracker records go besides the tracker's own history: TensorBoard, MLflow, Weights & Biases, JSON lines.

A :class:`Sink` receives the run's fixed settings once (:meth:`Sink.start`: loss, dtype, probe size, ``n_params``,
tags, … as hyper-parameters) and then every record (:class:`~diagnostics.tracking.AlignmentTracker` columns)
with, for full records, the alignment report and the spectrum of ``K``. Each writes

- the measurements as scalars ``<prefix>/<column>`` at the record's step (``aligned`` as 1/0; text
  columns such as ``d1_status`` and ``tier`` where the backend takes text, else left out; the columns that
  do not change along a run, :data:`~diagnostics.tracking.records.CONSTANTS`, and the timings are not metrics);
- for full records, the spectrum as a histogram of ``log10 λ`` and the alignment curve
  ``a(λ_k) = ‖(I − P_{≥λ_k})Q‖/‖Q‖`` as a figure (``theory/alignment.md``), where the backend supports them.

A sink built with ``scalars=False`` writes only what a trainer's own logging cannot carry (histograms, figures,
spectra): the callbacks hand the settings and scalars to the trainer, which passes them to every logger.
The tracker's own JSON-lines history (``path=``) is always written; :class:`JsonLinesSink` writes the
same records to another history file. Sinks built around a logger that a trainer owns never close it.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..alignment_report import AlignmentReport
from ..tracking.history import History
from ..tracking.records import CONSTANTS
from ._optional import require

__all__ = ["JsonLinesSink", "MLflowSink", "Sink", "TensorBoardSink", "WandbSink", "alignment_figure", "scalars"]

PREFIX = "alignment"
#: Columns that are not metrics: the step (the x-axis), the timings, and the constants of a run.
NOT_LOGGED = ("step", "wall_time", "measure_seconds", *CONSTANTS)


class Sink(ABC):
    """A writer of tracker records; :meth:`start` is called once per run, :meth:`write` once per record, in order."""

    def start(self, settings: Mapping[str, Any]) -> None:  # noqa: B027 (sinks without hyper-parameters)
        """Write the run's fixed settings (scalars, as hyper-parameters) once, before the first record."""

    @abstractmethod
    def write(self, record: Mapping[str, Any], report: AlignmentReport | None = None) -> None:
        """Write one record; ``report`` is the full record's alignment report (``None`` for cheap records)."""

    def close(self) -> None:  # noqa: B027 (most sinks have nothing to release)
        """Flush and release what this sink opened itself."""


def scalars(record: Mapping[str, Any], prefix: str = PREFIX) -> dict[str, float]:
    """Return the finite numeric measurements of ``record`` as ``{prefix/column: value}`` (booleans as 1/0)."""
    out = {}
    for key, value in record.items():
        if key in NOT_LOGGED or isinstance(value, str) or value is None:
            continue
        value = float(value)
        if math.isfinite(value):
            out[f"{prefix}/{key}"] = value
    return out


def alignment_figure(report: AlignmentReport) -> Figure:
    """Plot the alignment curve ``a(λ_k)`` against ``λ_k`` (log-log), with the residual tolerance."""
    lam = np.asarray(report.eigenvalues, dtype=float)
    curve = np.asarray(report.alignment_curve, dtype=float)
    keep = (lam > 0) & (curve > 0)
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.loglog(lam[keep], curve[keep], marker=".", markersize=3, linewidth=1)
    ax.axhline(report.residual_tol, color="grey", linestyle=":", label=f"residual_tol {report.residual_tol:.1e}")
    ax.invert_xaxis()
    ax.set_xlabel("eigenvalue λ_k of K (directions kept: λ ≥ λ_k)")
    ax.set_ylabel("a(λ_k) = ‖(I − P≥λ_k) Q‖ / ‖Q‖")
    ax.set_title(f"D1 {report.verdict.status}: a = {report.residual:.2e}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def _pixels(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(h, w, 3)`` uint8 array (no pyplot involved)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _log_eigenvalues(report: AlignmentReport) -> np.ndarray:
    lam = np.asarray(report.eigenvalues, dtype=float)
    return np.log10(lam[lam > 0])


class TensorBoardSink(Sink):
    """Scalars, a ``log10 λ`` histogram and the alignment-curve figure in TensorBoard event files.

    Parameters
    ----------
    writer
        A ``torch.utils.tensorboard.SummaryWriter`` (e.g. a trainer's, left open), or a log directory for
        a writer this sink opens and closes.
    scalars, settings
        Write the records' scalars, and the settings (as a text table; default: as ``scalars``); histograms and
        figures are always written.
    prefix
        The tags' prefix.
    """

    def __init__(self, writer: object, *, scalars: bool = True, settings: bool | None = None,
                 prefix: str = PREFIX) -> None:
        tensorboard = require("torch.utils.tensorboard", "tensorboard")
        self._owned = isinstance(writer, str | os.PathLike)
        self.writer = tensorboard.SummaryWriter(log_dir=os.fspath(writer)) if self._owned else writer
        self.scalars, self._settings, self.prefix = scalars, scalars if settings is None else settings, prefix

    def start(self, settings: Mapping[str, Any]) -> None:
        """Write the settings as a text table ``<prefix>/settings``."""
        if self._settings:
            table = "| setting | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in settings.items())
            self.writer.add_text(f"{self.prefix}/settings", table, 0)

    def write(self, record: Mapping[str, Any], report: AlignmentReport | None = None) -> None:
        """Write one record as scalars (and, for a full record, the histogram and the figure)."""
        step = int(record["step"])
        for tag, value in (scalars(record, self.prefix) if self.scalars else {}).items():
            self.writer.add_scalar(tag, value, step)
        if report is not None:
            self.writer.add_histogram(f"{self.prefix}/log10_eigenvalues", _log_eigenvalues(report), step)
            self.writer.add_figure(f"{self.prefix}/alignment_curve", alignment_figure(report), step)
        self.writer.flush()

    def close(self) -> None:
        """Close the writer if this sink opened it."""
        if self._owned:
            self.writer.close()


class MLflowSink(Sink):
    """Metrics in an MLflow run; for full records the spectrum and curve as a JSON artifact and a figure.

    Parameters
    ----------
    client
        An ``mlflow.tracking.MlflowClient`` (e.g. a trainer's), or a tracking URI (``"file:./mlruns"``,
        ``"sqlite:///mlflow.db"``) for a client of this sink's own.
    run_id
        The run to log to.
    scalars, settings
        Write the records' metrics, and the settings (as the run's parameters; default: as ``scalars``); the
        spectrum artifacts are always written.
    prefix
        The names' prefix.
    """

    def __init__(self, client: object, run_id: str, *, scalars: bool = True, settings: bool | None = None,
                 prefix: str = PREFIX) -> None:
        tracking = require("mlflow.tracking", "mlflow")
        self.client = tracking.MlflowClient(client) if isinstance(client, str) else client
        self.run_id = run_id
        self.scalars, self._settings, self.prefix = scalars, scalars if settings is None else settings, prefix
        self._entities = require("mlflow.entities", "mlflow")

    def start(self, settings: Mapping[str, Any]) -> None:
        """Write the settings as the run's parameters ``<prefix>/<setting>``."""
        if self._settings:
            params = [self._entities.Param(f"{self.prefix}/{k}", str(v)) for k, v in settings.items()]
            self.client.log_batch(self.run_id, params=params)

    def write(self, record: Mapping[str, Any], report: AlignmentReport | None = None) -> None:
        """Write one record as metrics (and, for a full record, the spectrum artifacts)."""
        step = int(record["step"])
        if self.scalars:
            stamp = int(1000 * float(record.get("wall_time", 0.0)))
            metrics = [self._entities.Metric(tag, value, stamp, step)
                       for tag, value in scalars(record, self.prefix).items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        if report is not None:
            spectrum = {"step": step, "eigenvalues": np.asarray(report.eigenvalues).tolist(),
                        "alignment_curve": np.asarray(report.alignment_curve).tolist()}
            self.client.log_dict(self.run_id, spectrum, f"{self.prefix}/spectrum-{step:08d}.json")
            self.client.log_figure(self.run_id, alignment_figure(report),
                                   f"{self.prefix}/alignment-curve-{step:08d}.png")


class WandbSink(Sink):
    """Metrics against their own x-axis ``alignment/step`` in a W&B run, with a histogram and a figure.

    Parameters
    ----------
    run
        A ``wandb`` run (``wandb.init(...)``, a trainer's ``logger.experiment``, or ``wandb.run``); offline
        runs (``mode="offline"``) work without an account.
    scalars, settings
        Write the records' scalars, and the settings (into the run's config; default: as ``scalars``);
        histograms and figures are always written.
    prefix
        The keys' prefix.
    """

    def __init__(self, run: object, *, scalars: bool = True, settings: bool | None = None,
                 prefix: str = PREFIX) -> None:
        self._wandb = require("wandb", "wandb")
        self.run = run
        self.scalars, self._settings, self.prefix = scalars, scalars if settings is None else settings, prefix
        run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")

    def start(self, settings: Mapping[str, Any]) -> None:
        """Write the settings into the run's config as ``<prefix>/<setting>``."""
        if self._settings:
            self.run.config.update({f"{self.prefix}/{k}": v for k, v in settings.items()}, allow_val_change=True)

    def write(self, record: Mapping[str, Any], report: AlignmentReport | None = None) -> None:
        """Write one record (and, for a full record, the histogram and the figure)."""
        row: dict[str, Any] = {f"{self.prefix}/step": int(record["step"])}
        if self.scalars:
            row.update(scalars(record, self.prefix))
            row.update({f"{self.prefix}/{k}": record[k] for k in ("d1_status", "tier")
                        if isinstance(record.get(k), str)})
        if report is not None:
            row[f"{self.prefix}/log10_eigenvalues"] = self._wandb.Histogram(_log_eigenvalues(report))
            row[f"{self.prefix}/alignment_curve"] = self._wandb.Image(_pixels(alignment_figure(report)))
        if len(row) > 1:
            self.run.log(row)


class JsonLinesSink(Sink):
    """The records in a history file of their own (read it with :func:`~diagnostics.tracking.load_history`).

    Parameters
    ----------
    path
        The JSON-lines file; an existing one is continued (records must follow its last step).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.history = History(path, meta={"written_by": "JsonLinesSink"}, resume=True)

    def write(self, record: Mapping[str, Any], report: AlignmentReport | None = None) -> None:
        """Append the record (after the last step of the file)."""
        last = self.history.last_step
        if last is None or int(record["step"]) > last:
            self.history.append(record)
