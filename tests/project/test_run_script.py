"""./run, the set-up script of the README's commands: its command line, the stamp logic and the torch plan.

Nothing here installs anything or runs the commands themselves (no recursive ``./run test``).
"""

import importlib.machinery
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPT = ROOT / "run"


def _load():
    loader = importlib.machinery.SourceFileLoader("run_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("run_script", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_script"] = module  # dataclasses look the module up while the script is executed
    loader.exec_module(module)
    return module


run = _load()


def _call(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=60)


def test_script_is_executable_with_a_python_shebang():
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert SCRIPT.stat().st_mode & 0o111, "./run must be executable"


def test_help_lists_the_commands():
    result = _call("--help")
    assert result.returncode == 0, result.stderr
    for name in ("report", "test", "notebooks"):
        assert re.search(rf"^  {name}\s", result.stdout, flags=re.M), f"{name} missing from --help"
    assert "--cuda" in result.stdout and "--torch SPEC" in result.stdout and "--dry-run" in result.stdout


@pytest.mark.parametrize("args", [["bogus"], ["--cuda", "bogus", "-k", "x"]])
def test_unknown_command_exits_nonzero_with_a_message(args):
    result = _call(*args)
    assert result.returncode == 2
    assert "unknown command 'bogus'" in result.stderr and "report, test, notebooks" in result.stderr


def test_no_command_prints_help_and_exits_nonzero():
    result = _call()
    assert result.returncode == 2 and "commands:" in result.stderr


def test_dry_run_plans_a_fresh_environment_and_changes_nothing(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in run.os.environ.items() if k not in {"TORCH_SPEC", "TORCH_CUDA", "TORCH_INDEX_URL"}}
    result = _call("--dry-run", "--venv", str(venv), "test", "-k", "engine", env=env)
    assert result.returncode == 0, result.stderr
    assert not venv.exists()
    lines = result.stderr
    assert "would create" in lines
    assert lines.index("--no-index --no-deps") < lines.index(f"--index-url {run.CPU_INDEX}") < lines.index(
        "pip install -e '.[test]'")
    assert lines.rstrip().endswith("would run: python -m pytest -q -k engine")


def test_dry_run_with_an_up_to_date_stamp_installs_nothing(tmp_path):
    venv = tmp_path / "venv"
    python = run.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    digest = run.pyproject_digest(run.PYPROJECT.read_text())
    (venv / run.STAMP_NAME).write_text(json.dumps(
        {"pyproject": digest, "extras": ["test"], "torch": "2.13.0+cpu", "torch_choice": "cpu"}))
    result = _call("--dry-run", "--venv", str(venv), "report", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr and "install" not in result.stderr.replace("nothing to install", "")
    assert "would run: python -m diagnostics width-report --jobs 2" in result.stderr


@pytest.mark.parametrize(("argv", "expected"), [
    (["test", "-k", "engine"], ([], "test", ["-k", "engine"])),
    (["--cuda", "report", "--jobs", "2"], (["--cuda"], "report", ["--jobs", "2"])),
    (["--torch", "torch==2.5.1", "--venv", "v", "notebooks", "--help"],
     (["--torch", "torch==2.5.1", "--venv", "v"], "notebooks", ["--help"])),
    (["--torch=torch==2.5.1", "test", "--cuda"], (["--torch=torch==2.5.1"], "test", ["--cuda"])),
    (["--dry-run"], (["--dry-run"], None, [])),
    (["--", "test", "-x"], ([], "test", ["-x"])),
])
def test_split_argv_passes_everything_after_the_command_through(argv, expected):
    assert run.split_argv(argv) == expected


def test_stamp_decides_up_to_date_versus_install(tmp_path):
    digest = run.pyproject_digest('[project]\nname = "x"\n')
    stamp = {"pyproject": digest, "extras": ["test"], "torch": "2.13.0+cpu", "torch_choice": "cpu"}
    assert run.is_up_to_date(stamp, digest, ("test",))
    assert run.is_up_to_date(stamp, digest, ())  # the report needs no extra
    assert not run.is_up_to_date(stamp, digest, ("notebooks",))  # an extra not installed yet
    assert not run.is_up_to_date(stamp, run.pyproject_digest('[project]\nname = "y"\n'), ("test",))  # edited
    assert not run.is_up_to_date({}, digest, ())  # no stamp: a fresh environment
    assert not run.is_up_to_date({**stamp, "torch": None}, digest, ())  # torch never installed
    # Installing keeps the extras installed from the same pyproject.toml, and forgets them after an edit.
    assert run.extras_to_install(stamp, digest, ("notebooks",)) == ["notebooks", "test"]
    assert run.extras_to_install(stamp, "other", ("notebooks",)) == ["notebooks"]
    # read_stamp: missing or corrupt files read as "nothing installed".
    assert run.read_stamp(tmp_path) == {}
    (tmp_path / run.STAMP_NAME).write_text("{not json")
    assert run.read_stamp(tmp_path) == {}
    (tmp_path / run.STAMP_NAME).write_text(json.dumps(stamp))
    assert run.read_stamp(tmp_path) == stamp


def test_torch_requirement_is_read_from_pyproject():
    requirement = run.torch_requirement(run.PYPROJECT.read_text())
    assert requirement.startswith("torch") and requirement != "torch"
    assert requirement in run.PYPROJECT.read_text().replace(" ", "")
    assert run.torch_requirement('dependencies = [\n    "numpy",\n]\n') == "torch"


@pytest.mark.parametrize(("spec", "cuda", "environ", "expected"), [
    (None, None, {}, ("cpu", False)),
    (None, True, {}, ("cuda", True)),
    (None, None, {"TORCH_CUDA": "1"}, ("cuda", True)),
    (None, None, {"TORCH_CUDA": "0"}, ("cpu", False)),
    (None, True, {"TORCH_SPEC": "torch==2.4.0"}, ("spec:torch==2.4.0", True)),  # an explicit spec wins
    ("torch==2.5.1", None, {"TORCH_SPEC": "torch==2.4.0"}, ("spec:torch==2.5.1", True)),  # the flag wins
])
def test_torch_choice(spec, cuda, environ, expected):
    assert run.torch_choice(spec, cuda, environ) == expected


def test_torch_plan_tries_local_wheels_then_the_cpu_index():
    plan = run.torch_plan("cpu", "torch>=2.3,<3")
    assert [args for _, args in plan] == [["--no-index", "--no-deps", "torch>=2.3,<3"],
                                          ["--index-url", run.CPU_INDEX, "torch>=2.3,<3"]]
    assert run.torch_plan("cpu", "torch", "file:///mirror")[1][1] == ["--index-url", "file:///mirror", "torch"]
    assert [args for _, args in run.torch_plan("cuda", "torch>=2.3,<3")] == [["torch>=2.3,<3"]]
    spec = run.torch_plan("spec:torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121", "torch")
    assert [args for _, args in spec] == [["torch==2.5.1", "--index-url", "https://download.pytorch.org/whl/cu121"]]


def test_commands_install_what_they_need():
    assert run.COMMANDS["report"].extras == ()
    assert run.COMMANDS["test"].extras == ("test",)
    assert run.COMMANDS["notebooks"].extras == ("notebooks",)
    import tomllib

    extras = tomllib.loads(run.PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert all(extra in extras for command in run.COMMANDS.values() for extra in command.extras)
    assert any(r.startswith("ipywidgets") for r in extras["notebooks"]), "widget progress bars in notebooks"


def test_command_environment_activates_the_venv(tmp_path):
    env = run.command_environment(tmp_path, {"PATH": "/usr/bin", "PYTHONHOME": "/x"})
    assert env["VIRTUAL_ENV"] == str(tmp_path)
    assert env["PATH"].split(run.os.pathsep)[0] == str(run.venv_python(tmp_path).parent)
    assert "PYTHONHOME" not in env and env["JUPYTER_PREFER_ENV_PATH"] == "1"
