"""The Hugging Face callback in a real ``Trainer.train`` run: a tiny BERT built from a config (no download) on
the digits read as token sequences (pixel intensities 0–16 as tokens), with dict inputs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits

from diagnostics.tracking import AlignmentTracker
from diagnostics.tracking.history import read_history

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from diagnostics.integrations.transformers import AlignmentCallback  # noqa: E402

STEPS = 4
#: BERT's forward branches on tensor values, so the whole-batch strategy (no vmap over samples).
OPTIONS = {"every": 2, "full_every": 2, "loss": "ce", "probe_size": 8, "strategy": "vjp"}
TIMING = ["measure_seconds", "wall_time"]


class DigitTokens(torch.utils.data.Dataset):
    """The 8×8 digits as 64 tokens each (intensity 0–16, shifted by one: id 0 is padding)."""

    def __init__(self, n: int) -> None:
        digits = load_digits()
        self.ids = torch.as_tensor(digits.data[:n], dtype=torch.long) + 1
        self.labels = torch.as_tensor(digits.target[:n], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}

    def probe(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": self.ids, "attention_mask": torch.ones_like(self.ids)}, self.labels


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


def _train(folder, callback, report_to="none", max_steps=STEPS, save_steps=None, resume=None):
    """Train with a constant learning rate (a run stopped early follows the same schedule as a whole one)."""
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=max_steps, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="constant", use_cpu=True, save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, report_to=report_to, seed=0, disable_tqdm=True, logging_steps=1,
        dataloader_num_workers=0)
    model = _bert()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DigitTokens(64), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return model


def test_train_records_what_the_plain_tracker_records_and_leaves_training_untouched(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    probe = DigitTokens(16).probe()
    callback = AlignmentCallback(probe, tags={"model": "bert"}, **OPTIONS)
    watched = _train(tmp_path / "watched", callback, report_to=["tensorboard"])
    meta, _ = read_history(tmp_path / "watched" / "alignment.jsonl")
    assert meta["tags"] == {"model": "bert"}
    assert meta["optimizer"]["name"] == "AdamW" and meta["optimizer"]["lr"] == 3e-3
    snapshots = Snapshots()
    reference = _train(tmp_path / "reference", snapshots)

    # measuring moved neither the random stream (BERT's dropout draws from it), nor gradients, nor the optimiser
    for (name, a), b in zip(reference.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    model = _bert()
    tracker = AlignmentTracker(model, probe, output="logits", **OPTIONS)
    for step, state in snapshots.states.items():
        model.load_state_dict(state)
        tracker.measure(step)
    history = callback.history
    assert history.step.tolist() == [0, 2, 4] and history.tier.tolist() == ["full", "cheap", "full"]
    columns = [c for c in history.columns if c not in TIMING]
    pd.testing.assert_frame_equal(history[columns], tracker.history[columns], check_exact=True)
    assert (tmp_path / "watched" / "alignment.jsonl").exists()

    events = accumulator.EventAccumulator(str(tmp_path / "watched" / "runs" / "alignment"))
    events.Reload()
    assert [e.step for e in events.Scalars("alignment/loss")] == [0, 2, 4]
    assert [e.value for e in events.Scalars("alignment/loss")] == pytest.approx(history.loss.tolist(), rel=1e-6)

    # stopped after a checkpoint at step 2, then resumed from it: the history continues where it was
    first = AlignmentCallback(probe, **OPTIONS)
    _train(tmp_path / "resumed", first, max_steps=2, save_steps=2)
    second = AlignmentCallback(probe, **OPTIONS)
    _train(tmp_path / "resumed", second, save_steps=2, resume=str(tmp_path / "resumed" / "checkpoint-2"))
    resumed = second.history
    assert resumed.step.tolist() == [0, 2, 4]
    cold = ["kernel_movement_prev", "kernel_velocity_sketch", "witness_residual", "witness_certificate"]
    kept = [c for c in columns if c not in cold]  # no previous Gram, sketch or warm start right after a resume
    pd.testing.assert_frame_equal(resumed[kept], history[kept], check_exact=True)
