"""Alignment tracking in a PyTorch Lightning run: ``AlignmentCallback`` (install the extra ``[lightning]``).

>>> from diagnostics.integrations.lightning import AlignmentCallback            # doctest: +SKIP
>>> callback = AlignmentCallback((X, y), loss="ce")                            # doctest: +SKIP
>>> stop = EarlyStopping(monitor="alignment/grad_norm", stopping_threshold=1e-3)  # doctest: +SKIP
>>> lightning.Trainer(callbacks=[callback, stop], max_steps=2000).fit(module, loader)  # doctest: +SKIP
>>> callback.history                                                           # doctest: +SKIP

The callback behaves like Lightning's own (``ModelCheckpoint``, ``EarlyStopping``, ``LearningRateMonitor``):

- its options and probe are checked when it is built, the model (``module=``) in ``setup``;
- it measures the ``LightningModule`` (or its submodule ``module=``) with an
  :class:`~diagnostics.tracking.AlignmentTracker` after the optimiser steps its cadence names (about 20 records
  per run by default, the last step included), on the process of global rank zero only, outside autocast and
  on copies of the parameters (gradients, optimiser state and the random stream are left as they were);
- each record's measurements go into ``trainer.callback_metrics`` as ``alignment/<column>``, so
  ``EarlyStopping(monitor="alignment/grad_norm")`` and ``ModelCheckpoint(monitor=...)`` can act on them, and to
  every logger of the trainer (``log_metrics``: CSV, TensorBoard, MLflow, W&B, …); the run's fixed settings go
  to the loggers once, as hyper-parameters; histograms and figures of full records go to the TensorBoard,
  MLflow and W&B loggers;
- its history is ``alignment.jsonl`` in the checkpoint folder (the ``ModelCheckpoint``'s ``dirpath``, else the
  trainer's ``default_root_dir``); a new run into a folder with an earlier history writes ``alignment-v1.jsonl``
  (as ``ModelCheckpoint`` versions its files), and ``trainer.fit(..., ckpt_path=...)`` continues the history of
  the checkpoint's run, found relative to the checkpoint (a moved run folder resumes where it now is), without
  the records the interrupted run wrote after that checkpoint;
- its ``state_key`` holds its ``name``, so several callbacks (several probes) live in one trainer under
  different names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..tracking.history import load_history
from ..tracking.meta import Tag
from ._optional import require
from .session import (
    DEFAULT_EVERY,
    DEFAULT_FULL_EVERY,
    DEFAULT_NAME,
    DEFAULT_PROBE_SIZE,
    TrackingSession,
    latest,
    unwrap,
    versioned,
)
from .sinks import MLflowSink, Sink, TensorBoardSink, WandbSink

pl = require("lightning.pytorch", "lightning")

__all__ = ["AlignmentCallback", "logger_sinks"]


class AlignmentCallback(pl.Callback):
    """Track the alignment quantities during ``Trainer.fit`` (see the module docstring).

    Parameters
    ----------
    probe
        Probe data, as for :class:`~diagnostics.tracking.AlignmentTracker` (pairs, a data set, a DataLoader);
        a seeded subset of ``probe_size`` samples is read when the callback is built.
    name
        The prefix of the metrics (``<name>/grad_norm``), the stem of the history file and the callback's
        ``state_key``: give each callback of a trainer its own.
    every, full_every, probe_size
        A record every ``every`` optimiser steps (a number of steps, or a fraction of the run in ``(0, 1)``:
        the default 0.05 records about 20 times), and at the run's last step; a full one every ``full_every``
        records (the others are cheap, about one training step each; ``full_every=None``: every record is
        full) and at the last step; on ``probe_size`` samples.
    module
        Dotted name of the submodule to measure (``None``: the ``LightningModule``'s own forward).
    path
        The history file (default: ``<name>.jsonl`` in the checkpoint folder).
    sinks
        More writers of the records (:mod:`~diagnostics.integrations.sinks`).
    use_loggers
        Also write to the trainer's loggers.
    tags
        Labels of the run, written into the history's header (``meta["tags"]``); the header also describes the
        trainer's optimiser (``meta["optimizer"]``).
    **tracker_options
        Any other argument of :class:`~diagnostics.tracking.AlignmentTracker` (``loss``, ``params``,
        ``output``, ``dtype``, ``representation``, ``horizon``, ...).

    Attributes
    ----------
    history
        The records of the current (or last) run as a DataFrame (empty on processes other than rank zero).
    """

    def __init__(self, probe: object, *, name: str = DEFAULT_NAME, every: int | float = DEFAULT_EVERY,
                 full_every: int | None = DEFAULT_FULL_EVERY, probe_size: int | None = DEFAULT_PROBE_SIZE,
                 module: str | None = None, path: str | os.PathLike[str] | None = None, sinks: Sequence[Sink] = (),
                 use_loggers: bool = True, tags: Mapping[str, Tag] | None = None, **tracker_options: Any) -> None:
        super().__init__()
        self.session = TrackingSession(probe, name=name, every=every, sinks=sinks, owner=type(self).__name__,
                                       full_every=full_every, probe_size=probe_size, tags=tags, **tracker_options)
        self.name, self.module, self.path, self.use_loggers = name, module, path, use_loggers
        #: The history file named by the checkpoint a run resumes from (relative to the checkpoint's folder).
        self._restored: str | None = None
        self._folder: Path | None = None

    @property
    def state_key(self) -> str:
        """``AlignmentCallback{'name': ...}``: one state per callback name in a checkpoint."""
        return self._generate_state_key(name=self.name)

    @property
    def history(self) -> pd.DataFrame:
        """The records of the current (or last) run, one row per record.

        In a process where the callback did not run (``strategy="ddp_spawn"`` trains in spawned processes), the
        history file ``path=`` names is read instead.
        """
        if self.session.tracker is None and self.path is not None and latest(self.path).exists():
            return load_history(latest(self.path))
        return self.session.history

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the model to measure before training starts."""
        unwrap(pl_module, self.module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Create the run's tracker (after a checkpoint was restored) and record the starting step."""
        if not trainer.is_global_zero:  # the other processes only keep the cadence, to receive the metrics
            self.session.schedule(trainer.estimated_stepping_batches)
            self._record(trainer)
            return
        self._folder = Path(_checkpoint_folder(trainer))
        resume = trainer.ckpt_path is not None
        path = self._history_path(trainer) if resume else versioned(self.path or self._folder / f"{self.name}.jsonl")
        self.session.start(unwrap(pl_module, self.module), path, total_steps=trainer.estimated_stepping_batches,
                           resume_at=trainer.global_step if resume else None,
                           optimizer=trainer.optimizers[0] if trainer.optimizers else None,
                           sinks=logger_sinks(trainer.loggers, self.name) if self.use_loggers else [])
        if self.use_loggers:
            for logger in trainer.loggers:
                logger.log_hyperparams({f"{self.name}/{k}": v for k, v in self.session.settings.items()})
        start_method = getattr(trainer.strategy.launcher, "_start_method", None)
        if start_method is not None:  # ddp_spawn, ddp_fork, ddp_notebook: this callback is a copy in a child process
            pl.utilities.rank_zero_warn(
                f"{type(self).__name__} runs in the processes that {type(trainer.strategy).__name__} started "
                f"({start_method}): in the process that called fit, callback.history stays empty. The history is "
                f"written to {self.session.path}; read it with diagnostics.tracking.load_history"
                + ("" if self.path else ", or pass path= to the callback, whose history then reads it"))
        self._record(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Record after the optimiser step if the global step is due (gradient accumulation: once per step)."""
        self._record(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the last step (a run stopped early included) and close the run's sinks."""
        self._record(trainer, final=True)
        self.session.close()

    def state_dict(self) -> dict[str, Any]:
        """Save where the history is, relative to the checkpoint folder (so a moved run folder still finds it)."""
        path = self.session.path
        if path is not None and self._folder is not None:
            path = os.path.relpath(path, self._folder)
        return {"history": path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember the history of the checkpoint's run, to continue it."""
        self._restored = state_dict.get("history")

    # ------------------------------------------------------------------------------------------
    def _history_path(self, trainer: pl.Trainer) -> Path:
        """Return the history a resumed run continues: ``path=``, else the one the checkpoint names, next to it."""
        if self.path is not None:
            return latest(self.path)
        if self._restored is not None:
            return Path(trainer.ckpt_path).parent / self._restored
        return versioned(self._folder / f"{self.name}.jsonl")

    def _record(self, trainer: pl.Trainer, final: bool = False) -> None:
        """Record if due, and hand the measurements to the trainer's metrics (on every process) and loggers.

        Rank zero measures; with several processes it broadcasts the metrics, so that a callback monitoring them
        (``EarlyStopping``, ``ModelCheckpoint``) finds them on every process, as it finds the metrics of
        ``self.log``.
        """
        step, final = trainer.global_step, final or trainer.should_stop
        if not self.session.due(step, final=final):
            return
        record = self.session.record(step, final=final)
        metrics = {} if record is None else self.session.metrics(record)
        if trainer.world_size > 1:
            metrics = trainer.strategy.broadcast(metrics, src=0)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if metrics and self.use_loggers and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)


def logger_sinks(loggers: Sequence[object], prefix: str = DEFAULT_NAME) -> list[Sink]:
    """Return a sink of histograms and figures (``scalars=False``) for each TensorBoard, MLflow or W&B logger."""
    kinds = pl.loggers
    sinks: list[Sink] = []
    for logger in loggers:
        if isinstance(logger, kinds.TensorBoardLogger):
            sinks.append(TensorBoardSink(logger.experiment, scalars=False, prefix=prefix))
        elif isinstance(logger, kinds.MLFlowLogger):
            sinks.append(MLflowSink(logger.experiment, logger.run_id, scalars=False, prefix=prefix))
        elif isinstance(logger, kinds.WandbLogger):
            sinks.append(WandbSink(logger.experiment, scalars=False, prefix=prefix))
    return sinks


def _checkpoint_folder(trainer: pl.Trainer) -> str:
    checkpoint = trainer.checkpoint_callback
    folder = getattr(checkpoint, "dirpath", None) if checkpoint is not None else None
    return folder or trainer.default_root_dir
