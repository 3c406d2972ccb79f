"""Learned windows in a small file: the ``m``, ``s`` of every target layer of a trained TKN.

The speed of the ROI engine depends on where the ROIs are, not on the weights: a
frozen layer's work is fixed by its ROIs and by its producer's (the input values
known to be zero), never by the values themselves. A *window file* keeps what
training learned about the ROIs (kilobytes, JSON) and rebuilds a model with
exactly those windows and seeded random weights, so that every engine change
can be measured on ROIs that ``tkn train`` produced, without shipping
checkpoints of megabytes. ``tkn bench --windows NAME`` times one;
``tkn bench --checkpoint FILE --save-windows OUT`` writes one.

The files shipped with the package (:func:`list_windows`) come from ``tkn train``
runs recorded in each file's ``"provenance"``.

Example:
    >>> from tkn.windowfile import list_windows, load_windows
    >>> "tkn6-mnist-12.9x" in list_windows()
    True
    >>> model, shape, meta = load_windows("tkn6-mnist-12.9x")
    >>> shape, round(meta["flop_ratio"], 1)
    ((1, 28, 28), 12.9)
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkn.convert import target_layers
from tkn.io import atomic_write_text

__all__ = ["list_windows", "load_windows", "save_windows", "FORMAT"]

#: The ``"format"`` value of a window file.
FORMAT = "tkn-windows/1"


def _packaged() -> Path:
    return Path(str(resources.files("tkn") / "configs" / "windows"))


def list_windows() -> list[str]:
    """Names of the window files shipped with the package."""
    folder = _packaged()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def save_windows(model: nn.Module, path: str | os.PathLike, *, spec: dict[str, Any],
                 input_shape: tuple[int, int, int], provenance: str = "") -> Path:
    """Write the raw ``m``, ``s`` of every target layer of ``model`` (atomically).

    Args:
        spec: ``{"name": model name, "kwargs": builder keyword arguments}`` (a checkpoint's ``"model"``;
            its ``"module"``, for a model defined outside ``tkn``, is kept).
        input_shape: ``(C, H, W)`` the model runs at.
        provenance: how the windows were obtained (the command, data, budget, test error).
    """
    from tkn.flops import count

    layers = {name: {"m": layer.m.detach().double().tolist(), "s": layer.s.detach().double().tolist()}
              for name, layer in target_layers(model)}
    if not layers:
        raise ValueError("the model has no target layers: there are no windows to save")
    report = count(model, tuple(input_shape))
    model_spec = {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}
    if spec.get("module"):
        model_spec["module"] = spec["module"]
    payload = {"format": FORMAT, "model": model_spec,
               "input_shape": list(input_shape), "flop_ratio": report.dense_macs / max(report.macs, 1),
               "provenance": provenance, "layers": layers}
    return atomic_write_text(path, json.dumps(payload, separators=(",", ":")) + "\n")


def load_windows(name_or_path: str | os.PathLike, seed: int = 0
                 ) -> tuple[nn.Module, tuple[int, int, int], dict[str, Any]]:
    """A model with the windows of a window file (a packaged name or a path) and weights drawn with ``seed``.

    Returns:
        ``(model in eval mode, (C, H, W), the file's contents)``.
    """
    from tkn.models.registry import rebuild

    path = Path(name_or_path)
    if not path.is_file():
        packaged = _packaged() / f"{name_or_path}.json"
        if not packaged.is_file():
            raise ValueError(f"no window file {str(name_or_path)!r}: give a path or one of "
                             f"{', '.join(list_windows()) or '(none packaged)'}")
        path = packaged
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable window file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a window file (expected \"format\": {FORMAT!r})")
    torch.manual_seed(seed)
    model = rebuild(payload["model"])
    layers = dict(target_layers(model))
    if set(layers) != set(payload["layers"]):
        raise ValueError(f"{path}: its layers {sorted(payload['layers'])} are not the model's {sorted(layers)}")
    with torch.no_grad():
        for name, layer in layers.items():
            for key in ("m", "s"):
                value = torch.tensor(payload["layers"][name][key], dtype=layer.m.dtype)
                if tuple(value.shape) != tuple(getattr(layer, key).shape):
                    raise ValueError(f"{path}: {name}.{key} has shape {tuple(value.shape)}, the layer "
                                     f"{tuple(getattr(layer, key).shape)}")
                getattr(layer, key).copy_(value)
    return model.eval(), tuple(int(v) for v in payload["input_shape"]), payload
