"""The aligned-training command line."""

import pytest

from diagnostics.aligned import command


def test_command_line_help_and_a_tiny_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--help"])
    assert exit_info.value.code == 0
    assert "--switch-epoch" in capsys.readouterr().out
    code = command.main(["--seeds", "0", "--variants", "base", "penultimate/rank-one", "--width", "4",
                             "--epochs", "2", "--switch-epoch", "1", "--n-train", "200", "--no-progress",
                             "--out", str(tmp_path)])
    assert code == 0
    assert "| penultimate/rank-one |" in (tmp_path / "table.md").read_text()
    assert {"runs.csv", "table.csv", "table.md", "runs"} <= {p.name for p in tmp_path.iterdir()}
