"""Sub-commands of the ``tkn`` command line, one module each (see :mod:`tkn.cli`).

Each module defines ``add_parser(subparsers)`` (which sets ``func=run``) and
``run(args) -> int``.
"""
from __future__ import annotations

import argparse

__all__ = ["OneLineErrorParser"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit code 2.

    ``argparse`` prints the whole usage block before an error; ``tkn`` promises
    one clear line per mistake (``tkn train: error: ... (see tkn train --help)``).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
