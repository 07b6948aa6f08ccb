"""The code base passes the linter configured in pyproject.toml (pycodestyle, pyflakes, numpy docstrings...)."""

import subprocess
import sys

import pytest
from helpers import ROOT


def test_ruff_check_passes():
    pytest.importorskip("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
