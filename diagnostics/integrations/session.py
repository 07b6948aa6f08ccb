"""What the training-framework callbacks share: one tracker, its sinks, and where its history lives.

A callback creates the session's tracker once training starts (on the process of global rank zero only),
on the unwrapped model and with the history file next to the run's checkpoints, so that a run resumed
from a checkpoint resumes the history too; after every optimiser step it calls :meth:`TrackingSession.record`
with the trainer's global step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..tracking import AlignmentTracker
from .sinks import Sink

__all__ = ["DEFAULT_EVERY", "DEFAULT_FULL_EVERY", "DEFAULT_PROBE_SIZE", "HISTORY_NAME", "TrackingSession", "unwrap"]

#: File name of the history in the run's checkpoint folder.
HISTORY_NAME = "alignment.jsonl"
#: Default cadence of the callbacks: a cheap record every ``DEFAULT_EVERY`` optimiser steps and a full one
#: every ``DEFAULT_FULL_EVERY`` records, on ``DEFAULT_PROBE_SIZE`` samples. On the digits MLP, CNN and ResNet
#: (training batch 128) this costs 10–15 % of the training time (``docs/benchmarks.md``, section 4).
DEFAULT_EVERY = 200
DEFAULT_FULL_EVERY = 100
DEFAULT_PROBE_SIZE = 128


class TrackingSession:
    """A tracker created when training starts, and the sinks its records go to.

    Parameters
    ----------
    probe
        The probe data, as for :class:`~diagnostics.tracking.AlignmentTracker`.
    sinks
        Writers of every record (:mod:`~diagnostics.integrations.sinks`).
    tracker_options
        Keyword arguments of :class:`~diagnostics.tracking.AlignmentTracker` (``every``, ``loss``,
        ``full_every``, ``params``, ...); ``path`` and ``resume`` are the callback's.
    """

    def __init__(self, probe: object, sinks: Sequence[Sink], tracker_options: dict[str, Any]) -> None:
        for name in ("path", "resume", "optimizer"):
            if name in tracker_options:
                raise DiagnosticsError(f"{name}= is set by the callback (the history lives next to the checkpoints; "
                                       "pass path= to the callback to choose another file)")
        self.probe = probe
        self.sinks = list(sinks)
        self.options = tracker_options
        self.tracker: AlignmentTracker | None = None
        self.path: str | None = None

    def start(self, model: nn.Module, path: str | os.PathLike[str], *, resume: bool, sinks: Sequence[Sink] = (),
              optimizer: torch.optim.Optimizer | None = None) -> None:
        """Create the tracker on ``model`` with its history at ``path`` (continued when ``resume``).

        The trainer's ``optimizer`` is described in the history's header.
        """
        self.path = os.fspath(path)
        self.tracker = AlignmentTracker(model, self.probe, path=self.path, resume=resume, optimizer=optimizer,
                                        **self.options)
        self.sinks += list(sinks)

    def record(self, step: int) -> dict[str, Any] | None:
        """Measure if ``step`` is due (see :meth:`AlignmentTracker.step`) and send the record to the sinks."""
        if self.tracker is None:
            return None
        record = self.tracker.step(int(step))
        if record is not None:
            report = self.tracker.last_report if record.get("tier", "full") == "full" else None
            for sink in self.sinks:
                sink.write(record, report)
        return record

    def close(self) -> None:
        """Close the sinks and the tracker's progress bar (the history is already on disk)."""
        for sink in self.sinks:
            sink.close()
        if self.tracker is not None:
            self.tracker.close()

    @property
    def history(self) -> pd.DataFrame:
        """The tracker's records (empty before training starts, and on processes other than rank zero)."""
        return pd.DataFrame() if self.tracker is None else self.tracker.history


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
