"""The width-report command: its help and how its options build the sweep configuration."""

from __future__ import annotations

import json

import pytest

from diagnostics import cli
from diagnostics.width import command as width_command
from diagnostics.width.config import FULL, SweepConfig


def parse(*argv: str):
    args = cli.build_parser().parse_args(["width-report", *argv])
    return width_command.config_from(args)


def test_width_report_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["width-report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--widths", "--executor", "--address", "--lr", "--records", "--full",
                   "--lr-sweep", "--dtype"):
        assert option in out


def test_options_build_the_config(tmp_path):
    assert parse() == width_command.config_from(cli.build_parser().parse_args(["width-report"]))
    config = parse("--widths", "mlp:2,4", "cnn:1", "--lr", "mf=2", "cnn/ntk=3", "--seeds", "3,4", "--steps", "10",
                   "--records", "5", "--dtype", "float32")
    assert config.widths == {"mlp": (2, 4), "cnn": (1,)}
    assert config.base_lr("mlp", "mf") == config.base_lr("cnn", "mf") == 2.0 and config.base_lr("cnn", "ntk") == 3.0
    assert config.seeds == (3, 4) and set(config.steps.values()) == {10} and config.records == 5
    assert config.dtype == "float32"
    per = parse("--steps", "ntk=600", "mlp/mf=20")
    assert per.steps_for("cnn", "ntk") == 600 and per.steps_for("mlp", "mf") == 20
    assert per.steps_for("cnn", "mf") == 1384
    assert parse("--widths", "4,8").widths == {"mlp": (4, 8), "cnn": (4, 8)}
    teacher = parse("--dataset", "teacher-student", "--teacher", "d_in=4", "activation=relu")
    assert teacher.families == ("mlp",) and teacher.teacher == {"d_in": 4, "activation": "relu"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config.to_dict(), "steps": 20}))
    from_file = parse("--config", str(path), "--records", "3", "--lr", "mf=5")
    assert set(from_file.steps.values()) == {20} and from_file.records == 3 and from_file.widths == config.widths
    assert from_file.base_lr("cnn", "mf") == 5.0 and from_file.base_lr("cnn", "ntk") == 3.0  # the file's pair stays
    full = parse("--full", "--seeds", "0")
    assert full.widths == {k: tuple(v) for k, v in FULL["widths"].items()} and full.seeds == (0,)
    assert full.records == SweepConfig().records  # the default's records: the full run reuses the default's runs
