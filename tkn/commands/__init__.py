"""Sub-commands of the ``tkn`` command line, one module each (see :mod:`tkn.cli`).

Each module defines ``add_parser(subparsers)`` (which sets ``func=run``) and
``run(args) -> int``.
"""
from __future__ import annotations

import argparse

__all__ = ["OneLineErrorParser", "parse_chw"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit code 2.

    ``argparse`` prints the whole usage block before an error; ``tkn`` promises
    one clear line per mistake (``tkn train: error: ... (see tkn train --help)``).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_chw(text: str | None, option: str = "--input") -> tuple[int, int, int] | None:
    """A command-line shape ``"C,H,W"`` (or ``"CxHxW"``) as ``(C, H, W)``; ``None`` stays ``None``.

    Raises:
        ValueError: not three positive integers; the message names ``option``.
    """
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{option} must be C,H,W with three positive ints (e.g. 1,28,28), got {text!r}")
    return shape
