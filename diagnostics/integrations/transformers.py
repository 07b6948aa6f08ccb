"""Alignment tracking in a Hugging Face ``Trainer`` run: ``AlignmentCallback`` (install the extra ``[transformers]``).

>>> from diagnostics.integrations.transformers import AlignmentCallback                # doctest: +SKIP
>>> callback = AlignmentCallback(({"input_ids": ids, "attention_mask": mask}, labels), loss="ce")  # doctest: +SKIP
>>> Trainer(model, args, train_dataset=data, callbacks=[callback]).train()             # doctest: +SKIP
>>> callback.history                                                                   # doctest: +SKIP

The callback measures the unwrapped model's ``logits`` (``output=`` selects another output) with an
:class:`~diagnostics.tracking.AlignmentTracker` after every ``every``-th optimiser step, on the world's
main process only, outside autocast and on copies of the parameters (gradients, optimiser state and the
random stream are left as they were). The history is written to ``alignment.jsonl`` in ``args.output_dir``,
next to the ``checkpoint-*`` folders, so ``trainer.train(resume_from_checkpoint=...)`` resumes it. With
``report_to`` naming them, records also go to TensorBoard (a run ``alignment`` under
``$TENSORBOARD_LOGGING_DIR``, else ``output_dir/runs``), to the MLflow run the ``Trainer`` started and to
the active W&B run.
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

hf = require("transformers", "transformers")

__all__ = ["AlignmentCallback", "report_to_sinks"]


class AlignmentCallback(hf.TrainerCallback):
    """Track the alignment quantities during ``Trainer.train`` (see the module docstring).

    Parameters
    ----------
    probe
        Probe data ``(inputs, labels)``, the inputs a tensor or a dict of tensors (``input_ids``,
        ``attention_mask``, ...), as for :class:`~diagnostics.tracking.AlignmentTracker`.
    every, full_every, probe_size
        A record every ``every`` optimiser steps, a full one every ``full_every`` records, on ``probe_size``
        samples (the defaults cost 10–15 % of the training time on the digits models, ``docs/benchmarks.md``).
    output
        The model output to measure (default ``"logits"``).
    module
        Dotted name of a submodule to measure instead of the whole model.
    path
        The history file (default: ``alignment.jsonl`` in ``args.output_dir``).
    sinks
        More writers of the records (:mod:`~diagnostics.integrations.sinks`).
    use_report_to
        Also write to the loggers named by ``args.report_to`` (TensorBoard, MLflow, W&B).
    tags
        Labels of the run, written into the history's header (``meta["tags"]``); the header also describes the
        trainer's optimiser (``meta["optimizer"]``).
    **tracker_options
        Any other argument of :class:`~diagnostics.tracking.AlignmentTracker`.

    Attributes
    ----------
    history
        The tracker's records as a DataFrame (empty on processes other than the main one).
    """

    def __init__(self, probe: object, *, every: int = DEFAULT_EVERY, full_every: int | None = DEFAULT_FULL_EVERY,
                 probe_size: int | None = DEFAULT_PROBE_SIZE, output: object = "logits", module: str | None = None,
                 path: str | os.PathLike[str] | None = None, sinks: Sequence[Sink] = (), use_report_to: bool = True,
                 tags: Mapping[str, Tag] | None = None, **tracker_options: Any) -> None:
        self.session = TrackingSession(
            probe, sinks, {"every": every, "full_every": full_every, "probe_size": probe_size, "output": output,
                           "tags": tags, **tracker_options})
        self.module = module
        self.path = path
        self.use_report_to = use_report_to

    @property
    def history(self) -> pd.DataFrame:
        """The records so far, one row per record."""
        return self.session.history

    def on_train_begin(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                       model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        """Create the tracker (after a checkpoint's state was loaded) and record the starting step."""
        if not state.is_world_process_zero:
            return
        path = self.path or Path(args.output_dir) / HISTORY_NAME
        sinks = report_to_sinks(args) if self.use_report_to else []
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the trainer's optimiser
        self.session.start(unwrap(model, self.module), path, resume=state.global_step > 0, sinks=sinks,
                           optimizer=optimizer)
        self.session.record(state.global_step)

    def on_step_end(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                    **kwargs: Any) -> None:
        """Record after the optimiser step if the global step is due."""
        self.session.record(state.global_step)

    def on_train_end(self, args: hf.TrainingArguments, state: hf.TrainerState, control: hf.TrainerControl,
                     **kwargs: Any) -> None:
        """Close the sinks this callback opened."""
        self.session.close()


def report_to_sinks(args: hf.TrainingArguments) -> list[Sink]:
    """Return sinks for the loggers that ``args.report_to`` names: TensorBoard, MLflow and W&B.

    MLflow and W&B write to the run that the ``Trainer``'s own callbacks started, so call it once training
    has begun.
    """
    report_to = args.report_to if isinstance(args.report_to, list | tuple) else [args.report_to]
    sinks: list[Sink] = []
    if "tensorboard" in report_to:
        folder = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs")
        sinks.append(TensorBoardSink(os.path.join(folder, "alignment")))
    if "mlflow" in report_to:
        mlflow = require("mlflow", "mlflow")
        run = mlflow.active_run()
        if run is not None:
            sinks.append(MLflowSink(mlflow.tracking.MlflowClient(mlflow.get_tracking_uri()), run.info.run_id))
    if "wandb" in report_to:
        wandb = require("wandb", "wandb")
        if wandb.run is not None:
            sinks.append(WandbSink(wandb.run))
    return sinks
