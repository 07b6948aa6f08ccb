"""Shared set-up of the integration tests: a tracked digits MLP whose records the sinks receive."""

from __future__ import annotations

import pytest
import torch

from diagnostics.data import load_dataset
from diagnostics.models import MLP
from diagnostics.tracking import AlignmentTracker


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.X_train, data.y_train


@pytest.fixture(scope="module")
def tracked_records(digits):
    """Three records (full, cheap, full) of an MLP on 16 digits, with the full records' reports."""
    X, y = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = MLP(64, 8, 10, depth=1)
    tracker = AlignmentTracker(model, (X, y), loss="ce", probe_size=16, full_every=2)
    out = []
    for step in range(3):
        record = tracker.measure(step)
        out.append((record, tracker.last_report if record["tier"] == "full" else None))
        with torch.no_grad():
            model.head.weight.mul_(1.5)
    return out
