"""Command-line interface: ``python -m diagnostics <command>`` and the ``diagnostics`` console script.

Commands are registered in :data:`COMMANDS` with :func:`register`, in one of two forms:

- *in-process*: ``configure(parser)`` adds the command's options and ``run(args) -> int`` runs it
  (``width-report``);
- *forwarding*: ``forward="package.module:function"`` names a ``main(argv) -> int`` that receives
  the command's arguments unparsed, ``--help`` included (``aligned-training`` →
  :func:`diagnostics.aligned.command.main`). The module is imported only when the command runs.

Exit codes: 0 success, 1 a report written with failed runs, 2 bad arguments or missing data files
(a message on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .width import command as width_command

__all__ = ["COMMANDS", "Command", "build_parser", "main", "register"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line and either ``configure``/``run`` or a ``forward`` target."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None
    forward: str | None = None


#: Registered subcommands, by name.
COMMANDS: dict[str, Command] = {}


def register(
    name: str,
    help: str,
    *,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    run: Callable[[argparse.Namespace], int] | None = None,
    forward: str | None = None,
) -> Command:
    """Register a subcommand: either ``configure`` and ``run``, or ``forward="module:function"``."""
    if (forward is None) == (run is None):
        raise ValueError("give either run= (with optional configure=) or forward=")
    COMMANDS[name] = Command(name, help, configure, run, forward)
    return COMMANDS[name]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser, with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="diagnostics",
        description="Diagnostics for nonlinear representation learning (Kawaguchi, Zhang & Deng, 2022).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help,
                                    add_help=command.forward is None)
        if command.configure is not None:
            command.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        if command is not None and command.forward is not None:
            return _forward(command, argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(COMMANDS[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _check():
    """Import the ``check`` command's module (torch.distributed) only when it is used."""
    from . import check_command

    return check_command


def _forward(command: Command, argv: list[str]) -> int:
    module_name, function = command.forward.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"error: the {command.name!r} command needs {module_name}, which is not available",
              file=sys.stderr)
        return 2
    return int(getattr(module, function)(argv) or 0)


register("width-report", "width-scaling report (theory/width.md): train over widths and seeds, write figures and "
         "report.html", configure=width_command.configure, run=width_command.run)
register("aligned-training", "training that keeps the alignment condition by construction (theory/application.md); "
         "arguments are passed to diagnostics.aligned.command", forward="diagnostics.aligned.command:main")
register("check", "the alignment condition D1 on a whole training set, streamed and data-parallel "
         "(theory/alignment.md#data-parallel)", configure=lambda parser: _check().configure(parser),
         run=lambda args: _check().run(args))
