"""The layers of the code base (``docs/ARCHITECTURE.md``), checked on the source.

The import graph of ``diagnostics`` and ``theory`` is built from the modules' own ``import`` statements
with ``ast`` (imports under ``if TYPE_CHECKING:`` are for annotations only and left out; imports inside
functions count). It must have no cycle, and every edge must go down the layers declared below, or stay
in one layer: a module never imports one of a higher layer.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The repository's root (not from helpers, which imports diagnostics: these tests must run, and name the
#: culprit, when an import cycle breaks ``import diagnostics``).
ROOT = Path(__file__).resolve().parents[2]

PACKAGES = ("theory", "diagnostics")

#: The layers, bottom → top: a module may import modules of its own layer or of a lower one, never of a
#: higher one. A key matches the module of that name and its submodules; the longest key wins. The key
#: ``"diagnostics"`` matches the package's own ``__init__`` only: the public facade, which re-exports
#: every layer, so nothing inside the package may import from it.
LAYERS = {
    "theory": -1,  # the mathematics: numbers and numpy arrays in, verdicts out; no torch, no diagnostics
    "diagnostics.errors": 0,
    "diagnostics.engine": 1,  # measures any model (ordered inside by ENGINE)
    "diagnostics.models": 1,  # task inputs: the models never import the data ...
    "diagnostics.data": 2,  # ... the data may import the models (the teacher network)
    "diagnostics.targets": 2,
    "diagnostics.representation": 2,
    "diagnostics.store": 0,  # atomic files: torch and the standard library only (the engine checkpoints with it)
    "diagnostics.alignment_report": 3,
    "diagnostics.alignment_spectrum": 3,
    "diagnostics.alignment": 3,
    "diagnostics.cms": 3,
    "diagnostics.distributed": 3,  # the whole data set over torch.distributed (check_alignment streams with it)
    "diagnostics.check_command": 6,
    "diagnostics.tracking": 4,
    "diagnostics.aligned": 5,
    "diagnostics.integrations": 5,  # the tracker inside Lightning / Hugging Face runs, and loggers as sinks
    "diagnostics.width": 6,
    "diagnostics.cli": 7,
    "diagnostics.__main__": 7,
    "diagnostics": 7,
}

#: Inside ``diagnostics.engine``, bottom → top, as the modules import each other: the numerical policy,
#: memory budgets, refusal messages and ``auto``'s files on disk; the inputs; the functional model; Gram tiles,
#: the per-layer rules, ``auto``'s plans and the autograd reference; the structured path and the error estimates; the
#: measurement; what is built on it; the matrix-free sub-package (its operator on the measurement, the streamed
#: and sharded operators and the solvers on it); and the engine's own ``__init__`` (key ``""``) on top.
ENGINE = {
    "precision": 0,
    "memory": 0,
    "refusals": 0,
    "choice_store": 0,  # auto's files on disk: torch and the atomic writes of diagnostics.store only
    "inputs": 1,
    "functional": 2,
    "gram": 3,
    "rules": 3,
    "choice": 3,
    "reference": 3,
    "structured": 4,
    "accuracy": 4,
    "auto": 4,
    "measurement": 5,
    "jacobian": 6,
    "spectral": 6,
    "manifest": 6,
    "matrix_free.lsqr": 0,  # the matrix-free sub-package: LSQR needs nothing of the engine,
    "matrix_free.operator": 7,  # the operator measures with the dense engine,
    "matrix_free.streamed": 8,  # the streamed and sharded operators build on it,
    "matrix_free.sharded": 8,
    "matrix_free.spectrum": 8,  # and the solvers on any of them: LSQR and Lanczos,
    "matrix_free.sketch": 9,  # the passes over per-sample Jacobian blocks (parameter-space Gram, Rayleigh–Ritz),
    "matrix_free.ritz": 10,
    "matrix_free.certified": 10,  # preconditioned LSQR with certified bounds,
    "matrix_free.preconditioned": 11,  # and the preconditioned solver on them;
    "matrix_free": 12,  # its __init__,
    "": 13,
}

#: Peers of one layer that must not import each other either: the engine measures any model, so it never
#: depends on the project's own model families, nor they on it.
INDEPENDENT = {("diagnostics.engine", "diagnostics.models"), ("diagnostics.models", "diagnostics.engine")}

#: Edges that run up the layers today, each with why it is tolerated. Listed here so that no new one
#: slips in; an entry whose edge is gone must be deleted (the test says so).
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target``, at ``path:line`` (``via``: the submodule whose import runs the
    package ``target``'s ``__init__`` first)."""

    source: str
    target: str
    path: str
    line: int
    via: str = ""

    def __str__(self) -> str:
        how = f" (its __init__, run to import {self.via})" if self.via else ""
        return f"{self.path}:{self.line}: {self.source} imports {self.target}{how}"


def source_modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Every module of the packages under ``root``: ``{dotted name: (file, is a package's __init__)}``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Import statements under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _import_nodes(ast.Module(body=child.orelse, type_ignores=[]))  # the else branch only
        else:
            yield from _import_nodes(child)


def import_edges(root: Path = ROOT) -> tuple[list[Edge], list[Edge]]:
    """The edges of the import graph between the packages' modules (with the package ``__init__`` that an
    import runs first), and the imports of modules that do not exist. Other imports (torch, numpy, the
    standard library) are left out."""
    modules = source_modules(root)
    edges, unknown = [], []
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        where = str(path.relative_to(root))
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module
                # ``from pkg import name`` imports the submodule pkg.name if there is one, else from pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target.split(".")[0] not in PACKAGES:
                    continue
                if target not in modules:
                    unknown.append(Edge(name, target, where, node.lineno))
                    continue
                edges.append(Edge(name, target, where, node.lineno))
                # importing a.b.c first runs the __init__ of every package on the way that is not already
                # running, i.e. that does not contain the importing module
                parts = target.split(".")
                for k in range(1, len(parts)):
                    outer = ".".join(parts[:k])
                    if not (name == outer or name.startswith(outer + ".")):
                        edges.append(Edge(name, outer, where, node.lineno, via=target))
    return edges, unknown


def layer_key(module: str) -> str:
    """The key of :data:`LAYERS` that places ``module``."""
    keys = [k for k in LAYERS if module == k or (k != "diagnostics" and module.startswith(k + "."))]
    if not keys:
        raise LookupError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return max(keys, key=len)


def layer(module: str) -> tuple[int, int]:
    """``(layer, step inside the engine)``: edges must not go to a larger one."""
    key = layer_key(module)
    step = 0
    if key == "diagnostics.engine":
        sub = module.removeprefix("diagnostics.engine").lstrip(".")
        if sub not in ENGINE:
            raise LookupError(f"{module} has no place in the engine: add {sub!r} to ENGINE in {__file__}")
        step = ENGINE[sub]
    return LAYERS[key], step


def describe(module: str) -> str:
    number, step = layer(module)
    key = layer_key(module)
    inside = f", engine step {step}" if key == "diagnostics.engine" else ""
    return f"{module} (layer {number}: {key}{inside})"


def upward_edges(edges: list[Edge]) -> list[str]:
    """A readable line for every edge that runs up the layers or joins two independent peers."""
    problems = []
    for edge in edges:
        pair = (layer_key(edge.source), layer_key(edge.target))
        if layer(edge.source) < layer(edge.target):
            problems.append(f"{edge.path}:{edge.line}: {describe(edge.source)} imports {describe(edge.target)}, "
                            "which is above it")
        elif pair in INDEPENDENT:
            problems.append(f"{edge.path}:{edge.line}: {edge.source} imports {edge.target}, but "
                            f"{pair[0]} and {pair[1]} must not import each other")
    return problems


def cycles(edges: list[Edge]) -> list[str]:
    """One cycle, written out edge by edge, for every strongly connected part of the graph (Tarjan)."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
        graph.setdefault(edge.target, {})
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph[v]:
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for part in parts:  # walk inside the part from its first module until a module repeats
        path = [min(part)]
        while True:
            nxt = min(w for w in graph[path[-1]] if w in part)
            if nxt in path:
                loop = path[path.index(nxt):] + [nxt]
                break
            path.append(nxt)
        found.append(" → ".join(loop) + "\n    " + "\n    ".join(
            str(graph[a][b]) for a, b in zip(loop, loop[1:], strict=False)))
    return found


@pytest.fixture(scope="module")
def graph():
    return import_edges()


# -- the code base -------------------------------------------------------------------------------


def test_every_module_has_a_layer_and_every_import_a_module():
    modules = source_modules()
    assert "diagnostics.engine.jacobian" in modules and "theory.results" in modules  # the walk found them
    unplaced = []
    for name in modules:
        try:
            layer(name)
        except LookupError as exc:
            unplaced.append(str(exc))
    assert not unplaced, "\n".join(unplaced)
    _, unknown = import_edges()
    assert not unknown, "imports of modules that do not exist:\n" + "\n".join(map(str, unknown))


def test_the_import_graph_has_no_cycle(graph):
    edges, _ = graph
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_import_runs_back_up_the_layers(graph):
    edges, _ = graph
    known = {(e.source, e.target) for e in edges} & set(KNOWN_UPWARD)
    assert known == set(KNOWN_UPWARD), f"no longer imported, delete from KNOWN_UPWARD: {set(KNOWN_UPWARD) - known}"
    problems = upward_edges([e for e in edges if (e.source, e.target) not in KNOWN_UPWARD])
    assert not problems, "imports that run back up the layers:\n" + "\n".join(problems)


def test_theory_imports_neither_torch_nor_diagnostics():
    offending = []
    for name, (path, _) in source_modules().items():
        if not name.startswith("theory"):
            continue
        for node in _import_nodes(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            offending += [f"{path.relative_to(ROOT)}:{node.lineno}: {name} imports {n}" for n in names
                          if n.split(".")[0] in ("torch", "diagnostics")]
    assert not offending, "\n".join(offending)


def test_theory_does_not_import_torch_or_diagnostics():
    import subprocess
    import sys

    code = "import sys, theory; print(any(m in sys.modules for m in ('torch', 'diagnostics')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_module_imports_in_layer_order():
    """A fresh interpreter imports every module, bottom layer first: all of ``theory`` without loading torch
    or ``diagnostics``, then every module of ``diagnostics``; the first that fails is named."""
    order = sorted(source_modules(), key=lambda name: (layer(name), name))
    script = (
        "import importlib, sys, traceback\n"
        f"order = {order!r}\n"
        "for name in order:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        print(f'importing {name} (the first to fail) raised ' + traceback.format_exc().strip())\n"
        "        break\n"
        "    if name.startswith('theory'):\n"
        "        loaded = [m for m in ('torch', 'diagnostics') if m in sys.modules]\n"
        "        if loaded:\n"
        "            print(f'{name}: importing it loaded {loaded}')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr[-3000:]


# -- the checks themselves can fail ----------------------------------------------------------------


def _fake_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def test_the_checks_name_an_upward_import_and_a_cycle(tmp_path):
    root = _fake_tree(tmp_path, {
        "diagnostics/errors.py": "from .alignment import check_alignment\n",  # layer 0 → 3
        "diagnostics/alignment.py": "from .errors import DiagnosticsError\n",  # and back: a cycle
        "diagnostics/engine/__init__.py": "",
        "diagnostics/engine/inputs.py": "from typing import TYPE_CHECKING\n\n"
                                        "if TYPE_CHECKING:\n    from .jacobian import jacobian\n",
        "diagnostics/engine/spectral.py": "def f():\n    from . import measurement\n",  # step 6 → 5: fine
        "diagnostics/engine/measurement.py": "from ..models import MLP\nfrom .nothing import x\n",
        "diagnostics/engine/jacobian.py": "from . import measurement\n",
        "diagnostics/models/__init__.py": "MLP = None\n",
        "theory/results.py": "import torch\nfrom diagnostics import jacobian\n",  # theory reaching up
    })
    edges, unknown = import_edges(root)
    assert [str(e) for e in unknown] == [
        "diagnostics/engine/measurement.py:2: diagnostics.engine.measurement imports diagnostics.engine.nothing"]
    problems = upward_edges(edges)
    assert sorted(problems) == [
        "diagnostics/engine/measurement.py:1: diagnostics.engine.measurement imports diagnostics.models, but "
        "diagnostics.engine and diagnostics.models must not import each other",
        "diagnostics/errors.py:1: diagnostics.errors (layer 0: diagnostics.errors) imports diagnostics.alignment "
        "(layer 3: diagnostics.alignment), which is above it",
        "theory/results.py:2: theory.results (layer -1: theory) imports diagnostics (layer 7: diagnostics), "
        "which is above it",
    ]
    found = cycles(edges)
    assert found == ["diagnostics.alignment → diagnostics.errors → diagnostics.alignment\n"
                     "    diagnostics/alignment.py:1: diagnostics.alignment imports diagnostics.errors\n"
                     "    diagnostics/errors.py:1: diagnostics.errors imports diagnostics.alignment"]


def test_an_engine_module_importing_one_above_it_is_named():
    edges = [Edge("diagnostics.engine.inputs", "diagnostics.engine.jacobian", "diagnostics/engine/inputs.py", 3),
             Edge("diagnostics.engine.structured", "diagnostics.engine", "diagnostics/engine/structured.py", 5),
             Edge("diagnostics.engine.jacobian", "diagnostics.engine.inputs", "diagnostics/engine/jacobian.py", 7)]
    assert upward_edges(edges) == [
        "diagnostics/engine/inputs.py:3: diagnostics.engine.inputs (layer 1: diagnostics.engine, engine step 1) "
        "imports diagnostics.engine.jacobian (layer 1: diagnostics.engine, engine step 6), which is above it",
        "diagnostics/engine/structured.py:5: diagnostics.engine.structured (layer 1: diagnostics.engine, engine "
        "step 4) imports diagnostics.engine (layer 1: diagnostics.engine, engine step 13), which is above it",
    ]
    with pytest.raises(LookupError, match="add 'fft' to ENGINE"):
        layer("diagnostics.engine.fft")
    with pytest.raises(LookupError, match="diagnostics.plots is in no layer"):
        layer("diagnostics.plots")
