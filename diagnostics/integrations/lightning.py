"""Alignment tracking in a PyTorch Lightning run: ``AlignmentCallback`` (install the extra ``[lightning]``).

>>> from diagnostics.integrations.lightning import AlignmentCallback            # doctest: +SKIP
>>> callback = AlignmentCallback((X, y), loss="ce")                            # doctest: +SKIP
>>> lightning.Trainer(callbacks=[callback], max_steps=2000).fit(module, loader)  # doctest: +SKIP
>>> callback.history                                                           # doctest: +SKIP

The callback measures the ``LightningModule`` (or its submodule ``module=``) with an
:class:`~diagnostics.tracking.AlignmentTracker` after every ``every``-th optimiser step, on the process of
global rank zero only. Measuring runs outside autocast (``precision="bf16-mixed"`` trains in bfloat16, the
measurement stays in its own dtype), on copies of the parameters: gradients, optimiser state and the random
stream are left as they were. The history is written to ``alignment.jsonl`` in the checkpoint folder (the
``ModelCheckpoint``'s ``dirpath``, else the trainer's ``default_root_dir``), so ``trainer.fit(...,
ckpt_path=...)`` resumes it; records also go to the trainer's TensorBoard, MLflow and W&B loggers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..tracking.meta import Tag
from ._optional import require
from .session import DEFAULT_EVERY, DEFAULT_FULL_EVERY, DEFAULT_PROBE_SIZE, HISTORY_NAME, TrackingSession, unwrap
from .sinks import MLflowSink, Sink, TensorBoardSink, WandbSink

pl = require("lightning.pytorch", "lightning")

__all__ = ["AlignmentCallback", "logger_sinks"]


class AlignmentCallback(pl.Callback):
    """Track the alignment quantities during ``Trainer.fit`` (see the module docstring).

    Parameters
    ----------
    probe
        Probe data, as for :class:`~diagnostics.tracking.AlignmentTracker`.
    every, full_every, probe_size
        A record every ``every`` optimiser steps, a full one every ``full_every`` records (the others are
        cheap; ``full_every=None``: every record is full), on ``probe_size`` samples. The defaults cost
        10–15 % of the training time on the digits models (``docs/benchmarks.md``); a larger probe or a
        smaller ``every`` costs more.
    module
        Dotted name of the submodule to measure (``None``: the ``LightningModule``'s own forward).
    path
        The history file (default: ``alignment.jsonl`` in the checkpoint folder).
    sinks
        More writers of the records (:mod:`~diagnostics.integrations.sinks`).
    use_loggers
        Also write to the trainer's TensorBoard, MLflow and W&B loggers.
    tags
        Labels of the run, written into the history's header (``meta["tags"]``); the header also describes the
        trainer's optimiser (``meta["optimizer"]``).
    **tracker_options
        Any other argument of :class:`~diagnostics.tracking.AlignmentTracker` (``loss``, ``params``,
        ``output``, ``probe_size``, ``dtype``, ``representation``, ``horizon``, ...).

    Attributes
    ----------
    history
        The tracker's records as a DataFrame (empty on processes other than rank zero).
    """

    def __init__(self, probe: object, *, every: int = DEFAULT_EVERY, full_every: int | None = DEFAULT_FULL_EVERY,
                 probe_size: int | None = DEFAULT_PROBE_SIZE, module: str | None = None,
                 path: str | os.PathLike[str] | None = None, sinks: Sequence[Sink] = (), use_loggers: bool = True,
                 tags: Mapping[str, Tag] | None = None, **tracker_options: Any) -> None:
        super().__init__()
        self.session = TrackingSession(probe, sinks, {"every": every, "full_every": full_every,
                                                      "probe_size": probe_size, "tags": tags, **tracker_options})
        self.module = module
        self.path = path
        self.use_loggers = use_loggers

    @property
    def history(self) -> pd.DataFrame:
        """The records so far, one row per record."""
        return self.session.history

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Create the tracker (after a checkpoint was restored) and record the starting step."""
        if not trainer.is_global_zero:
            return
        path = self.path or Path(_checkpoint_folder(trainer)) / HISTORY_NAME
        resume = trainer.ckpt_path is not None or trainer.global_step > 0
        sinks = logger_sinks(trainer.loggers) if self.use_loggers else []
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.session.start(unwrap(pl_module, self.module), path, resume=resume, sinks=sinks, optimizer=optimizer)
        self.session.record(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Record after the optimiser step if the global step is due (gradient accumulation: once per step)."""
        self.session.record(trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the sinks this callback opened."""
        self.session.close()

    def state_dict(self) -> dict[str, Any]:
        """Save where the history is, so that a resumed run finds it."""
        return {"path": self.session.path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the history of the checkpoint's run (unless ``path=`` was given)."""
        self.path = self.path or state_dict.get("path")


def logger_sinks(loggers: Sequence[object]) -> list[Sink]:
    """Return a sink for each of ``loggers`` that is a TensorBoard, MLflow or W&B logger (the others are skipped)."""
    kinds = pl.loggers
    sinks: list[Sink] = []
    for logger in loggers:
        if isinstance(logger, kinds.TensorBoardLogger):
            sinks.append(TensorBoardSink(logger.experiment))
        elif isinstance(logger, kinds.MLFlowLogger):
            sinks.append(MLflowSink(logger.experiment, logger.run_id))
        elif isinstance(logger, kinds.WandbLogger):
            sinks.append(WandbSink(logger.experiment))
    return sinks


def _checkpoint_folder(trainer: pl.Trainer) -> str:
    checkpoint = trainer.checkpoint_callback
    folder = getattr(checkpoint, "dirpath", None) if checkpoint is not None else None
    return folder or trainer.default_root_dir
