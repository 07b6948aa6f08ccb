"""The Lightning callback in real ``Trainer.fit`` runs on the digits: the same history as the plain tracker,
training left untouched, resume from a checkpoint, and the trainer's own loggers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diagnostics.tracking import AlignmentTracker
from diagnostics.tracking.history import read_history

pl = pytest.importorskip("lightning.pytorch")
from diagnostics.integrations.lightning import AlignmentCallback  # noqa: E402

#: Columns that are timings, not measurements.
TIMING = ["measure_seconds", "wall_time"]
STEPS, BATCH, EVERY = 6, 32, 2
OPTIONS = {"every": EVERY, "full_every": 2, "loss": "ce", "probe_size": 24}


def _bf16_cpu() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), so that bf16-mixed is realistic."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISION = "bf16-mixed" if _bf16_cpu() else "32-true"


class DigitsModule(pl.LightningModule):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _loader(digits) -> DataLoader:
    """Three batches per epoch: a checkpoint every 3 steps falls on an epoch's end, where a resumed run
    continues exactly (mid-epoch, a plain DataLoader would start its epoch again)."""
    X, y = digits
    return DataLoader(TensorDataset(X[: 3 * BATCH], y[: 3 * BATCH]), batch_size=BATCH, shuffle=False)


def _trainer(root: Path, max_steps: int, **kwargs) -> pl.Trainer:
    options = {"logger": False, "enable_checkpointing": False}
    options.update(kwargs)
    return pl.Trainer(accelerator="cpu", devices=1, precision=PRECISION, max_steps=max_steps, default_root_dir=root,
                      enable_progress_bar=False, enable_model_summary=False, **options)


def _plain_history(digits) -> pd.DataFrame:
    """The same training in a hand-written loop (autocast as bf16-mixed does), with the plain tracker."""
    X, y = digits
    module = DigitsModule()
    optimizer = module.configure_optimizers()
    tracker = AlignmentTracker(module, (X, y), **OPTIONS)
    batches = (batch for _ in range(STEPS) for batch in _loader(digits))
    for step in range(STEPS + 1):
        tracker.step(step)
        if step == STEPS:
            break
        xb, yb = next(batches)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=PRECISION == "bf16-mixed"):
            loss = F.cross_entropy(module(xb), yb)
        loss.backward()
        optimizer.step()
    return tracker.history


def _assert_same_measurements(a: pd.DataFrame, b: pd.DataFrame, skip=()) -> None:
    assert a.step.tolist() == b.step.tolist()
    columns = [c for c in a.columns if c not in TIMING and c not in skip]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[columns].reset_index(drop=True), b[columns].reset_index(drop=True),
                                  check_exact=True)


def test_fit_records_what_the_plain_tracker_records_and_resumes_from_a_checkpoint(tmp_path, digits):
    plain = _plain_history(digits)
    assert plain.step.tolist() == [0, 2, 4, 6] and plain.tier.tolist() == ["full", "cheap", "full", "cheap"]

    callback = AlignmentCallback(digits, tags={"width": 16, "seed": 0}, **OPTIONS)
    _trainer(tmp_path / "whole", STEPS).fit(DigitsModule(), _loader(digits))
    whole = _trainer(tmp_path / "whole-2", STEPS, callbacks=[callback])
    whole.fit(DigitsModule(), _loader(digits))
    _assert_same_measurements(callback.history, plain)
    meta, _ = read_history(tmp_path / "whole-2" / "alignment.jsonl")  # no checkpoint callback: the root folder
    assert meta["tags"] == {"width": 16, "seed": 0}
    assert {k: meta["optimizer"][k] for k in ("name", "lr", "momentum")} == {"name": "SGD", "lr": 0.1, "momentum": 0.9}

    # interrupted after 3 steps (a checkpoint at step 3), then resumed from it to the end
    folder = tmp_path / "resumed"
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=3, save_top_k=-1)
    first = AlignmentCallback(digits, **OPTIONS)
    _trainer(folder, 3, callbacks=[first, checkpoints], enable_checkpointing=True).fit(DigitsModule(), _loader(digits))
    assert first.history.step.tolist() == [0, 2] and (folder / "ckpt" / "alignment.jsonl").exists()
    second = AlignmentCallback(digits, **OPTIONS)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=3, save_top_k=-1)
    _trainer(folder, STEPS, callbacks=[second, checkpoints], enable_checkpointing=True).fit(
        DigitsModule(), _loader(digits), ckpt_path=str(folder / "ckpt" / "epoch=0-step=3.ckpt"))
    # the first record after a resume has no previous sketch, Gram or warm start (``ν``) to continue from
    cold = ["kernel_movement_prev", "kernel_velocity_sketch", "witness_residual", "witness_certificate"]
    _assert_same_measurements(second.history, plain, skip=cold)
    _assert_same_measurements(second.history.iloc[3:], plain.iloc[3:])
    assert np.isnan(second.history.kernel_velocity_sketch.iloc[2])


def test_measuring_leaves_training_untouched_and_writes_to_the_trainers_loggers(tmp_path, digits, monkeypatch):
    """With dropout the training draws random numbers: a measurement that moved the random stream, the
    gradients or the optimiser state would change the trained weights."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    pytest.importorskip("mlflow")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    reference = DigitsModule(dropout=0.2)
    torch.manual_seed(1)
    _trainer(tmp_path / "plain", STEPS).fit(reference, _loader(digits))

    tensorboard = pl.loggers.TensorBoardLogger(tmp_path / "tb", name="run")
    mlflow = pl.loggers.MLFlowLogger(experiment_name="digits", tracking_uri=(tmp_path / "mlruns").as_uri())
    callback = AlignmentCallback(digits, **OPTIONS)
    watched = DigitsModule(dropout=0.2)
    torch.manual_seed(1)
    _trainer(tmp_path / "watched", STEPS, callbacks=[callback], logger=[tensorboard, mlflow]).fit(
        watched, _loader(digits))
    for (name, a), b in zip(reference.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    steps = callback.history.step.tolist()

    events = accumulator.EventAccumulator(tensorboard.log_dir)
    events.Reload()
    assert [e.step for e in events.Scalars("alignment/loss")] == steps
    assert [e.step for e in events.Histograms("alignment/log10_eigenvalues")][-1] == 4
    metrics = mlflow.experiment.get_metric_history(mlflow.run_id, "alignment/grad_norm")
    assert [m.step for m in metrics] == steps
    assert [m.value for m in metrics] == callback.history.grad_norm.tolist()
