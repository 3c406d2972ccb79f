"""Atomic file writes: a reader (or a crash) sees either the old file or the new one, never half of one.

Every file ``tkn`` writes for later (checkpoints, run records, cached arrays,
downloads) goes through :func:`atomic_write`: the bytes go to a temporary
file in the destination's folder, are flushed to disk (``fsync``) and renamed
over the destination (``os.replace``, atomic on POSIX and Windows); the
folder is then synced so that the rename itself survives a crash. If writing
fails, the temporary file is removed and the destination is untouched.

This module is at the bottom of ``tkn`` with :mod:`tkn.validate` (it imports
only the standard library).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], object], *, pass_path: bool = False) -> Path:
    """Write ``path`` atomically through ``write``, creating its folder if needed; returns ``path``.

    Args:
        path: the destination.
        write: called once with the temporary file opened for binary writing (``pass_path=False``), or
            with its :class:`~pathlib.Path` (``pass_path=True``, for writers that take a file name, such
            as a compiler's ``-o``). Whatever it raises propagates, after the temporary file is removed
            (so a writer can reject what it wrote, e.g. on a wrong checksum).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "a.bin", lambda f: f.write(b"abc")).read_bytes()
        b'abc'
        >>> sorted(p.name for p in folder.iterdir())  # no temporary file left behind
        ['a.bin']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if not pass_path:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        if pass_path:
            write(tmp)
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write` of ``text`` (encoded, line endings as given); returns ``path``."""
    data = text.encode(encoding)
    return atomic_write(path, lambda f: f.write(data))


def _fsync(path: Path, flags: int) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a platform that cannot sync a folder skips it."""
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return  # e.g. Windows cannot open a folder
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
