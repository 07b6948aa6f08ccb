"""What the training-framework callbacks share: the probe, the cadence, one tracker per run, its sinks and history.

A callback builds a :class:`TrackingSession` when it is constructed: the options are checked and the probe
is read then (a misspelt option, a wrong loss name or a bad probe fails at once). When training starts (on
the process of global rank zero only) the callback calls :meth:`TrackingSession.start` with the model, the
history file and the run's length; after every optimiser step :meth:`TrackingSession.record` with the
trainer's global step. Each run gets a tracker and sinks of its own, so one callback serves several runs.

The cadence follows the trainers' logging intervals (Hugging Face's ``logging_steps``, Lightning's
``val_check_interval``): ``every`` is a number of optimiser steps, or a fraction of the run in ``(0, 1)`` (the
default, :data:`DEFAULT_EVERY`, records about 20 times per run), and the run's last step is always recorded,
whatever its number: as a full record when it is known to be the last before it is measured (the run's length
reached; a run that a callback stops after its step was recorded keeps that record as it is).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..engine import inputs as _inputs
from ..errors import DiagnosticsError
from ..tracking import AlignmentTracker
from ..tracking.settings import check_names, check_options
from .sinks import Sink, scalars

__all__ = ["DEFAULT_EVERY", "DEFAULT_FULL_EVERY", "DEFAULT_NAME", "DEFAULT_PROBE_SIZE", "TrackingSession", "latest",
           "resolve_every", "unwrap", "versioned"]

#: Default name of a callback: the prefix of its metrics and the stem of its history file ``alignment.jsonl``.
DEFAULT_NAME = "alignment"
#: Default cadence of the callbacks: a record every 5 % of the run's optimiser steps (about 20 per run, the last
#: step included), a full one every ``DEFAULT_FULL_EVERY`` records (and at the last step), on
#: ``DEFAULT_PROBE_SIZE`` samples; the other records are cheap (about a training step each,
#: ``docs/benchmarks.md``, section 4).
DEFAULT_EVERY = 0.05
DEFAULT_FULL_EVERY = 10
DEFAULT_PROBE_SIZE = 128
#: The tracker's arguments a callback sets itself.
SET_BY_CALLBACK = ("model", "probe", "path", "resume", "optimizer", "data_size", "self")


class TrackingSession:
    """The probe and options of a callback, and the tracker and sinks of the run in progress.

    Parameters
    ----------
    probe
        The probe data, as for :class:`~diagnostics.tracking.AlignmentTracker`; read (a seeded subset of
        ``probe_size`` samples) when the session is built.
    name
        The prefix of the metrics (``<name>/grad_norm``) and the stem of the history file.
    every
        Optimiser steps between records, or a fraction of the run's steps in ``(0, 1)``.
    sinks
        Writers of every record of every run (:mod:`~diagnostics.integrations.sinks`).
    owner
        Who takes the options, for error messages (e.g. ``"AlignmentCallback"``).
    tracker_options
        Keyword arguments of :class:`~diagnostics.tracking.AlignmentTracker` (``loss``, ``full_every``,
        ``probe_size``, ``params``, ...); checked now.
    """

    def __init__(self, probe: object, *, name: str = DEFAULT_NAME, every: int | float = DEFAULT_EVERY,
                 sinks: Sequence[Sink] = (), owner: str = "AlignmentCallback", **tracker_options: Any) -> None:
        accepted = [k for k in inspect.signature(AlignmentTracker).parameters if k not in SET_BY_CALLBACK]
        check_names(tracker_options, accepted, owner)
        check_options(tracker_options)
        if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
            raise DiagnosticsError(f"name must be a non-empty string without slashes, got {name!r}")
        resolve_every(every, None)  # refuses what is neither a step count nor a fraction
        for sink in sinks:
            if not isinstance(sink, Sink):
                raise DiagnosticsError(f"sinks must be Sink objects (diagnostics.integrations.sinks), got {sink!r}")
        self.name, self.every, self.owner = name, every, owner
        probe_size = tracker_options.pop("probe_size", DEFAULT_PROBE_SIZE)
        self.probe = _inputs.probe_data(probe, probe_size, tracker_options.get("seed", 0))
        #: The number of samples the probe was drawn from (``None``: not known), for the history's header.
        self.data_size = _inputs.data_size(probe)
        self.options = tracker_options
        self.user_sinks = list(sinks)
        #: The sinks of the run in progress (the user's, then the trainer's loggers').
        self.sinks: list[Sink] = []
        self.tracker: AlignmentTracker | None = None
        self.path: str | None = None
        #: The run's steps between records and its last step (``None``: unknown), set by :meth:`schedule`.
        self.steps_between: int | None = None
        self._last: int | None = None

    def schedule(self, total_steps: int | float | None) -> None:
        """Fix the run's cadence from its length (on every process, so that all agree on the records' steps)."""
        self.steps_between = resolve_every(self.every, total_steps)
        self._last = int(total_steps) if total_steps is not None and math.isfinite(total_steps) else None

    def due(self, step: int, *, final: bool = False) -> bool:
        """Return whether the run records at ``step``.

        It does at multiples of the cadence and at the last step (``final``, or the run's length reached);
        :meth:`record` measures there unless the history already holds the step.
        """
        if self.steps_between is None:
            return False
        return final or step % self.steps_between == 0 or (self._last is not None and step >= self._last)

    def start(self, model: nn.Module, path: str | os.PathLike[str], *, total_steps: int | float | None,
              resume_at: int | None = None, optimizer: torch.optim.Optimizer | None = None,
              sinks: Sequence[Sink] = ()) -> None:
        """Create the run's tracker on ``model`` with its history at ``path``.

        Parameters
        ----------
        model, path
            The model to measure and the history file.
        total_steps
            The run's optimiser steps (``None`` or ``inf`` when unknown): resolves a fractional ``every``.
        resume_at
            The step of the checkpoint training resumes from: the history at ``path`` is continued from it
            (records after it, of the interrupted run, are dropped); ``None``: a new history.
        optimizer
            The trainer's optimiser, described in the history's header.
        sinks
            The run's own sinks (the trainer's loggers), after the user's.
        """
        self.schedule(total_steps)
        self.path = os.fspath(path)
        self.tracker = AlignmentTracker(model, self.probe, probe_size=None, every=self.steps_between, path=self.path,
                                        resume=resume_at is not None, optimizer=optimizer, data_size=self.data_size,
                                        **self.options)
        if resume_at is not None:
            self.tracker.resume_at(resume_at)
        self.sinks = [*self.user_sinks, *sinks]
        for sink in self.sinks:
            sink.start(self.settings)

    @property
    def settings(self) -> dict[str, Any]:
        """The run's fixed settings (the tracker's, as scalars), for the loggers' hyper-parameters."""
        return {} if self.tracker is None else self.tracker.settings

    def record(self, step: int, *, final: bool = False) -> dict[str, Any] | None:
        """Measure at ``step`` if it is due and send the record to the sinks; return it (``None``: not due).

        A step is recorded when it is :meth:`due` and after the last record; the last step's record is a full one.
        """
        tracker = self.tracker
        if tracker is None or not self.due(step, final=final) or (tracker.last_step is not None
                                                                   and step <= tracker.last_step):
            return None
        final = final or (self._last is not None and step >= self._last)
        record = tracker.measure(int(step), full=True if final else None)
        report = tracker.last_report if record.get("tier", "full") == "full" else None
        for sink in self.sinks:
            sink.write(record, report)
        return record

    def metrics(self, record: Mapping[str, Any]) -> dict[str, float]:
        """Return the record's measurements as ``{<name>/<column>: value}``, what the trainer's metrics receive."""
        return scalars(record, self.name)

    def close(self) -> None:
        """Close the run's sinks and the tracker's progress bar (the history is already on disk)."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        if self.tracker is not None:
            self.tracker.close()

    @property
    def history(self) -> pd.DataFrame:
        """The records of the current (or last) run (empty before training starts, and on other processes)."""
        return pd.DataFrame() if self.tracker is None else self.tracker.history


def resolve_every(every: int | float, total_steps: int | float | None) -> int:
    """Return the steps between records: ``every`` itself, or ``ceil(every · total_steps)`` for a fraction.

    A fraction needs the run's length (``total_steps``; ``None`` only checks ``every``).
    """
    if isinstance(every, bool) or not isinstance(every, int | float) or not (every >= 1 or 0 < every < 1):
        raise DiagnosticsError(f"every must be a number of steps (an integer ≥ 1) or a fraction of the run in (0, 1), "
                               f"got {every!r}")
    if every >= 1:
        if every != int(every):
            raise DiagnosticsError(f"every must be an integer number of steps or a fraction in (0, 1), got {every!r}")
        return int(every)
    if total_steps is None:
        return 1
    if not math.isfinite(total_steps) or total_steps < 1:
        raise DiagnosticsError(f"every={every} is a fraction of the run, but the run's length is unknown "
                               f"({total_steps!r} steps, e.g. an iterable data set without max_steps); "
                               "pass every as a number of steps")
    return max(1, math.ceil(every * total_steps))


def versioned(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if no file is there, else the first free ``<stem>-v1<suffix>``, ``-v2``, and so on.

    A new run into a folder that holds an earlier run's history keeps it, as Lightning's ``ModelCheckpoint``
    keeps earlier checkpoints (``-v1`` names).
    """
    path = Path(path)
    version = 0
    candidate = path
    while candidate.exists():
        version += 1
        candidate = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    return candidate


def latest(path: str | os.PathLike[str]) -> Path:
    """Return the newest of ``path``'s versions (:func:`versioned`) that exists, or ``path`` itself if none does."""
    path = Path(path)
    newest, version = path, 1
    while (candidate := path.with_name(f"{path.stem}-v{version}{path.suffix}")).exists():
        newest, version = candidate, version + 1
    return newest


def unwrap(model: nn.Module, module: str | None = None) -> nn.Module:
    """Return the model to measure: without its data-parallel wrappers, or its submodule ``module``.

    ``DistributedDataParallel`` and ``DataParallel`` are stripped; ``module`` is a dotted name (``None``:
    the model itself).
    """
    while isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    if module is None:
        return model
    try:
        return model.get_submodule(module)
    except AttributeError as exc:
        raise DiagnosticsError(f"the model has no submodule {module!r}: {exc}") from exc
