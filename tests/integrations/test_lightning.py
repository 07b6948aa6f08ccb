"""The Lightning callback in real ``Trainer.fit`` runs on the digits, held to the conventions of Lightning's own
callbacks: the same history as the plain tracker, training left untouched, metrics in ``callback_metrics`` and
every logger, resume from a checkpoint (moved or not), a ``state_key`` per name, versioned histories, checks at
construction and in ``setup``."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from diagnostics.errors import DiagnosticsError
from diagnostics.integrations.sinks import Sink
from diagnostics.tracking import AlignmentTracker
from diagnostics.tracking.history import read_history

pl = pytest.importorskip("lightning.pytorch")
from diagnostics.integrations.lightning import AlignmentCallback  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings(
    "ignore:The number of training batches", "ignore:.*does not have many workers", "ignore:Checkpoint directory",
    "ignore:.*LeafSpec.*is deprecated", "ignore:The dirpath has changed")]

#: Columns that are timings, not measurements.
TIMING = ["measure_seconds", "wall_time"]
STEPS, BATCH, EVERY = 6, 32, 2
#: One strategy for every record: ``auto`` chooses among exact plans by timing them, whose roundings differ.
OPTIONS = {"every": EVERY, "full_every": 3, "loss": "ce", "probe_size": 24, "strategy": "structured"}


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


class Collect(Sink):
    def __init__(self) -> None:
        self.steps = []

    def write(self, record, report=None) -> None:
        self.steps.append(record["step"])


def _loader(digits, reverse: bool = False, shuffle: bool = False) -> DataLoader:
    """Three batches per epoch: a checkpoint every 3 steps falls on an epoch's end, where a resumed run
    continues exactly (mid-epoch, a plain DataLoader would start its epoch again)."""
    X, y = digits
    X, y = X[: 3 * BATCH], y[: 3 * BATCH]
    if reverse:  # another trajectory from the same weights
        X, y = X.flip(0), y.flip(0)
    return DataLoader(TensorDataset(X, y), batch_size=BATCH, shuffle=shuffle)


def _trainer(root: Path, max_steps: int = STEPS, **kwargs) -> pl.Trainer:
    options = {"logger": False, "enable_checkpointing": False, "max_steps": max_steps, "devices": 1}
    options.update(kwargs)
    return pl.Trainer(accelerator="cpu", precision=PRECISION, default_root_dir=root,
                      enable_progress_bar=False, enable_model_summary=False, **options)


def _plain_history(digits) -> pd.DataFrame:
    """The same training in a hand-written loop (autocast as bf16-mixed does), with the plain tracker; the last
    step is recorded in full, as the callback does."""
    X, y = digits
    module = DigitsModule()
    optimizer = module.configure_optimizers()
    tracker = AlignmentTracker(module, (X, y), **OPTIONS)
    batches = (batch for _ in range(STEPS) for batch in _loader(digits))
    for step in range(STEPS):
        tracker.step(step)
        xb, yb = next(batches)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=PRECISION == "bf16-mixed"):
            loss = F.cross_entropy(module(xb), yb)
        loss.backward()
        optimizer.step()
    tracker.measure(STEPS, full=True)
    return tracker.history


def _assert_same_measurements(a: pd.DataFrame, b: pd.DataFrame, skip=()) -> None:
    assert a.step.tolist() == b.step.tolist()
    columns = [c for c in a.columns if c not in TIMING and c not in skip]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[columns].reset_index(drop=True), b[columns].reset_index(drop=True),
                                  check_exact=True)


def test_fit_records_what_the_plain_tracker_records_into_the_trainers_metrics_and_loggers(tmp_path, digits):
    plain = _plain_history(digits)
    assert plain.step.tolist() == [0, 2, 4, 6] and plain.tier.tolist() == ["full", "cheap", "cheap", "full"]

    callback = AlignmentCallback(digits, tags={"width": 16, "seed": 0}, **OPTIONS)
    trainer = _trainer(tmp_path, logger=pl.loggers.CSVLogger(tmp_path, name="csv"), callbacks=[callback])
    trainer.fit(DigitsModule(), _loader(digits))
    _assert_same_measurements(callback.history, plain)
    meta, _ = read_history(tmp_path / "alignment.jsonl")  # no checkpoint callback: the root folder
    assert meta["tags"] == {"width": 16, "seed": 0}
    assert {k: meta["optimizer"][k] for k in ("name", "lr", "momentum")} == {"name": "SGD", "lr": 0.1, "momentum": 0.9}

    # the measurements are the trainer's metrics, the constants its hyper-parameters (logged once)
    last = callback.history.iloc[-1]
    assert float(trainer.callback_metrics["alignment/grad_norm"]) == pytest.approx(last.grad_norm, rel=1e-6)
    assert "alignment/n_params" not in trainer.callback_metrics
    folder = Path(trainer.logger.log_dir)
    rows = [r for r in csv.DictReader((folder / "metrics.csv").open()) if r.get("alignment/loss")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]
    assert [float(r["alignment/loss"]) for r in rows] == pytest.approx(callback.history.loss.tolist(), rel=1e-6)
    assert not any(k.endswith(("n_params", "n_samples", "residual_tol", "measure_seconds")) for k in rows[0])
    hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert hparams["alignment/loss"] == "ce" and hparams["alignment/n_params"] == int(last.n_params)
    assert hparams["alignment/tags/width"] == 16


def test_resume_continues_the_checkpoints_history_where_the_run_folder_now_is(tmp_path, digits):
    """Crashed after step 6 with a checkpoint at step 3, the run folder moved, then resumed from that checkpoint on
    another trajectory: the history continues in the moved folder (the checkpoint names it relative to itself, with
    its reference K_0), and the records the crashed run wrote after step 3 are replaced by the resumed run's."""
    folder = tmp_path / "run"
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", every_n_train_steps=3, save_top_k=-1)
    crashed = AlignmentCallback(digits, **OPTIONS)
    _trainer(folder, callbacks=[crashed, checkpoints], enable_checkpointing=True).fit(DigitsModule(), _loader(digits))
    before = crashed.history
    assert before.step.tolist() == [0, 2, 4, 6] and (folder / "ckpt" / "alignment.jsonl").exists()
    moved = tmp_path / "moved"
    shutil.move(folder, moved)

    resumed = AlignmentCallback(digits, **OPTIONS)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=moved / "ckpt", every_n_train_steps=3, save_top_k=-1)
    _trainer(moved, callbacks=[resumed, checkpoints], enable_checkpointing=True).fit(
        DigitsModule(), _loader(digits, reverse=True), ckpt_path=str(moved / "ckpt" / "epoch=0-step=3.ckpt"))
    assert not folder.exists() and resumed.session.path == str(moved / "ckpt" / "alignment.jsonl")
    after = read_history(moved / "ckpt" / "alignment.jsonl")[1]
    assert [r["step"] for r in after] == [0, 2, 4, 6] and pd.DataFrame(after).equals(resumed.history)
    _assert_same_measurements(resumed.history.iloc[:2], before.iloc[:2])  # kept: before the checkpoint
    assert (resumed.history.loss.iloc[2:].to_numpy() != before.loss.iloc[2:].to_numpy()).all()  # measured again
    assert resumed.history.kernel_movement_init.iloc[-1] > 0  # movements still from the original K_0


class DigitsStream(IterableDataset):
    """The digits as a stream, shuffled by the global random stream (as streaming data sets' buffers are)."""

    def __init__(self, digits) -> None:
        self.X, self.y = digits

    def __iter__(self):
        for i in torch.randperm(len(self.y)).tolist():
            yield self.X[i], self.y[i]


def test_measuring_leaves_training_untouched_and_writes_to_the_trainers_loggers(tmp_path, digits, monkeypatch):
    """Dropout and a shuffled loader draw random numbers, and so does reading the probe, a DataLoader over a stream:
    a callback that moved the random stream, the gradients or the optimiser state would change the trained weights."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    pytest.importorskip("mlflow")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    torch.manual_seed(1)
    reference = DigitsModule(dropout=0.2)
    _trainer(tmp_path / "plain").fit(reference, _loader(digits, shuffle=True))

    tensorboard = pl.loggers.TensorBoardLogger(tmp_path / "tb", name="run")
    mlflow = pl.loggers.MLFlowLogger(experiment_name="digits", tracking_uri=(tmp_path / "mlruns").as_uri())
    torch.manual_seed(1)
    watched = DigitsModule(dropout=0.2)
    callback = AlignmentCallback(DataLoader(DigitsStream(digits), batch_size=10), **OPTIONS)
    _trainer(tmp_path / "watched", callbacks=[callback], logger=[tensorboard, mlflow]).fit(
        watched, _loader(digits, shuffle=True))
    for (name, a), b in zip(reference.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    steps = callback.history.step.tolist()
    assert steps == [0, 2, 4, 6]

    events = accumulator.EventAccumulator(tensorboard.log_dir, size_guidance={accumulator.HISTOGRAMS: 0})
    events.Reload()
    assert [e.step for e in events.Scalars("alignment/loss")] == steps
    assert [e.step for e in events.Histograms("alignment/log10_eigenvalues")] == [0, 6]
    metrics = mlflow.experiment.get_metric_history(mlflow.run_id, "alignment/grad_norm")
    assert [m.step for m in metrics] == steps
    assert [m.value for m in metrics] == pytest.approx(callback.history.grad_norm.tolist(), rel=1e-12)
    params = mlflow.experiment.get_run(mlflow.run_id).data.params
    assert params["alignment/loss"] == "ce" and "alignment/n_params" in params


def test_two_named_callbacks_in_one_trainer_and_one_callback_reused_for_a_second_fit(tmp_path, digits):
    """Two probes in one trainer, each its own state_key, metrics and history; fitting again into the same folder
    writes new versions of both histories (the first run's are kept), and every record reaches a sink once."""
    X, y = digits
    sink = Collect()
    train = AlignmentCallback((X[:64], y[:64]), name="train", sinks=[sink], **OPTIONS)
    held_out = AlignmentCallback((X[-64:], y[-64:]), name="held_out", **OPTIONS)
    assert train.state_key != held_out.state_key
    for _ in range(2):
        checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=STEPS)
        trainer = _trainer(tmp_path, callbacks=[train, held_out, checkpoints], enable_checkpointing=True)
        trainer.fit(DigitsModule(), _loader(digits))
        assert {"train/grad_norm", "held_out/grad_norm"} <= set(trainer.callback_metrics)
    assert sink.steps == [0, 2, 4, 6] * 2
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "held_out-v1.jsonl", "held_out.jsonl", "train-v1.jsonl", "train.jsonl"]
    assert [len(read_history(tmp_path / f"train{v}.jsonl")[1]) for v in ("", "-v1")] == [4, 4]
    states = torch.load(next(tmp_path.glob("*-v1.ckpt")), weights_only=False)["callbacks"]
    assert states[train.state_key] == {"history": "train-v1.jsonl"}
    assert states[held_out.state_key] == {"history": "held_out-v1.jsonl"}
    with pytest.raises(RuntimeError, match="state_key"):  # Lightning refuses two states under one key
        pl.Trainer(callbacks=[AlignmentCallback(digits, **OPTIONS), AlignmentCallback(digits, **OPTIONS)])


def test_early_stopping_on_an_alignment_metric_stops_the_run(tmp_path, digits):
    """With the default cadence (about 20 records per run), EarlyStopping monitors ``alignment/loss`` like any
    metric: the run stops at the first epoch's end, and its last step is recorded in full."""
    callback = AlignmentCallback(digits, loss="ce", probe_size=24)
    stop = pl.callbacks.EarlyStopping(monitor="alignment/loss", stopping_threshold=100.0,
                                      check_on_train_epoch_end=True)
    trainer = _trainer(tmp_path, max_steps=-1, max_epochs=10, callbacks=[callback, stop])
    trainer.fit(DigitsModule(), _loader(digits))
    assert trainer.global_step == 3 and stop.stopped_epoch == 0
    history = callback.history
    # 10 epochs of 3 steps: a record every ceil(0.05 · 30) = 2 steps, and the last step the run reached
    assert history.step.tolist() == [0, 2, 3] and history.tier.tolist() == ["full", "cheap", "full"]


def test_bad_options_fail_when_the_callback_is_built_and_a_wrong_module_in_setup(tmp_path, digits):
    with pytest.raises(DiagnosticsError, match="did you mean 'loss'"):
        AlignmentCallback(digits, los="ce")
    with pytest.raises(DiagnosticsError, match="loss must be one of"):
        AlignmentCallback(digits, loss="nll")
    callback = AlignmentCallback(digits, module="head", **OPTIONS)
    with pytest.raises(DiagnosticsError, match="no submodule 'head'"):
        _trainer(tmp_path, callbacks=[callback]).fit(DigitsModule(), _loader(digits))
    assert not list(tmp_path.rglob("*.jsonl"))  # refused before any work


def test_ddp_spawn_warns_and_the_launching_process_reads_the_history_file(tmp_path, digits, capfd):
    """Training in a spawned process leaves this process's callback unused: it says so, and with ``path=`` its
    history reads the file the spawned process wrote."""
    path = tmp_path / "history.jsonl"
    callback = AlignmentCallback(digits, path=path, **OPTIONS)
    _trainer(tmp_path, strategy="ddp_spawn", callbacks=[callback]).fit(DigitsModule(), _loader(digits))
    assert "callback.history stays empty" in capfd.readouterr().err
    assert callback.session.tracker is None and callback.history.step.tolist() == [0, 2, 4, 6]


def test_over_two_processes_early_stopping_on_an_alignment_metric_stops_every_process(tmp_path, digits):
    """Two gloo processes (forked): rank zero measures and sends the metrics to the other, so EarlyStopping, which
    reduces its decision over the processes, finds the metric on both."""
    path = tmp_path / "history.jsonl"
    callback = AlignmentCallback(digits, path=path, **OPTIONS)
    stop = pl.callbacks.EarlyStopping(monitor="alignment/loss", stopping_threshold=100.0,
                                      check_on_train_epoch_end=True)
    _trainer(tmp_path, max_steps=-1, max_epochs=5, devices=2, strategy="ddp_fork", callbacks=[callback, stop]).fit(
        DigitsModule(), _loader(digits))
    # 2 steps per epoch on each process; stopped at the first epoch's end
    assert callback.history.step.tolist() == [0, 2]
