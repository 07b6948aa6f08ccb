"""Crash-safe result files, and the one resumable store that sweeps and experiments keep their runs in.

Every file is written atomically: a temporary file in the same folder, flushed and fsynced, then
renamed; :func:`os.replace` is atomic on POSIX and Windows, so a reader sees either the old file or the
complete new one, never a torn write, whatever kills the writer.

:class:`RunStore` keeps one file per finished run under ``<folder>/runs``, stamped with a fingerprint
of the settings that produced it. A file is read back only when its fingerprint matches the settings
asked for now; a missing, torn or stale file reads as ``None``, so the run is simply done again.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["RunStore", "write_atomic", "write_json", "write_torch"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Call ``write(file)`` on a temporary binary file next to ``path``, then move it into place.

    ``durable``: fsync the file before the rename, so that it survives a power cut (a cache can do without).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            if durable:
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


class RunStore:
    """Fingerprinted result files of a resumable job, one per run, under ``<folder>/runs``.

    Parameters
    ----------
    folder
        The job's output folder.

    Notes
    -----
    JSON results are stored as ``{"fingerprint": …, **payload}`` in ``<name>.json``; tensors and other
    ``torch.save``-able states as ``{"fingerprint": …, "state": …}`` in ``<name>.pt``.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.dir = Path(folder) / "runs"

    def read(self, name: str, fingerprint: str) -> dict[str, Any] | None:
        """Return the JSON payload of ``name`` (fingerprint included), or ``None`` if missing, torn or stale."""
        try:
            stored = json.loads((self.dir / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return stored if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint else None

    def write(self, name: str, fingerprint: str, payload: dict[str, Any]) -> None:
        """Store ``payload`` as the result of ``name`` under ``fingerprint``, atomically."""
        write_json(self.dir / f"{name}.json", {"fingerprint": fingerprint, **payload})

    def remove(self, name: str) -> None:
        """Forget the JSON result of ``name`` (nothing happens if there is none)."""
        (self.dir / f"{name}.json").unlink(missing_ok=True)

    def read_state(self, name: str, fingerprint: str) -> Any | None:
        """Return the ``torch.save``-d state of ``name``, or ``None`` if missing, torn or stale."""
        try:
            stored = torch.load(self.dir / f"{name}.pt", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError, pickle.UnpicklingError):
            return None
        return stored["state"] if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint else None

    def write_state(self, name: str, fingerprint: str, state: Any) -> None:
        """Store a ``torch.save``-able ``state`` for ``name`` under ``fingerprint``, atomically."""
        write_torch(self.dir / f"{name}.pt", {"fingerprint": fingerprint, "state": state})
