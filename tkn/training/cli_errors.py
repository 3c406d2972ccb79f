"""One-line argument errors for the training sub-commands.

``argparse`` normally prints the whole usage block before an error; the
training commands promise one clear line on stderr and exit code 2 for every
mistake, so their parsers print only ``PROG: error: MESSAGE``.
"""
from __future__ import annotations

import argparse

__all__ = ["one_line_errors"]


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report argument errors as a single line (exit code 2); returns ``parser``."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser
