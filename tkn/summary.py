"""Per-layer summaries of a TKN: where each target layer looks and what it costs.

One forward pass on an example input of the model's input size records the
output map of every :class:`~tkn.layers.TargetConv2d`; the window parameters
are then read off each layer exactly as its forward pass uses them (clipped
for that map). The result is a plain table (a list of dicts) that prints,
serialises to JSON and feeds the figures of :mod:`tkn.viz`.

Columns of :func:`layer_table` (one row per target layer, in module order):

==================== ==================================================================
column               meaning
==================== ==================================================================
``layer``            qualified module name
``in_channels``      input channels; ``out_channels`` output channels (= windows)
``kernel``           ``[kH, kW]``; ``window`` ``"cauchy"``/``"gaussian"``; ``l2`` penalty
``input_size``       ``[H, W]`` of the layer's input; ``output_size`` of its output map
``m_y_mean`` …       mean/min/max of the clipped centres (``m_y``, ``m_x``) and
                     scales (``s_y``, ``s_x``), relative units (0..1 = the map)
``roi_area_mean``    mean ROI area as a fraction of the map (also ``_min``, ``_max``)
``macs_dense``       multiply–accumulates of the full convolution (one sample)
``macs_roi``         multiply–accumulates over the ROIs only (what a TKN costs)
``speedup``          ``macs_dense / macs_roi`` (``inf`` if every ROI is empty)
==================== ==================================================================
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tkn.convert import target_layers
from tkn.flops import format_count
from tkn.functional import roi_areas
from tkn.layers import TargetConv2d

__all__ = ["example_input", "infer_in_channels", "target_geometry", "layer_row", "layer_table", "totals",
           "format_table"]


def infer_in_channels(model: nn.Module) -> int:
    """Input channels of ``model``: the ``in_channels`` of its first convolution (or its own attribute)."""
    value = getattr(model, "in_channels", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, TargetConv2d)):
            return module.in_channels
    raise ValueError("cannot infer the model's input channels (no convolution found): pass input_size as (C, H, W)")


def example_input(model: nn.Module, input_size: Sequence[int]) -> Tensor:
    """A deterministic example batch ``(1, C, H, W)`` for ``input_size`` = ``(C, H, W)`` or ``(H, W)``.

    The values (a smooth ramp in ``[0, 1]``) only matter for models whose
    geometry depends on the input (e.g. an STN); target layers' maps do not.
    """
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else None
    if size is None or len(size) not in (2, 3) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
    ):
        raise ValueError(f"input_size must be (C, H, W) or (H, W) of positive ints, got {input_size!r}")
    if len(size) == 2:
        size = (infer_in_channels(model), *size)
    c, h, w = size
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
    device = p.device if p is not None else None
    ramp = torch.linspace(0.0, 1.0, h * w, dtype=dtype, device=device).reshape(1, 1, h, w)
    return ramp.expand(1, c, h, w).contiguous()


def target_geometry(model: nn.Module, example: Tensor) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """``{name: (input_hw, output_hw)}`` of every target layer reached by one forward pass of ``example``.

    Layers not reached by the example (e.g. unused branches) are absent. The
    model's training mode is restored afterwards and no gradients are kept.
    """
    if not isinstance(example, Tensor) or example.dim() != 4:
        raise ValueError(
            f"example must be a (N, C, H, W) tensor, got {getattr(example, 'shape', type(example).__name__)}"
        )
    found: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook_for(name: str):
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            found.setdefault(name, (tuple(args[0].shape[-2:]), tuple(output.shape[-2:])))

        return record

    hooks = [layer.register_forward_hook(hook_for(name)) for name, layer in target_layers(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def _stats(prefix: str, values: Tensor) -> dict[str, float]:
    v = values.detach().to(torch.float64)
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_min": float(v.min()), f"{prefix}_max": float(v.max())}


def layer_row(name: str, layer: TargetConv2d, input_hw: Sequence[int], output_hw: Sequence[int]) -> dict:
    """The summary row of one target layer on an output map of ``output_hw`` (see the module docstring)."""
    h, w = (int(v) for v in output_hw)
    with torch.no_grad():
        m, s = layer.clipped(h, w)
        roi = layer.rois(h, w)
    area = roi_areas(roi).to(torch.float64) / (h * w)
    per_position = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
    macs_dense = layer.out_channels * h * w * per_position
    macs_roi = layer.macs(h, w)
    row = {
        "layer": name,
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel": list(layer.kernel_size),
        "window": layer.window,
        "l2": layer.l2,
        "input_size": [int(v) for v in input_hw],
        "output_size": [h, w],
    }
    row |= _stats("m_y", m[:, 0]) | _stats("m_x", m[:, 1]) | _stats("s_y", s[:, 0]) | _stats("s_x", s[:, 1])
    row |= _stats("roi_area", area)
    row |= {"macs_dense": macs_dense, "macs_roi": macs_roi,
            "speedup": macs_dense / macs_roi if macs_roi else math.inf}
    return row


def layer_table(model: nn.Module, input_size: Sequence[int], layers: Sequence[str] | None = None) -> list[dict]:
    """Per-layer summary of every target layer of ``model`` for inputs of ``input_size``.

    Args:
        model: any module containing :class:`~tkn.layers.TargetConv2d` layers.
        input_size: ``(C, H, W)`` or ``(H, W)`` (channels then taken from the
            first convolution).
        layers: optional qualified names to keep (others are dropped); an
            unknown name raises ``ValueError`` listing the target layers.

    Returns:
        One dict per target layer reached by a forward pass, in module order
        (columns in the module docstring). Empty if the model has none.

    Example:
        >>> net = nn.Sequential(TargetConv2d(1, 4, 3), nn.ReLU())
        >>> row = layer_table(net, (1, 8, 8))[0]
        >>> row["output_size"], row["roi_area_mean"], row["speedup"]
        ([8, 8], 1.0, 1.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    all_layers = target_layers(model)
    names = [name for name, _ in all_layers]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"layers {unknown} are not target layers of the model; choose from {names}")
    geometry = target_geometry(model, example_input(model, input_size))
    keep = set(names if layers is None else layers)
    return [
        layer_row(name, layer, *geometry[name])
        for name, layer in all_layers
        if name in keep and name in geometry
    ]


def totals(rows: Sequence[dict]) -> dict:
    """Sums over target layers: ``macs_dense``, ``macs_roi``, their ``speedup``, and ``channels``."""
    dense = sum(r["macs_dense"] for r in rows)
    roi = sum(r["macs_roi"] for r in rows)
    return {
        "layers": len(rows),
        "channels": sum(r["out_channels"] for r in rows),
        "macs_dense": dense,
        "macs_roi": roi,
        "speedup": dense / roi if roi else (1.0 if not dense else math.inf),
    }


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of :func:`layer_table` rows plus a total line."""
    head = ["layer", "ch", "map", "m_y mean [min,max]", "m_x mean [min,max]", "s_y mean [min,max]",
            "s_x mean [min,max]", "ROI area", "MACs dense", "MACs ROI", "speed-up"]

    def rng(r, key):
        return f"{r[key + '_mean']:.2f} [{r[key + '_min']:.2f},{r[key + '_max']:.2f}]"

    body = [
        [r["layer"], str(r["out_channels"]), f"{r['output_size'][0]}x{r['output_size'][1]}",
         rng(r, "m_y"), rng(r, "m_x"), rng(r, "s_y"), rng(r, "s_x"), f"{100 * r['roi_area_mean']:.1f}%",
         format_count(r["macs_dense"]), format_count(r["macs_roi"]), f"{r['speedup']:.2f}x"]
        for r in rows
    ]
    t = totals(rows)
    body.append(["total (target layers)", str(t["channels"]), "", "", "", "", "", "",
                 format_count(t["macs_dense"]), format_count(t["macs_roi"]), f"{t['speedup']:.2f}x"])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(wd) for cell, wd in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
