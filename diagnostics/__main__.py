"""``python -m diagnostics``: the command-line interface of :mod:`diagnostics.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
