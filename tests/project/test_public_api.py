"""The public API: every name that README.md and the notebooks import is importable as written, and
``diagnostics.__all__`` holds the documented entry points."""

from __future__ import annotations

import ast
import json
import re

import pytest
from helpers import ROOT

import diagnostics

#: What ``from diagnostics import *`` must offer at least (README, docs/ARCHITECTURE.md).
REQUIRED = {
    "check_alignment", "check_cms", "jacobian", "ntk_gram", "JacobianOperator", "AlignmentTracker", "AlignedTraining",
    "reference_jacobian", "AlignmentReport", "CMSReport", "DiagnosticsError", "UnsupportedModelError",
    "InsufficientMemoryError",
}


def _code() -> list[tuple[str, str]]:
    """``(where, source)`` of README.md's python blocks and of every notebook's code cells."""
    readme = (ROOT / "README.md").read_text()
    found = [(f"README.md block {i + 1}", block)
             for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme, flags=re.S))]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            source = "".join(cell["source"])
            # IPython magics and shell escapes are not python
            source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
            found.append((f"{path.name} code cell {i + 1}", source))
    return found


def _imports() -> dict[str, list[str]]:
    """``{import statement: [where...]}`` for every import of ``diagnostics`` or ``theory``, one name each."""
    statements: dict[str, list[str]] = {}
    for where, source in _code():
        for node in ast.walk(ast.parse(source, where)):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module.split(".")[0] in (
                "diagnostics", "theory"):
                lines = [f"from {node.module} import {alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                lines = [f"import {a.name}" for a in node.names if a.name.split(".")[0] in ("diagnostics", "theory")]
            else:
                continue
            for line in lines:
                statements.setdefault(line, []).append(where)
    return statements


IMPORTS = _imports()


def test_readme_and_every_notebook_import_from_the_package():
    sources = {where.split(" ")[0] for places in IMPORTS.values() for where in places}
    notebooks = {path.name for path in (ROOT / "notebooks").glob("*.ipynb")}
    assert "README.md" in sources and notebooks <= sources, sorted((notebooks | {"README.md"}) - sources)


@pytest.mark.parametrize("statement", sorted(IMPORTS))
def test_documented_import_works_as_written(statement):
    namespace: dict = {}
    try:
        exec(statement, namespace)
    except ImportError as exc:
        pytest.fail(f"{statement!r} (in {', '.join(IMPORTS[statement])}) fails: {exc}")
    assert set(namespace) - {"__builtins__"}, f"{statement!r} bound no name"


def test_all_holds_the_documented_entry_points():
    missing = REQUIRED - set(diagnostics.__all__)
    assert not missing, f"missing from diagnostics.__all__: {sorted(missing)}"
    unbound = [name for name in diagnostics.__all__ if not hasattr(diagnostics, name)]
    assert not unbound, f"in diagnostics.__all__ but not defined: {unbound}"
