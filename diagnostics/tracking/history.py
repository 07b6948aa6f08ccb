"""Append-only, crash-safe history of measurement records in a JSON-lines file.

The file holds one JSON object per line: a header line ``{"meta": {...}}`` written when the file
is created, then one record per line. Every line is written with a single ``write`` of the whole
line followed by ``flush`` and ``fsync``, so a crash (even ``SIGKILL``) can only ever lose the
record being written, and leaves at worst a *torn* last line (no trailing newline, or JSON cut
short). Reading ignores a torn last line; resuming truncates it before appending, so the file is
again a sequence of complete lines. A malformed line anywhere else is corruption and raises.

Records are plain dictionaries of JSON scalars; ``NaN`` and ``inf`` are written as the
``NaN``/``Infinity`` tokens that Python's :mod:`json` reads back. Steps must strictly increase.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DiagnosticsError
from ..store import write_atomic

__all__ = ["History", "load_history", "read_history"]

FORMAT = "diagnostics.history/1"


class History:
    """Records kept in memory and, when ``path`` is given, appended to a JSON-lines file.

    Parameters
    ----------
    path
        The file, or ``None`` to keep the records in memory only.
    meta
        Header stored on the first line of a new file (JSON-serialisable).
    resume
        If the file exists: ``True`` reads its finished records (and truncates a torn last line) so
        that appending continues it; ``False`` replaces it with a new history.

    Attributes
    ----------
    records
        The finished records, oldest first (those read on resume included).
    meta
        The header: the one given, or the one read from the resumed file.
    resumed
        Whether records were read from an existing file.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, meta: Mapping[str, Any] | None = None,
                 resume: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.records: list[dict[str, Any]] = []
        self.resumed = False
        if self.path is None:
            return
        if resume and self.path.exists():
            old_meta, records, complete_bytes = _parse(self.path)
            if old_meta is not None:
                with open(self.path, "r+b") as fh:  # drop a torn last line before appending
                    fh.truncate(complete_bytes)
                    fh.flush()
                    os.fsync(fh.fileno())
                self.meta, self.records, self.resumed = old_meta, records, True
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as fh:
            _write_line(fh, {"meta": {"format": FORMAT, **self.meta}})
        _fsync_dir(self.path.parent)

    @property
    def last_step(self) -> int | None:
        """Step of the last finished record, or ``None`` when there is none."""
        return int(self.records[-1]["step"]) if self.records else None

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (a single line, flushed and fsynced) and keep it in memory.

        Raises
        ------
        DiagnosticsError
            When ``record['step']`` does not exceed the last recorded step.
        """
        step = int(record["step"])
        if self.last_step is not None and step <= self.last_step:
            raise DiagnosticsError(
                f"step {step} is not after the last recorded step {self.last_step}: records are "
                "append-only and steps must strictly increase"
            )
        clean = {str(k): _plain(v) for k, v in record.items()}
        if self.path is not None:
            with open(self.path, "ab") as fh:
                _write_line(fh, clean)
        self.records.append(clean)

    def drop_after(self, step: int) -> int:
        """Forget the records after ``step`` and return how many there were.

        A run resumed from a checkpoint at ``step`` measures the later steps again: the records that the
        interrupted run wrote after its checkpoint belong to a trajectory that no longer exists. The file is
        rewritten without them atomically (:func:`~diagnostics.store.write_atomic`: a crash leaves the old or
        the new file, never a mix).
        """
        kept = [r for r in self.records if int(r["step"]) <= step]
        dropped = len(self.records) - len(kept)
        self.records = kept
        if dropped:
            self._rewrite()
        return dropped

    def update_meta(self, values: Mapping[str, Any]) -> None:
        """Add ``values`` to the header (what is known only after the first measurement); the file is rewritten."""
        self.meta.update(values)
        self._rewrite()

    def _rewrite(self) -> None:
        """Write the header and the records anew, atomically (:func:`~diagnostics.store.write_atomic`)."""
        if self.path is not None:
            lines = [{"meta": {"format": FORMAT, **self.meta}}, *self.records]
            write_atomic(self.path, lambda fh: fh.write(b"".join(_line(obj) for obj in lines)))

    def frame(self) -> pd.DataFrame:
        """Return the records as a DataFrame, one row per record (the header in ``attrs['meta']``)."""
        frame = pd.DataFrame.from_records(self.records)
        frame.attrs["meta"] = dict(self.meta)
        return frame


def read_history(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read the header and the finished records of a history file (a torn last line is ignored)."""
    meta, records, _ = _parse(Path(path))
    if meta is None:
        raise DiagnosticsError(f"{path} holds no history header: it is empty or not a history file")
    return meta, records


def load_history(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load the finished records of a history file as a DataFrame (header in ``attrs['meta']``)."""
    meta, records = read_history(path)
    frame = pd.DataFrame.from_records(records)
    frame.attrs["meta"] = meta
    return frame


# ----------------------------------------------------------------------------------------------


def _line(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, allow_nan=True, separators=(",", ":")) + "\n").encode()


def _write_line(fh, obj: Mapping[str, Any]) -> None:
    fh.write(_line(obj))
    fh.flush()
    os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make a newly created file's directory entry durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """Header, records and the byte length of the complete lines of a history file."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: empty, or a torn line
    complete = len(data) - len(tail)
    objects = []
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not tail:
                complete -= len(line) + 1  # a torn final line that happens to end in a newline
                break
            raise DiagnosticsError(
                f"{path}, line {number}: not a JSON record ({exc}); the file is corrupt"
            ) from exc
        objects.append(obj)
    if not objects:
        return None, [], complete
    if not isinstance(objects[0], dict) or "meta" not in objects[0]:
        raise DiagnosticsError(f"{path} does not start with a history header: it is not a history file")
    records = objects[1:]
    for number, (a, b) in enumerate(zip(records, records[1:], strict=False), start=3):
        if b["step"] <= a["step"]:
            raise DiagnosticsError(f"{path}, line {number}: step {b['step']} does not follow {a['step']}")
    return objects[0]["meta"], records, complete


def _plain(value: Any) -> Any:
    """Convert a Python, numpy or 0-d torch value to a JSON scalar."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return _plain(value.item())
    raise DiagnosticsError(
        f"record values must be scalars (numbers, bools, strings), got {type(value).__name__}"
    )
