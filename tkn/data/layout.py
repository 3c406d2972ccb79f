"""Checks on a user's data folder that fail early with a message naming what was expected where."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["require_root", "require_file"]


def require_root(root: str | os.PathLike | None, name: str, expected: str) -> Path:
    """``root`` as a ``Path``, or a clear error when it is missing.

    Args:
        root: the folder passed to :func:`tkn.data.load`.
        name: the data set's name, for the message.
        expected: what the folder should hold, for the message.

    Raises:
        ValueError: ``root`` is ``None``.
        FileNotFoundError: ``root`` is not an existing folder.
    """
    if root is None:
        raise ValueError(f"{name}: root is required: the folder holding {expected}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: root {path} is not an existing folder (expected it to hold {expected})")
    return path


def require_file(path: Path, name: str, what: str) -> Path:
    """``path`` if it is a file, else ``FileNotFoundError`` saying it should hold ``what``."""
    if not path.is_file():
        raise FileNotFoundError(f"{name}: expected {what} at {path}, found no such file")
    return path
