"""Reading checkpoints for ``tkn train --resume`` and ``tkn eval`` with one-line errors.

:func:`tkn.checkpoint.load_checkpoint` does the safe load (``weights_only=True``);
this wrapper first checks that the file is a PyTorch archive at all, so a
truncated, corrupt or foreign file gets a short message naming the file
rather than the unpickler's multi-paragraph explanation.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from tkn.checkpoint import load_checkpoint

__all__ = ["read_checkpoint"]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``load_checkpoint(path)`` with errors reduced to one line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupt, or not a tkn checkpoint.
    """
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt, truncated or not a tkn checkpoint (not a PyTorch archive)"
        )
    try:
        return load_checkpoint(path)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unreadable"
        if "Weights only load failed" in first:
            first = first.split(": Weights only load failed", 1)[0] + " (it holds objects a safe load refuses)"
        raise ValueError(first) from None
