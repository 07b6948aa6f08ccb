"""Alignment tracking in a Hugging Face ``Trainer`` run: ``AlignmentCallback`` (install the extra ``[transformers]``).

>>> from diagnostics.integrations.transformers import AlignmentCallback                # doctest: +SKIP
>>> callback = AlignmentCallback(train_dataset, loss="ce")  # dict samples with labels  # doctest: +SKIP
>>> Trainer(model, args, train_dataset=train_dataset, callbacks=[callback]).train()    # doctest: +SKIP
>>> callback.history                                                                   # doctest: +SKIP

The callback behaves like the ``Trainer``'s own callbacks:

- its options and probe are checked when it is built (the probe may be the training set itself: samples that
  are dicts with ``labels``), the model (``module=``) when the ``Trainer`` is built;
- it measures the unwrapped model's ``logits`` (``output=`` selects another output) with an
  :class:`~diagnostics.tracking.AlignmentTracker` after the optimiser steps its cadence names (as
  ``logging_steps``: a number of steps, or a fraction of ``max_steps``; about 20 records per run by default, the
  last step included), on the world's main process only, outside autocast and on copies of the parameters
  (gradients, optimiser state and the random stream are left as they were);
- each record is a log event of the ``Trainer``: its measurements, ``alignment/<column>``, are appended to
  ``state.log_history`` and sent to every reporter's ``on_log`` (TensorBoard, MLflow, W&B, …, whatever
  ``report_to`` names), at the record's step; the run's fixed settings, histograms of the spectrum and the
  alignment-curve figures go to TensorBoard (a run ``<name>`` under ``$TENSORBOARD_LOGGING_DIR``, else
  ``output_dir/runs``), to the MLflow run the ``Trainer`` started and to the active W&B run;
- its history is ``alignment.jsonl`` in ``args.output_dir``, next to the ``checkpoint-*`` folders (a new run into a
  folder with an earlier history writes ``alignment-v1.jsonl``); the history's name is saved in every
  checkpoint's ``trainer_state.json``, so ``trainer.train(resume_from_checkpoint=...)`` continues it, without the
  records the interrupted run wrote after that checkpoint.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DiagnosticsError
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

hf = require("transformers", "transformers")

__all__ = ["AlignmentCallback", "report_to_sinks"]


class AlignmentCallback(hf.TrainerCallback):
    """Track the alignment quantities during ``Trainer.train`` (see the module docstring).

    Parameters
    ----------
    probe
        Probe data: a data set of dict samples with ``labels`` (e.g. the ``train_dataset``; samples of different
        lengths need a ``DataLoader`` with the trainer's padding collator), or ``(inputs, labels)`` with the
        inputs a tensor or a dict of tensors (``input_ids``, ``attention_mask``, ...), as for
        :class:`~diagnostics.tracking.AlignmentTracker`; a seeded subset of ``probe_size`` samples is read when
        the callback is built.
    name
        The prefix of the metrics (``<name>/grad_norm``) and the stem of the history file: give each callback
        of a trainer its own.
    every, full_every, probe_size
        A record every ``every`` optimiser steps (a number of steps, or a fraction of ``max_steps`` in
        ``(0, 1)``: the default 0.05 records about 20 times), and at the last step; a full one every
        ``full_every`` records (the others are cheap, about one training step each) and at the last step; on
        ``probe_size`` samples.
    output
        The model output to measure (default ``"logits"``).
    module
        Dotted name of a submodule to measure instead of the whole model.
    path
        The history file (default: ``<name>.jsonl`` in ``args.output_dir``).
    sinks
        More writers of the records (:mod:`~diagnostics.integrations.sinks`).
    use_report_to
        Also write the settings, histograms and figures to the loggers ``args.report_to`` names.
    tags
        Labels of the run, written into the history's header (``meta["tags"]``); the header also describes the
        trainer's optimiser (``meta["optimizer"]``).
    **tracker_options
        Any other argument of :class:`~diagnostics.tracking.AlignmentTracker`.

    Attributes
    ----------
    history
        The records of the current (or last) run as a DataFrame (empty on processes other than the main one).
    """

    def __init__(self, probe: object, *, name: str = DEFAULT_NAME, every: int | float = DEFAULT_EVERY,
                 full_every: int | None = DEFAULT_FULL_EVERY, probe_size: int | None = DEFAULT_PROBE_SIZE,
                 output: object = "logits", module: str | None = None, path: str | os.PathLike[str] | None = None,
                 sinks: Sequence[Sink] = (), use_report_to: bool = True, tags: Mapping[str, Tag] | None = None,
                 **tracker_options: Any) -> None:
        self.session = TrackingSession(probe, name=name, every=every, sinks=sinks, owner=type(self).__name__,
                                       full_every=full_every, probe_size=probe_size, output=output, tags=tags,
                                       **tracker_options)
        self.name, self.module, self.path, self.use_report_to = name, module, path, use_report_to
        self._handler: hf.trainer_callback.CallbackHandler | None = None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in ``state.stateful_callbacks`` (saved in every checkpoint)."""
        return f"{type(self).__name__}[{self.name}]"

    @property
    def history(self) -> pd.DataFrame:
        """The records of the current (or last) run, one row per record."""
        if self.session.tracker is None and self.path is not None and latest(self.path).exists():
            return load_history(latest(self.path))
        return self.session.history

    def on_init_end(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                    model: Any = None, **kwargs: Any) -> None:
        """Check the model to measure when the ``Trainer`` is built."""
        unwrap(model, self.module)

    def on_train_begin(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                       model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        """Create the run's tracker (after a checkpoint's state was loaded) and record the starting step."""
        self._handler = _calling_handler(self)
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir)
        resume = state.global_step > 0
        saved = (state.stateful_callbacks or {}).get(self.state_key, {}).get("history") if resume else None
        if self.path is not None:
            path = latest(self.path) if resume else versioned(self.path)
        else:
            path = folder / saved if saved else versioned(folder / f"{self.name}.jsonl")
        self.session.start(unwrap(model, self.module), path, total_steps=state.max_steps,
                           resume_at=state.global_step if resume else None,
                           optimizer=getattr(optimizer, "optimizer", optimizer),  # accelerate wraps the optimiser
                           sinks=report_to_sinks(args, self.name) if self.use_report_to else [])
        state.stateful_callbacks[self.state_key] = {"history": os.path.relpath(path, folder)}
        self._record(args, state, control)

    def on_step_end(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                    **kwargs: Any) -> None:
        """Record after the optimiser step if the global step is due (the last one in full)."""
        self._record(args, state, control, final=state.global_step >= state.max_steps or control.should_training_stop)

    def on_train_end(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                     **kwargs: Any) -> None:
        """Close the run's sinks."""
        self.session.close()

    def _record(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                final: bool = False) -> None:
        """Record if due, as a log event of the ``Trainer``: into ``state.log_history`` and to every reporter.

        ``Trainer.log`` does the same for the trainer's own metrics; the event is sent without resetting
        ``control.should_log``, so the trainer's own log at this step still happens.
        """
        record = self.session.record(state.global_step, final=final)
        if record is None:
            return
        metrics = self.session.metrics(record)
        state.log_history.append({**metrics, "step": state.global_step})
        if self._handler is not None:
            self._handler.call_event("on_log", args, state, control, logs=dict(metrics))


def _calling_handler(callback: AlignmentCallback) -> hf.trainer_callback.CallbackHandler:
    """Return the ``CallbackHandler`` calling ``callback`` now, and refuse a second callback of the same name.

    The ``Trainer`` passes its callbacks neither itself nor its handler; a record reaches every reporter only as
    a log event sent through the handler, as ``Trainer.log`` sends one. The handler is the caller of the hook.
    """
    frame = inspect.currentframe()
    while frame is not None and not isinstance(frame.f_locals.get("self"), hf.trainer_callback.CallbackHandler):
        frame = frame.f_back
    if frame is None:
        raise DiagnosticsError(f"{type(callback).__name__} must be called by a transformers Trainer (its hooks run "
                               "from the Trainer's CallbackHandler)")
    handler = frame.f_locals["self"]
    twins = [c for c in handler.callbacks if isinstance(c, AlignmentCallback) and c.name == callback.name]
    if len(twins) > 1:
        raise DiagnosticsError(f"{len(twins)} AlignmentCallbacks named {callback.name!r} in one Trainer would write "
                               "the same metrics and history; give each its own name=")
    return handler


def report_to_sinks(args: hf.TrainingArguments, prefix: str = DEFAULT_NAME) -> list[Sink]:
    """Return sinks of the settings, histograms and figures for the loggers ``args.report_to`` names.

    The scalars reach these loggers through the ``Trainer``'s log events; MLflow and W&B write to the run that
    the ``Trainer``'s own callbacks started, so call it once training has begun.
    """
    report_to = args.report_to if isinstance(args.report_to, list | tuple) else [args.report_to]
    extras = {"scalars": False, "settings": True, "prefix": prefix}
    sinks: list[Sink] = []
    if "tensorboard" in report_to:
        folder = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs")
        sinks.append(TensorBoardSink(os.path.join(folder, prefix), **extras))
    if "mlflow" in report_to:
        mlflow = require("mlflow", "mlflow")
        run = mlflow.active_run()
        if run is not None:
            sinks.append(MLflowSink(mlflow.tracking.MlflowClient(mlflow.get_tracking_uri()), run.info.run_id, **extras))
    if "wandb" in report_to:
        wandb = require("wandb", "wandb")
        if wandb.run is not None:
            sinks.append(WandbSink(wandb.run, **extras))
    return sinks
