"""The README's example runs as written."""

import re

from helpers import ROOT

README = ROOT / "README.md"


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "Alignment condition D1" in out and "Common model structure A1" in out


def test_readme_names_the_test_command_that_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    found = re.search(r"```bash\n(\./run test[^\n]*)\n```", README.read_text())
    assert found, "README has no ```bash block with the test command ./run test"
    assert found.group(1) in ci.splitlines()
