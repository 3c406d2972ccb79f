"""The ``tkn`` command line: one sub-command per module, dispatched from here.

Each sub-command lives in its own module and registers itself through
``add_parser(subparsers)`` / ``run(args)``; this file only wires them up, gives
every command ``--import MODULE`` (and reads ``$TKN_PLUGINS``: modules that
register models of their own, imported before the command runs), and
turns expected failures (:class:`TknError`, ``ValueError``, ``FileNotFoundError``)
into one clear line on stderr and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from tkn import __version__
from tkn.commands import OneLineErrorParser, add_import_argument

# name -> module that defines ``add_parser(subparsers)`` and ``run(args)``.
# Modules import their heavy dependencies inside ``run`` so that ``tkn --help`` stays fast.
COMMANDS = {
    "demo": "tkn.commands.demo",
    "train": "tkn.commands.train",
    "eval": "tkn.commands.evaluate",
    "flops": "tkn.commands.flops",
    "bench": "tkn.commands.bench",
    "show": "tkn.commands.show",
    "sweep": "tkn.commands.sweep",
    "frontier": "tkn.commands.frontier",
    "export": "tkn.commands.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="tkn", description="Targeted Kernel Networks: train, inspect, benchmark and export TKNs."
    )
    parser.add_argument("--version", action="version", version=f"tkn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for module_name in COMMANDS.values():
        command = importlib.import_module(module_name).add_parser(sub)
        try:  # `tkn CMD ... --debug` works too (unless the command defines it itself)
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show full tracebacks on errors")
        except argparse.ArgumentError:
            pass
        try:  # `tkn CMD --import MODULE`: e.g. a module that registers a model of its own
            add_import_argument(command)
        except argparse.ArgumentError:
            pass
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        from tkn.models import import_plugins

        import_plugins(getattr(args, "imports", ()))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tkn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        # Expected failures (bad values, missing files or optional packages, a diverged run)
        # are one line; --debug shows the traceback.
        if getattr(args, "debug", False):
            raise
        message = str(exc) or type(exc).__name__
        print(f"tkn {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
