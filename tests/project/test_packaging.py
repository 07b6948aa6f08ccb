"""Packaging: the conda environment and pyproject.toml declare the same dependencies (core, test and
notebooks), and the console script points at the command line."""

import re
from importlib import metadata

import pytest
import tomllib
from helpers import ROOT

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


def test_console_script_entry_point():
    try:
        scripts = metadata.entry_points(group="console_scripts")
    except metadata.PackageNotFoundError:  # pragma: no cover
        pytest.skip("package not installed")
    target = [ep.value for ep in scripts if ep.name == "diagnostics"]
    if not target:
        pytest.skip("package not installed (pip install -e .)")
    assert target == ["diagnostics.cli:main"]
