"""Imports of the optional libraries the integrations wrap, failing with the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise ``ImportError`` saying which extra of this package installs it.

    Parameters
    ----------
    module
        The module to import, e.g. ``"lightning.pytorch"``.
    extra
        The extra of ``alignment-diagnostics`` that installs it, e.g. ``"lightning"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this integration needs {module.split('.')[0]} ({module} could not be imported: {exc}); install it with "
            f'pip install "alignment-diagnostics[{extra}]"'
        ) from exc
