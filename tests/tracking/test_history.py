"""The history file: torn last lines, corrupt and foreign files."""

from __future__ import annotations

import json
import math

import pytest

from diagnostics.errors import DiagnosticsError
from diagnostics.tracking.history import History, load_history

pytestmark = pytest.mark.usefixtures("one_thread")


def test_history_ignores_and_truncates_a_torn_last_line(tmp_path):
    path = tmp_path / "h.jsonl"
    history = History(path, meta={"run": 1})
    for step in range(3):
        history.append({"step": step, "loss": 1.0 / (step + 1), "ok": True, "note": None, "x": math.nan})
    with open(path, "ab") as fh:
        fh.write(b'{"step": 3, "loss": 0.2')  # killed mid-write
    frame = load_history(path)
    assert frame.step.tolist() == [0, 1, 2] and math.isnan(frame.x.iloc[0])
    assert frame.attrs["meta"]["run"] == 1
    resumed = History(path, meta={"run": 2}, resume=True)
    assert resumed.resumed and resumed.last_step == 2 and resumed.meta["run"] == 1
    resumed.append({"step": 3, "loss": 0.25})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert load_history(path).step.tolist() == [0, 1, 2, 3]
    with pytest.raises(DiagnosticsError, match="strictly increase"):
        resumed.append({"step": 3})
    with pytest.raises(DiagnosticsError, match="scalars"):
        resumed.append({"step": 4, "vector": [1, 2]})
    fresh = History(path, meta={"run": 3}, resume=False)
    assert not fresh.resumed and load_history(path).empty


def test_the_header_gains_what_is_known_after_the_first_measurement(tmp_path):
    path = tmp_path / "h.jsonl"
    history = History(path, meta={"run": 1})
    history.append({"step": 0, "loss": 1.0})
    history.update_meta({"data_target_norm_sq": 9.0})
    frame = load_history(path)
    assert frame.attrs["meta"] == {"format": "diagnostics.history/1", "run": 1, "data_target_norm_sq": 9.0}
    assert frame.step.tolist() == [0] and history.frame().attrs["meta"]["data_target_norm_sq"] == 9.0


def test_history_refuses_corrupt_and_foreign_files(tmp_path):
    path = tmp_path / "h.jsonl"
    History(path).append({"step": 0})
    History(path).append({"step": 1})
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], "{not json", text[2]]) + "\n")
    with pytest.raises(DiagnosticsError, match="line 2"):
        load_history(path)
    foreign = tmp_path / "other.jsonl"
    foreign.write_text('{"a": 1}\n')
    with pytest.raises(DiagnosticsError, match="not a history file"):
        History(foreign)
