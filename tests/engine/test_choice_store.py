"""auto's knowledge on disk (diagnostics/engine/choice_store.py): where it lives, and that a file it did not write
whole — torn, corrupt, of another format or problem, or in a folder it cannot write — costs nothing but time."""

import json
import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from diagnostics.engine import choice_store
from diagnostics.engine.choice_store import CACHE_ENV, cache_dir, problem_digest, read, write


def test_the_folder_is_the_variables_or_the_platforms_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "auto"
    monkeypatch.setenv(CACHE_ENV, "")
    assert cache_dir() is None
    write("abc", {"x": 1})  # off: nothing written, nothing read
    assert read("abc") is None
    monkeypatch.delenv(CACHE_ENV)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_dir() == tmp_path / "xdg" / "alignment-diagnostics" / "auto"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert cache_dir() == Path.home() / ".cache" / "alignment-diagnostics" / "auto"


def test_a_payload_reads_back_and_the_digest_is_the_same_in_every_process():
    digest = problem_digest(("model", (1, 2), "float32"))
    assert len(digest) == 32 and digest == problem_digest(("model", (1, 2), "float32"))
    assert digest != problem_digest(("model", (1, 3), "float32"))
    write(digest, {"timed": {"structured": 0.5}})
    assert read(digest) == {"timed": {"structured": 0.5}}
    assert [p.name for p in cache_dir().iterdir()] == [f"{digest}.json"]  # no temporary file left


@pytest.mark.parametrize("content", [
    b'{"format": 1, "digest": "',  # torn
    b"\x00\xff not json",  # corrupt
    b"[1, 2]",  # not an object
    json.dumps({"format": 999, "digest": "DIGEST", "payload": {}}).encode(),  # another format
    json.dumps({"format": 1, "digest": "another", "payload": {}}).encode(),  # another problem's file
    json.dumps({"format": 1, "digest": "DIGEST", "payload": [1]}).encode(),  # a payload that is not an object
])
def test_a_file_it_did_not_write_whole_reads_as_missing_and_is_replaced(content):
    digest = problem_digest("problem")
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / f"{digest}.json").write_bytes(content.replace(b"DIGEST", digest.encode()))
    assert read(digest) is None
    write(digest, {"ok": True})
    assert read(digest) == {"ok": True}


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_folder_that_cannot_be_written_is_left_alone(monkeypatch, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    monkeypatch.setenv(CACHE_ENV, str(locked))
    write("abc", {"x": 1})  # no error
    assert read("abc") is None


def test_a_file_in_the_way_of_the_folder_is_left_alone(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file"))
    write("abc", {"x": 1})  # the folder cannot be made: no error, nothing stored
    assert read("abc") is None


def _writer(folder: str, digest: str, worker: int, rounds: int) -> None:
    os.environ[CACHE_ENV] = folder
    for i in range(rounds):
        choice_store.write(digest, {"worker": worker, "round": i, "padding": "x" * 20_000})


def test_processes_writing_one_file_at_once_leave_it_whole_for_every_reader(monkeypatch, tmp_path):
    digest = problem_digest("shared")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = [ctx.Process(target=_writer, args=(str(tmp_path), digest, w, 150)) for w in range(3)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        if (tmp_path / "auto" / f"{digest}.json").exists():  # once there, a whole file is always there
            payload = read(digest)
            assert payload is not None and payload["padding"] == "x" * 20_000
    for w in workers:
        w.join()
        assert w.exitcode == 0
    assert read(digest)["round"] == 149
    assert not [p for p in (tmp_path / "auto").iterdir() if p.name.endswith(".tmp")]
