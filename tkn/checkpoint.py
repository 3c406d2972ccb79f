"""Checkpoints that lose nothing: atomic writes, safe loads, one documented format.

A checkpoint is a ``dict`` saved with ``torch.save`` and read back with
``torch.load(weights_only=True)`` (no pickled code is ever executed):

=================== ==========================================================
key                 value
=================== ==========================================================
``format``          ``"tkn-checkpoint"``
``version``         ``1``
``model``           ``{"name": str, "kwargs": dict}`` (and ``"module"`` for a
                    model registered outside ``tkn``): rebuilt with
                    :func:`tkn.models.registry.rebuild`
``model_state``     the model's ``state_dict``
``epoch``           number of completed epochs
``config``          the fully resolved training configuration (plain data)
``metrics``         the last epoch's metrics (plain data)
``optimizer_state`` / ``scheduler_state`` / ``rng``: optional, for resuming
=================== ==========================================================
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkn.io import atomic_write

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "model_from_checkpoint"]

FORMAT = "tkn-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`tkn.io.atomic_write`: a temporary file, fsync, rename).

    A reader (or a crash) never sees a half-written file: either the old
    checkpoint or the new one is there.
    """
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt, truncated, or not a tkn checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (expected a .pt file written by tkn train)")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt, truncated or not a tkn checkpoint (not a PyTorch archive)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files; keep one line
        if "Weights only load failed" in str(exc):
            reason = "it holds objects that a safe (weights_only) load refuses"
        else:
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or ['unreadable'])[0]}"
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a tkn checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a tkn checkpoint (expected a dict with format={FORMAT!r})"
        )
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"checkpoint {str(path)!r} has version {payload['version']}; this tkn reads up to {VERSION}")
    for key in ("model", "model_state"):
        if key not in payload:
            raise ValueError(f"checkpoint {str(path)!r} lacks the {key!r} entry")
    return payload


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (path or loaded dict) and load its weights.

    Returns ``(model, payload)``; the model is in ``eval()`` mode.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_checkpoint`; ``ValueError`` for a dict without the
            ``model`` and ``model_state`` entries.
    """
    from tkn.models.registry import rebuild

    payload = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location)
    missing = [key for key in ("model", "model_state") if key not in payload]
    if missing or not isinstance(payload["model"], dict) or "name" not in payload["model"]:
        raise ValueError("checkpoint must be a tkn checkpoint dict with 'model' ({'name': ..., 'kwargs': ...}) and "
                         f"'model_state' entries; got keys {sorted(map(str, payload))}")
    model = rebuild(payload["model"])
    model.load_state_dict(payload["model_state"])
    return model.eval(), payload
