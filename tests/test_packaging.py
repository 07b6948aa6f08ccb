"""The conda environment and pyproject.toml declare the same dependencies (core, test and notebooks)."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda name -> PyPI name
CONDA_ONLY = {"python", "pip", "cpuonly"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!\[;]", requirement.strip(), maxsplit=1)[0].lower()


def _environment_names() -> set[str]:
    text = (ROOT / "environment.yml").read_text()
    names = set()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        item = re.match(r"^\s+-\s+(.*)$", line)
        if not item or item.group(1).rstrip().endswith(":") or item.group(1).startswith("-e"):
            continue
        name = _name(item.group(1))
        names.add(CONDA_NAMES.get(name, name))
    return names - CONDA_ONLY


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    test = {_name(r) for r in extras["test"]}
    notebooks = {_name(r) for r in extras["notebooks"]}
    env = _environment_names()
    assert core | notebooks <= env, f"missing from environment.yml: {sorted((core | notebooks) - env)}"
    assert env <= core | test | notebooks, \
        f"in environment.yml but not in pyproject.toml: {sorted(env - core - test - notebooks)}"
