"""Crash-safe result files: a temporary file in the same folder, flushed and fsynced, then renamed.

:func:`os.replace` is atomic on POSIX and Windows, so a reader sees either the old file or the complete
new one, never a torn write, whatever kills the writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["write_atomic", "write_json", "write_torch"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary binary file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as JSON, atomically."""
    write_atomic(path, lambda fh: fh.write(json.dumps(payload).encode()))


def write_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """:func:`torch.save` ``obj``, atomically."""
    write_atomic(path, lambda fh: torch.save(obj, fh))
