"""Where decoded data sets are cached on disk, and how.

The cache folder is ``$TKN_CACHE`` if set, else ``~/.cache/tkn``. Entries are
``.npz`` files whose names carry a hash of everything they were built from,
written atomically (:func:`tkn.io.atomic_write`) so two processes never see a
half-written file. A cache that cannot be written (read-only home, full disk)
is skipped: the data are then rebuilt on every run, never wrong.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from tkn.io import atomic_write

__all__ = ["cache_dir", "file_digest", "cached_npz"]


def cache_dir() -> Path:
    """The folder for cached arrays: ``$TKN_CACHE`` or ``~/.cache/tkn``."""
    env = os.environ.get("TKN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tkn"


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """First ``length`` hex digits of the SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def _read(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not all(k in z.files for k in keys):
                return None
            return {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError):
        return None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError:
        pass  # a cache that cannot be written is skipped (module docstring)


def cached_npz(name: str, keys: tuple[str, ...], build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays ``keys`` from ``cache_dir()/name`` if present and readable, else ``build()`` (then stored).

    Args:
        name: file name inside the cache folder; it must encode every input the
            arrays depend on (source hash, seed, split), since it is the only key.
        keys: the arrays expected in the file; a file missing one is rebuilt.
        build: computes the arrays when the cache has no valid entry.
    """
    path = cache_dir() / name
    found = _read(path, keys)
    if found is not None:
        return found
    arrays = build()
    _write(path, arrays)
    return arrays
