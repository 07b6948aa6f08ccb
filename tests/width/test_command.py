"""The width-report command: its help and how its options build the sweep configuration."""

from __future__ import annotations

import json
import sys

import pytest

from diagnostics import cli
from diagnostics.width import command as width_command
from diagnostics.width.config import FULL, SweepConfig
from diagnostics.width.figures import FIGURES


def parse(*argv: str):
    args = cli.build_parser().parse_args(["width-report", *argv])
    return width_command.config_from(args)


def test_width_report_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["width-report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--widths", "--executor", "--address", "--lr", "--records", "--full",
                   "--lr-sweep", "--dtype", "--family", "--data", "--optimizer", "--batch-size", "--loss",
                   "--train-step", "--from-runs", "--amp", "--scheduler", "--clip-grad-norm", "--device"):
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


#: A user's package on the current folder: a factory, data loaders (good and bad) and a family that does not grow.
USER_MODULE = '''
import torch
from helpers import GatedNet
from diagnostics.data import load_dataset


def make_model(width):
    return GatedNet(width)


def flat(width):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def load():
    return load_dataset("digits", n_train=48, n_test=40)


def wrong_shapes():
    digits = load()
    images = torch.utils.data.TensorDataset(digits.X_train.flatten(1)[:, :32], digits.y_train)  # half the pixels
    return torch.utils.data.DataLoader(images, batch_size=16)


def huge():
    return torch.randn(70_000, 64), torch.randint(0, 10, (70_000,))
'''

FAMILY_ARGS = ["--family", "mymodels:make_model", "--data", "mymodels:load", "--optimizer", "adamw", "--lr", "0.01",
               "--batch-size", "16", "--steps", "4", "--widths", "2,8", "--seeds", "0", "--records", "1",
               "--probe-size", "16", "--loss", "ce", "--jobs", "1", "--no-progress"]


def with_options(args: list[str], change: dict[str, str | None]) -> list[str]:
    """``args`` with the value of each option of ``change`` replaced, added, or (``None``) the option removed."""
    args = list(args)
    for option, value in change.items():
        if option in args:
            at = args.index(option)
            args[at:at + 2] = [] if value is None else [option, value]
        elif value is not None:
            args += [option, value]
    return args


def test_your_family_on_the_command_line_and_what_it_refuses(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodels.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    out = tmp_path / "report"
    assert cli.main(["width-report", *FAMILY_ARGS, "-o", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Width study: make-model on digits")
    assert "AdamW is not plain gradient descent" in markdown and "batches of 16" in markdown
    assert len(list((out / "figures").glob("*.png"))) == len(FIGURES)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refusals = [
        ({"--family": "nosuchmodule:make_model"}, "cannot import nosuchmodule"),
        ({"--family": "mymodels:missing"}, "mymodels has no 'missing'"),
        ({"--family": "mymodels:flat"}, "does not grow with the width"),
        ({"--batch-size": "0"}, "batch_size must be a positive integer"),
        ({"--data": "mymodels:wrong_shapes", "--batch-size": None}, "do not fit the model"),
        ({"--data": "mymodels:huge", "--probe-size": "70000"}, "memory budget"),
        ({"--families": "mlp"}, "--families belong to the bundled families"),
        ({"--lr": "mf=2"}, "--lr takes one value with --family"),
    ]
    for change, message in refusals:
        capsys.readouterr()
        assert cli.main(["width-report", *with_options(FAMILY_ARGS, change), "-o", str(out)]) == 2, change
        assert message in capsys.readouterr().err, change
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing was written over the earlier report
    assert cli.main(["width-report", "--optimizer", "adamw"]) == 2  # a recipe option without --family
