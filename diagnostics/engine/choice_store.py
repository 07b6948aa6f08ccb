r"""``auto``'s knowledge on disk: what one process learnt about a problem spares the next one the timing.

One small JSON file per problem (a model's structure, the inputs' layout, the measurement's settings and
the machine: :func:`problem_digest`) and one per machine (the rate of matrix products, the one-time start-up
of ``torch.func``) in the user's cache folder, :func:`cache_dir`: ``$ALIGNMENT_DIAGNOSTICS_CACHE`` when set (an
empty value turns the cache off), otherwise the platform's cache folder (``~/.cache/alignment-diagnostics``
on Linux, ``$XDG_CACHE_HOME`` honoured; ``~/Library/Caches/alignment-diagnostics`` on macOS;
``%LOCALAPPDATA%\alignment-diagnostics\Cache`` on Windows).

Only timings are stored, never a fact a result depends on: every plan is exact, and a process validates
each model itself (:data:`~diagnostics.engine.measurement.VALIDATED`), so a stale or wrong entry can cost time
but never change a result. Files are written atomically (:func:`~diagnostics.store.write_atomic`, a
temporary file renamed into place), so processes writing at once leave one whole file, and a file that
is torn, of another format or of another problem (a digest that does not match) reads as missing. A
folder that cannot be written is left alone: the cache is an optimisation, never a condition.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ..store import write_atomic

__all__ = ["CACHE_ENV", "FORMAT", "cache_dir", "machine_key", "problem_digest", "read", "write"]

#: The environment variable that sets the cache folder (empty: no cache on disk).
CACHE_ENV = "ALIGNMENT_DIAGNOSTICS_CACHE"
#: The layout of the files; a file of another format reads as missing.
FORMAT = 1
_APP = "alignment-diagnostics"


def cache_dir() -> Path | None:
    """Return the folder of ``auto``'s files, or ``None`` when the cache is off (the variable set but empty)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return Path(chosen).expanduser() / "auto" if chosen else None
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / _APP / "Cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / _APP
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / _APP
    return base / "auto"


_MACHINE: dict[str, tuple] = {}


def machine_key(device: torch.device) -> tuple:
    """Return what timings depend on besides the problem: torch's version, its threads, the processor or GPU."""
    name = str(device)
    if name not in _MACHINE:
        if device.type == "cuda":
            processor = torch.cuda.get_device_name(device)
        else:
            processor = _cpu_model() or platform.processor() or platform.machine()
        _MACHINE[name] = (torch.__version__, processor)
    return (*_MACHINE[name], torch.get_num_threads())


def problem_digest(key: object) -> str:
    """Return a file name for ``key``: the SHA-256 of its ``repr`` (the same in every process for the engine's keys)."""
    return hashlib.sha256(repr((FORMAT, key)).encode()).hexdigest()[:32]


def read(digest: str) -> dict[str, Any] | None:
    """Return the payload stored under ``digest``, or ``None`` when missing, torn, of another format or problem."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        stored = json.loads((folder / f"{digest}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT or stored.get("digest") != digest:
        return None
    payload = stored.get("payload")
    return payload if isinstance(payload, dict) else None


def write(digest: str, payload: dict[str, Any]) -> None:
    """Store ``payload`` under ``digest``, atomically; nothing happens when the folder cannot be written."""
    folder = cache_dir()
    if folder is None:
        return
    text = json.dumps({"format": FORMAT, "digest": digest, "payload": payload}).encode()
    try:
        write_atomic(folder / f"{digest}.json", lambda fh: fh.write(text), durable=False)
    except OSError:
        pass


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
