"""Parameters and multiply–accumulates (MACs) of a model, counted the way the paper counts "FLOPs".

Convention (Tables 2–6 of the paper, and the original code):

* one FLOP per multiply–accumulate of every convolution and fully connected
  layer: ``output elements × in_channels / groups × kH × kW`` for a
  convolution, ``output elements × in_features`` for a linear layer;
* plus one per element of every batch-norm layer's output;
* nothing else: activations, pooling, dropout, concatenations and the STN's
  ``affine_grid``/``grid_sample`` warp are free.
* A target layer (:class:`~tkn.layers.TargetConv2d`) costs only its ROIs:
  ``Σ_c area(ROI_c) × in_channels / groups × kH × kW`` from its current,
  clipped parameters (:meth:`TargetConv2d.macs`). Any other module with a
  ``macs(height, width)`` method (e.g. a frozen engine layer) is asked the
  same way; a module holding a fixed ``roi`` buffer ``(C, 4)`` and a 4-D
  ``weight`` is counted over those ROIs.

Counts are per sample (batch 1). ``params`` counts every parameter of the
model once (trainable or frozen, BN affine included; BN running statistics
are buffers, not parameters).

Example:
    >>> from tkn.models import create_model
    >>> report = count(create_model("cnn6"), (1, 28, 28))
    >>> report.params, report.macs
    (4586642, 368406912)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tkn.functional import roi_macs
from tkn.layers import TargetConv2d
from tkn.validate import chw

__all__ = ["LayerCount", "FlopReport", "count", "format_count"]


@dataclass(frozen=True)
class LayerCount:
    """One counted layer call.

    Attributes:
        name: qualified module name (``""`` for the root).
        type: class name.
        output_shape: output shape without the batch dimension.
        params: parameters of the layer (a layer called twice appears twice;
            the report's total counts it once).
        macs: the paper's count for this call (ROIs only for target layers).
        dense_macs: what the layer would cost dense (equal to ``macs`` except for target layers).
        roi_fraction: ``macs / dense_macs`` for target layers, else ``None``.
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    dense_macs: int
    roi_fraction: float | None = None


@dataclass
class FlopReport:
    """Result of :func:`count`.

    Attributes:
        input_size: ``(C, H, W)`` counted.
        params: parameters of the model (each once).
        macs: the paper's "FLOPs": MACs of conv/linear layers plus BN elements.
        layers: per-layer rows, in call order.
    """

    input_size: tuple[int, int, int]
    params: int
    macs: int
    layers: list[LayerCount] = field(default_factory=list)

    @property
    def dense_macs(self) -> int:
        """MACs if every target layer computed its whole map (the dense baseline's cost)."""
        return sum(row.dense_macs for row in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready): ``input_size, params, macs, dense_macs, layers``."""
        return {
            "input_size": list(self.input_size),
            "params": self.params,
            "macs": self.macs,
            "dense_macs": self.dense_macs,
            "layers": [{**asdict(row), "output_shape": list(row.output_shape)} for row in self.layers],
        }

    def format_table(self) -> str:
        """A fixed-width text table of the layers and the totals."""
        header = ("layer", "type", "output", "params", "MACs", "ROI %")
        rows = [
            (
                row.name or "(model)",
                row.type,
                "x".join(map(str, row.output_shape)),
                f"{row.params:,}",
                f"{row.macs:,}",
                "" if row.roi_fraction is None else f"{100 * row.roi_fraction:.1f}",
            )
            for row in self.layers
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        align = ["<", "<", ">", ">", ">", ">"]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

        out = [line(header), line(["-" * w for w in widths]), *map(line, rows)]
        out.append("")
        out.append(f"input      {'x'.join(map(str, self.input_size))}")
        out.append(f"params     {self.params:,} ({format_count(self.params)})")
        out.append(f"MACs       {self.macs:,} ({format_count(self.macs)})")
        if self.dense_macs != self.macs:
            out.append(f"dense MACs {self.dense_macs:,} ({format_count(self.dense_macs)})")
        return "\n".join(out)


def format_count(n: float) -> str:
    """A count (MACs, parameters) to three significant digits with K, M, G or T, as the paper writes them.

    >>> [format_count(n) for n in (368406912, 4586642, 45034, 999999, 12, 0)]
    ['368M', '4.59M', '45K', '1M', '12', '0']
    """
    for unit, scale in (("", 1.0), ("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        value = float(f"{n / scale:.3g}")  # rounded first, so that 999,999 is 1M and not 1e+03K
        if abs(value) < 1000:
            break
    return f"{value:g}{unit}"


# -- per-layer rules -----------------------------------------------------------------


def _kernel_macs(module: nn.Module) -> int:
    """``in_channels / groups × kH × kW`` of a conv-like module with a 4-D weight."""
    w = module.weight
    return int(w.shape[1] * w.shape[2] * w.shape[3])


def _is_counted(module: nn.Module) -> bool:
    if isinstance(module, (TargetConv2d, nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
        return True
    if callable(getattr(module, "macs", None)):
        return True
    weight = getattr(module, "weight", None)
    roi = getattr(module, "roi", None)
    return isinstance(weight, Tensor) and weight.dim() == 4 and isinstance(roi, Tensor) and roi.dim() == 2


def _layer_macs(module: nn.Module, out: Tensor) -> tuple[int, int, bool]:
    """``(macs, dense_macs, is_roi_counted)`` of one call with output ``out`` (batch 1)."""
    per_sample = out[0]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        n = per_sample.numel()
        return n, n, False
    if isinstance(module, nn.Linear):
        n = per_sample.numel() * module.in_features
        return n, n, False
    dense = per_sample.numel() * _kernel_macs(module) if getattr(module, "weight", None) is not None else 0
    h, w = int(out.shape[-2]), int(out.shape[-1])
    reports_macs = callable(getattr(module, "macs", None)) and not isinstance(module, nn.Conv2d)
    if callable(getattr(module, "dense_macs", None)):
        dense = int(module.dense_macs(h, w))  # e.g. a frozen layer with a fused pool: its output is smaller
    if isinstance(module, TargetConv2d) or reports_macs:
        return int(module.macs(h, w)), dense, True
    roi = getattr(module, "roi", None)
    if isinstance(roi, Tensor) and not isinstance(module, nn.Conv2d):
        return roi_macs(roi, module.weight.shape[1], module.weight.shape[2:]), dense, True
    return dense, dense, False


def _counted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules to hook: counted ones, without descending into them (their children are theirs)."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(prefix: str, module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if _is_counted(module):
            found.append((prefix, module))
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


@torch.no_grad()
def count(model: nn.Module, input_size: Any = None) -> FlopReport:
    """Count parameters and the paper's FLOPs (MACs) of ``model`` on one input of ``input_size``.

    Runs one forward pass on a zero tensor of batch 1 in ``eval()`` mode (each
    module's training flag is restored afterwards) with forward hooks on the
    counted layers (see the module docstring for the rules).

    Args:
        model: any ``nn.Module`` taking one image batch.
        input_size: ``(C, H, W)``, ``(N, C, H, W)`` or ``"C,H,W"``; ``None`` uses the
            model's own ``in_channels`` and ``input_size`` attributes (models of
            :func:`tkn.models.create_model` have them).

    Returns:
        A :class:`FlopReport`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: bad ``input_size``, or the model rejects an input of that size.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if input_size is None:
        channels, size = getattr(model, "in_channels", None), getattr(model, "input_size", None)
        if channels is None or size is None:
            raise ValueError("input_size is required for a model without in_channels/input_size attributes")
        input_size = (channels, *size) if isinstance(size, (tuple, list)) else (channels, size, size)
    dims = chw("input_size", input_size)
    first = next(model.parameters(), None)
    factory = {"device": first.device, "dtype": first.dtype} if first is not None else {}
    x = torch.zeros(1, *dims, **factory)

    rows: list[LayerCount] = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            macs, dense, roi_counted = _layer_macs(module, out)
            rows.append(
                LayerCount(
                    name=name,
                    type=type(module).__name__,
                    output_shape=tuple(int(d) for d in out.shape[1:]),
                    params=sum(p.numel() for p in module.parameters()),
                    macs=macs,
                    dense_macs=dense,
                    roi_fraction=(macs / dense if dense else 0.0) if roi_counted else None,
                )
            )

        return hook

    modes = {m: m.training for m in model.modules()}
    handles = [module.register_forward_hook(hook_for(name)) for name, module in _counted_modules(model)]
    try:
        model.eval()
        try:
            model(x)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"the model does not accept an input of size {dims}: {exc}") from None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(input_size=dims, params=params, macs=sum(r.macs for r in rows), layers=rows)
