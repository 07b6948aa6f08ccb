"""The Hugging Face callback in real ``Trainer.train`` runs: a tiny BERT built from a config (no download) on the
digits read as token sequences (pixel intensities 0–16 as tokens), with dict samples; held to the conventions of
the ``Trainer``'s own callbacks (records as log events: ``state.log_history`` and every reporter), resumable from
a checkpoint of a moved output folder, repeatable, and with the README's example on a default (SDPA) BERT."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import torch
from helpers import NO_VMAP_FALLBACK_WARNING, ROOT
from sklearn.datasets import load_digits

from diagnostics.errors import DiagnosticsError
from diagnostics.integrations.sinks import Sink
from diagnostics.tracking import AlignmentTracker
from diagnostics.tracking.history import read_history

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from diagnostics.integrations.transformers import AlignmentCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
#: One strategy for every record (``auto`` chooses among exact plans by timing them, whose roundings differ).
OPTIONS = {"every": 2, "full_every": 2, "loss": "ce", "probe_size": 8, "strategy": "vjp"}
TIMING = ["measure_seconds", "wall_time"]


class DigitTokens(torch.utils.data.Dataset):
    """The 8×8 digits as 64 tokens each (intensity 0–16, shifted by one: id 0 is padding)."""

    def __init__(self, n: int, reverse: bool = False) -> None:
        digits = load_digits()
        self.ids = torch.as_tensor(digits.data[:n], dtype=torch.long) + 1
        self.labels = torch.as_tensor(digits.target[:n], dtype=torch.long)
        if reverse:  # the same samples in another order: another trajectory
            self.ids, self.labels = self.ids.flip(0), self.labels.flip(0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=18, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=10,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


class Snapshots(transformers.TrainerCallback):
    """Copies of the weights at every ``every``-th step, without measuring anything."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def _keep(self, state, model) -> None:
        if state.global_step % OPTIONS["every"] == 0:
            self.states[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._keep(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._keep(state, model)


class Collect(Sink):
    def __init__(self) -> None:
        self.steps = []

    def write(self, record, report=None) -> None:
        self.steps.append(record["step"])


def _train(folder, callbacks, report_to="none", max_steps=STEPS, save_steps=None, resume=None, data=None):
    """Train with a constant learning rate (a run stopped early follows the same schedule as a whole one)."""
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=max_steps, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="constant", use_cpu=True, save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, report_to=report_to, seed=0, disable_tqdm=True, logging_steps=3,
        dataloader_num_workers=0)
    model = _bert()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data or DigitTokens(64), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_train_records_what_the_plain_tracker_records_as_the_trainers_log_events(tmp_path):
    """The training set itself (dict samples with labels) is the probe; records are log events: they are in
    ``state.log_history`` and reach the reporters ``report_to`` names (here TensorBoard), at their steps."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    callback = AlignmentCallback(DigitTokens(64), tags={"model": "bert"}, **OPTIONS)
    watched = _train(tmp_path / "watched", [callback], report_to=["tensorboard"])
    meta, _ = read_history(tmp_path / "watched" / "alignment.jsonl")
    assert meta["tags"] == {"model": "bert"}
    assert meta["optimizer"]["name"] == "AdamW" and meta["optimizer"]["lr"] == 3e-3
    snapshots = Snapshots()
    reference = _train(tmp_path / "reference", [snapshots])

    # measuring moved neither the random stream (BERT's dropout draws from it), nor gradients, nor the optimiser
    for (name, a), b in zip(reference.model.state_dict().items(), watched.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    model = _bert()
    tracker = AlignmentTracker(model, DigitTokens(64), output="logits", **OPTIONS)
    for step, state in snapshots.states.items():
        model.load_state_dict(state)
        tracker.measure(step, full=True if step == STEPS else None)
    history = callback.history
    assert history.step.tolist() == [0, 2, 4] and history.tier.tolist() == ["full", "cheap", "full"]
    columns = [c for c in history.columns if c not in TIMING]
    pd.testing.assert_frame_equal(history[columns], tracker.history[columns], check_exact=True)

    logged = [e for e in watched.state.log_history if "alignment/grad_norm" in e]
    assert [e["step"] for e in logged] == [0, 2, 4]
    assert [e["alignment/grad_norm"] for e in logged] == history.grad_norm.tolist()
    assert [e["step"] for e in watched.state.log_history if "loss" in e] == [3]  # the trainer's own logs still
    assert not any("alignment/n_params" in e or "alignment/measure_seconds" in e for e in logged)
    reporter = next(p.parent for p in (tmp_path / "watched" / "runs").rglob("events.out.*")
                    if p.parent.name != "alignment")  # the Trainer's TensorBoardCallback's own run
    events = accumulator.EventAccumulator(str(reporter))
    events.Reload()
    assert [e.step for e in events.Scalars("train/alignment/loss")] == [0, 2, 4]
    assert [e.value for e in events.Scalars("train/alignment/loss")] == pytest.approx(history.loss.tolist(), rel=1e-6)
    extras = accumulator.EventAccumulator(str(tmp_path / "watched" / "runs" / "alignment"),
                                          size_guidance={accumulator.HISTOGRAMS: 0})
    extras.Reload()
    assert [e.step for e in extras.Histograms("alignment/log10_eigenvalues")] == [0, 4]
    assert "alignment/settings/text_summary" in extras.Tags()["tensors"]  # the settings, once


def test_resume_from_a_moved_output_folder_continues_the_history_without_the_crashed_runs_later_records(tmp_path):
    """Crashed after step 4 with a checkpoint at step 2, the output folder moved, then resumed from that checkpoint
    on other data: the history continues in the moved folder (named in ``trainer_state.json``, relative to
    ``output_dir``), and the record the crashed run wrote at step 4 is replaced by the resumed run's."""
    crashed = AlignmentCallback(DigitTokens(64), **OPTIONS)
    _train(tmp_path / "run", [crashed], save_steps=2)
    before = crashed.history
    assert before.step.tolist() == [0, 2, 4]
    shutil.move(tmp_path / "run", tmp_path / "moved")
    resumed = AlignmentCallback(DigitTokens(64), **OPTIONS)
    _train(tmp_path / "moved", [resumed], save_steps=2, resume=str(tmp_path / "moved" / "checkpoint-2"),
           data=DigitTokens(64, reverse=True))
    assert not (tmp_path / "run").exists() and resumed.session.path == str(tmp_path / "moved" / "alignment.jsonl")
    after = resumed.history
    assert after.step.tolist() == [0, 2, 4] and pd.DataFrame(read_history(resumed.session.path)[1]).equals(after)
    kept = [c for c in after.columns if c not in TIMING]
    pd.testing.assert_frame_equal(after[kept].iloc[:2], before[kept].iloc[:2], check_exact=True)
    assert after.loss.iloc[2] != before.loss.iloc[2]  # measured again on the resumed trajectory


def test_one_callback_trains_twice_into_new_history_versions_and_twins_are_refused(tmp_path):
    sink = Collect()
    callback = AlignmentCallback(DigitTokens(64), sinks=[sink], **OPTIONS)
    for _ in range(2):
        _train(tmp_path, [callback])
    assert sink.steps == [0, 2, 4, 0, 2, 4]  # each record once per run: the sinks do not accumulate
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["alignment-v1.jsonl", "alignment.jsonl"]
    twins = [AlignmentCallback(DigitTokens(64), **OPTIONS), AlignmentCallback(DigitTokens(64), **OPTIONS)]
    with pytest.raises(DiagnosticsError, match="give each its own name="):
        _train(tmp_path / "twins", twins)
    with pytest.raises(DiagnosticsError, match="did you mean 'every'"):
        AlignmentCallback(DigitTokens(64), evry=2)


@NO_VMAP_FALLBACK_WARNING  # the full records' Gram, on SDPA's backward
def test_the_readme_example_runs_on_a_default_bert_with_sdpa_attention(tmp_path, monkeypatch):
    """The README's Hugging Face example as written: ``BertForSequenceClassification`` from a config with its
    default attention (``scaled_dot_product_attention``, which has no forward-mode derivative on the CPU), the
    training set as the probe, the default cadence."""
    monkeypatch.chdir(tmp_path)
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "integrations.transformers" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    callback, model = scope["callback"], scope["model"]
    assert model.config._attn_implementation == "sdpa"
    history = callback.history
    assert history.step.iloc[-1] == scope["args"].max_steps and history.tier.iloc[-1] == "full"
    assert len(history) == 21 and (history.tier == "cheap").sum() == 18
    assert history.grad_norm.notna().all() and history.pullback_movement_init.iloc[-1] > 0
