"""The ``tkn`` command line: one sub-command per module, dispatched from here.

Each sub-command lives in its own module and registers itself through
``add_parser(subparsers)`` / ``run(args)``; this file only wires them up and
turns expected failures (:class:`TknError`, ``ValueError``, ``FileNotFoundError``)
into one clear line on stderr and a non-zero exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from tkn import __version__

# name -> module that defines ``add_parser(subparsers)`` and ``run(args)``.
COMMANDS = {
    "demo": "tkn.commands.demo",
    "train": "tkn.commands.train",
    "eval": "tkn.commands.evaluate",
    "flops": "tkn.commands.flops",
    "bench": "tkn.commands.bench",
    "show": "tkn.commands.show",
    "sweep": "tkn.commands.sweep",
    "export": "tkn.commands.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tkn", description="Targeted Kernel Networks: train, inspect, benchmark and export TKNs."
    )
    parser.add_argument("--version", action="version", version=f"tkn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not built yet
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tkn: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"tkn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
