"""The sinks with the real libraries, read back with each library's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diagnostics.integrations._optional import require
from diagnostics.integrations.sinks import JsonLinesSink, MLflowSink, TensorBoardSink, WandbSink, scalars
from diagnostics.tracking import load_history


def _expected(records) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalars the sinks must write."""
    out: dict[str, dict[int, float]] = {}
    for record, _ in records:
        for tag, value in scalars(record).items():
            out.setdefault(tag, {})[int(record["step"])] = value
    return out


def test_scalars_are_the_finite_numeric_columns(tracked_records):
    record, _ = tracked_records[1]  # cheap: its full-record columns are nan
    values = scalars(record)
    assert values["alignment/loss"] == record["loss"] and "alignment/residual" not in values
    assert "alignment/d1_status" not in values and "alignment/step" not in values
    assert all(isinstance(v, float) for v in values.values())


def test_tensorboard_event_files_hold_every_scalar_the_histogram_and_the_figure(tmp_path, tracked_records):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    everything = {accumulator.SCALARS: 0, accumulator.HISTOGRAMS: 0, accumulator.IMAGES: 0}
    for folder, scalars_too in ((tmp_path / "all", True), (tmp_path / "extras", False)):
        sink = TensorBoardSink(folder, scalars=scalars_too)
        sink.start({"loss": "ce", "n_params": 170})
        for record, report in tracked_records:
            sink.write(record, report)
        sink.close()
    extras = accumulator.EventAccumulator(str(tmp_path / "extras"), size_guidance=everything)
    extras.Reload()
    assert not extras.Tags()["scalars"] and not extras.Tags()["tensors"]  # the trainer's logger has them
    assert [e.step for e in extras.Histograms("alignment/log10_eigenvalues")] == [0, 2]
    events = accumulator.EventAccumulator(str(tmp_path / "all"), size_guidance=everything)
    events.Reload()
    assert events.Tags()["tensors"] == ["alignment/settings/text_summary"]  # the settings, once
    expected = _expected(tracked_records)
    assert set(events.Tags()["scalars"]) == set(expected)
    assert not any(tag.endswith(("n_params", "n_samples", "residual_tol", "measure_seconds")) for tag in expected)
    for tag, by_step in expected.items():
        read = {e.step: e.value for e in events.Scalars(tag)}
        assert read == pytest.approx(by_step, rel=1e-6), tag  # event files store float32
    assert [e.step for e in events.Histograms("alignment/log10_eigenvalues")] == [0, 2]
    assert [e.step for e in events.Images("alignment/alignment_curve")] == [0, 2]


def test_mlflow_file_store_holds_every_metric_and_the_spectrum(tmp_path, tracked_records, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    tracking = pytest.importorskip("mlflow.tracking")
    uri = (tmp_path / "mlruns").as_uri()
    client = tracking.MlflowClient(uri)
    run = client.create_run(client.create_experiment("alignment"))
    sink = MLflowSink(uri, run.info.run_id)
    sink.start({"loss": "ce", "n_params": 170})
    for record, report in tracked_records:
        sink.write(record, report)
    reader = tracking.MlflowClient(uri)
    assert reader.get_run(run.info.run_id).data.params == {"alignment/loss": "ce", "alignment/n_params": "170"}
    for tag, by_step in _expected(tracked_records).items():
        history = reader.get_metric_history(run.info.run_id, tag)
        assert {m.step: m.value for m in history} == by_step, tag
    artifacts = sorted(a.path for a in reader.list_artifacts(run.info.run_id, "alignment"))
    assert artifacts == ["alignment/alignment-curve-00000000.png", "alignment/alignment-curve-00000002.png",
                         "alignment/spectrum-00000000.json", "alignment/spectrum-00000002.json"]
    local = Path(reader.download_artifacts(run.info.run_id, "alignment/spectrum-00000002.json", str(tmp_path)))
    spectrum = json.loads(local.read_text())
    assert spectrum["eigenvalues"] == pytest.approx(list(tracked_records[2][1].eigenvalues), rel=1e-15)


def _wandb_records(run_dir: Path):
    """The records of an offline W&B run: its ``.wandb`` file in LevelDB-log framing (7-byte ``:W&B`` header,
    32 KiB blocks, chunks of checksum, length, type), each a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def test_wandb_offline_run_holds_every_scalar_against_its_own_step(tmp_path, tracked_records, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = pytest.importorskip("wandb")
    run = wandb.init(project="alignment-tests", dir=str(tmp_path), mode="offline")
    sink = WandbSink(run)
    for record, report in tracked_records:
        sink.write(record, report)
    run_dir = Path(run.dir).parent
    run.finish()
    wandb.teardown()  # stops W&B's writer process: the run file is complete on disk after it
    rows = []
    for rec in _wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
    assert [row["alignment/step"] for row in rows] == [0, 1, 2]
    for tag, by_step in _expected(tracked_records).items():
        read = {row["alignment/step"]: row[tag] for row in rows if tag in row}
        assert read == pytest.approx(by_step, rel=1e-12), tag
    assert [row["alignment/tier"] for row in rows] == ["full", "cheap", "full"]
    assert rows[0]["alignment/log10_eigenvalues/_type"] == "histogram"  # nested values come flattened
    assert rows[2]["alignment/alignment_curve/_type"] == "image-file"
    assert "alignment/alignment_curve/_type" not in rows[1]  # a cheap record has no spectrum


def test_json_lines_sink_writes_a_history_file(tmp_path, tracked_records):
    sink = JsonLinesSink(tmp_path / "copy.jsonl")
    for record, report in tracked_records:
        sink.write(record, report)
    again = JsonLinesSink(tmp_path / "copy.jsonl")  # continued: a step already written is not written twice
    again.write(tracked_records[-1][0])
    frame = load_history(tmp_path / "copy.jsonl")
    assert frame.step.tolist() == [0, 1, 2] and frame.tier.tolist() == ["full", "cheap", "full"]


def test_a_missing_library_names_the_extra_that_installs_it():
    with pytest.raises(ImportError, match=r'pip install "alignment-diagnostics\[lightning\]"'):
        require("lightning_that_does_not_exist.pytorch", "lightning")
