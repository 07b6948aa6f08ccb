"""The command line: the command registry, forwarding, exit codes and messages, ``python -m diagnostics``.

The width-report command's own options are tested in ``tests/width/test_command.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
from helpers import ROOT

from diagnostics import cli


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "width-report" in out and "aligned-training" in out
    assert cli.main([]) == 2


def test_missing_data_files_exit_2_with_the_loader_message(tmp_path, capsys):
    code = cli.main(["width-report", "--dataset", "mnist", "--data-dir", str(tmp_path), "-o",
                     str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'mnist' not found") and "train-images-idx3-ubyte" in err


def test_bad_config_exits_2(capsys):
    assert cli.main(["width-report", "--records", "0"]) == 2
    assert "records must be a positive integer" in capsys.readouterr().err


def test_python_dash_m_prints_no_traceback(tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-m", "diagnostics", "width-report", "--dataset", "cifar10", "--data-dir",
         str(tmp_path), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cifar-10-batches-py" in proc.stderr


def test_forwarded_command_gets_its_arguments_unparsed(monkeypatch):
    seen = []
    fake = types.ModuleType("fake_experiments")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "fake_experiments", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command("fake", "a fake", forward="fake_experiments:main"))
    assert cli.main(["fake", "--steps", "3", "--help"]) == 7
    assert seen == [["--steps", "3", "--help"]]
    assert cli.COMMANDS["aligned-training"].forward == "diagnostics.aligned.command:main"


def test_register_needs_run_or_forward():
    with pytest.raises(ValueError):
        cli.register("nothing", "no target")


