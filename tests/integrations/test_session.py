"""What both callbacks share: options checked at construction, the cadence, one tracker and sinks per run,
versioned history files, and the model they measure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics.errors import DiagnosticsError
from diagnostics.integrations.session import TrackingSession, latest, resolve_every, unwrap, versioned
from diagnostics.integrations.sinks import Sink


class Collect(Sink):
    def __init__(self) -> None:
        self.started, self.written = [], []

    def start(self, settings) -> None:
        self.started.append(dict(settings))

    def write(self, record, report=None) -> None:
        self.written.append((record["step"], record["tier"], report is not None))


def _data():
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(6, k, generator=gen, dtype=torch.float64) for k in (3, 2))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def test_unwrap_strips_data_parallel_and_selects_a_submodule():
    inner = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert unwrap(nn.DataParallel(inner)) is inner
    assert unwrap(nn.DataParallel(inner), "2") is inner[2]
    with pytest.raises(DiagnosticsError, match="no submodule 'head'"):
        unwrap(inner, "head")


@pytest.mark.parametrize(("options", "message"), [
    ({"los": "ce"}, "no option 'los' \\(did you mean 'loss'\\?\\)"),
    ({"loss": "cross-entropy"}, "loss must be one of"),
    ({"full_every": 0}, "full_every must be an integer ≥ 1"),
    ({"every": 1.5}, "every must be an integer number of steps or a fraction"),
    ({"every": 0}, "every must be a number of steps"),
    ({"path": "elsewhere.jsonl"}, "no option 'path'"),  # the callback's own path=, not the tracker's
    ({"name": "a/b"}, "name must be"),
    ({"tags": {"width": [1]}}, "tag 'width'"),
    ({"sinks": [print]}, "sinks must be Sink"),
    ({"probe_size": 0}, "probe_size"),
])
def test_options_and_the_probe_are_checked_when_the_callback_is_built(options, message):
    with pytest.raises(DiagnosticsError, match=message):
        TrackingSession(_data(), **options)
    with pytest.raises(DiagnosticsError, match="data must be"):
        TrackingSession(torch.ones(3))


def test_every_is_a_number_of_steps_or_a_fraction_of_the_run():
    assert resolve_every(25, 1000) == 25 and resolve_every(0.05, 1000) == 50 and resolve_every(0.05, 30) == 2
    assert resolve_every(0.05, 7) == 1
    with pytest.raises(DiagnosticsError, match="length is unknown"):
        resolve_every(0.05, float("inf"))


def test_each_run_has_its_tracker_and_sinks_and_records_its_last_step_in_full(tmp_path):
    """every=2, full_every=2 over 7 steps: records at 0, 2, 4, 6 and the last step 7, which is full; a second run
    with the same session writes each record once to the user's sink, into a new version of the history."""
    sink = Collect()
    session = TrackingSession(_data(), every=2, full_every=2, probe_size=None, sinks=[sink])
    assert session.record(0) is None and session.history.empty  # before training starts
    for run in range(2):
        session.start(_model(), versioned(tmp_path / "alignment.jsonl"), total_steps=7)
        for step in range(8):
            session.record(step)
            session.record(step)  # gradient accumulation: the same global step again
        session.close()
        assert sink.written[5 * run:] == [(0, "full", True), (2, "cheap", False), (4, "full", True),
                                          (6, "cheap", False), (7, "full", True)]
    assert len(sink.written) == 10 and len(sink.started) == 2
    assert sink.started[0]["loss"] == "mse" and sink.started[0]["every"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["alignment-v1.jsonl", "alignment.jsonl"]
    assert latest(tmp_path / "alignment.jsonl").name == "alignment-v1.jsonl"
    assert session.history.step.tolist() == [0, 2, 4, 6, 7]


def test_the_history_header_records_the_size_of_the_data_the_probe_was_drawn_from(tmp_path):
    session = TrackingSession(_data(), every=1, probe_size=4)  # a probe of 4 of the 6 samples
    session.start(_model(), tmp_path / "alignment.jsonl", total_steps=1)
    session.record(0)
    session.close()
    meta = session.history.attrs["meta"]
    assert meta["probe_size"] == 4 and meta["data_size"] == 6
    assert "probe n=4 of 6 samples" in session.tracker.summary()
    with pytest.raises(DiagnosticsError, match="data_size"):  # the callback sets it itself
        TrackingSession(_data(), data_size=6)
