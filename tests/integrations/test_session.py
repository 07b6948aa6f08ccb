"""What both callbacks share: the model they measure, and the options they refuse to forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics.errors import DiagnosticsError
from diagnostics.integrations.session import TrackingSession, unwrap
from diagnostics.integrations.sinks import Sink


class Collect(Sink):
    def __init__(self) -> None:
        self.written = []

    def write(self, record, report=None) -> None:
        self.written.append((record["step"], record["tier"], report is not None))


def test_unwrap_strips_data_parallel_and_selects_a_submodule():
    inner = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert unwrap(nn.DataParallel(inner)) is inner
    assert unwrap(nn.DataParallel(inner), "2") is inner[2]
    with pytest.raises(DiagnosticsError, match="no submodule 'head'"):
        unwrap(inner, "head")


def test_the_session_sends_each_record_once_with_the_report_of_full_records(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(0)
    data = tuple(torch.randn(6, k, generator=gen, dtype=torch.float64) for k in (3, 2))
    sink = Collect()
    session = TrackingSession(data, [sink], {"every": 2, "full_every": 2, "probe_size": None})
    assert session.record(0) is None and session.history.empty  # before training starts
    session.start(model, tmp_path / "alignment.jsonl", resume=False)
    for step in range(6):
        session.record(step)
        session.record(step)  # gradient accumulation: the same global step again
    assert sink.written == [(0, "full", True), (2, "cheap", False), (4, "full", True)]
    session.close()
    with pytest.raises(DiagnosticsError, match="set by the callback"):
        TrackingSession(data, [], {"path": tmp_path / "elsewhere.jsonl"})
