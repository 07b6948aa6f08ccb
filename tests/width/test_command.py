"""The width-report command: its help and how its options build the sweep configuration."""

from __future__ import annotations

import json

import pytest

from diagnostics import cli
from diagnostics.width import command as width_command


def parse(*argv: str):
    args = cli.build_parser().parse_args(["width-report", *argv])
    return width_command.config_from(args)


def test_width_report_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["width-report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--widths", "--executor", "--address", "--lr"):
        assert option in out


def test_options_build_the_config(tmp_path):
    assert parse() == width_command.config_from(cli.build_parser().parse_args(["width-report"]))
    config = parse("--widths", "mlp:2,4", "cnn:1", "--lr", "mf=2", "--seeds", "3,4", "--steps", "10",
                   "--every", "5")
    assert config.widths == {"mlp": (2, 4), "cnn": (1,)}
    assert config.lr["mf"] == 2.0 and config.lr["ntk"] == 0.5
    assert config.seeds == (3, 4) and config.steps == 10
    assert parse("--widths", "4,8").widths == {"mlp": (4, 8), "cnn": (4, 8)}
    teacher = parse("--dataset", "teacher-student", "--teacher", "d_in=4", "activation=relu")
    assert teacher.families == ("mlp",) and teacher.teacher == {"d_in": 4, "activation": "relu"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config.to_dict(), "steps": 20}))
    from_file = parse("--config", str(path), "--every", "10")
    assert from_file.steps == 20 and from_file.every == 10 and from_file.widths == config.widths
