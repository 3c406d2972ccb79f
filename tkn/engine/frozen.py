"""The simple frozen executor: one convolution per distinct ROI, window pre-multiplied."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn import functional as TF
from tkn.layers import TargetConv2d

__all__ = ["FrozenTargetConv2d", "freeze"]


class FrozenTargetConv2d(nn.Module):
    """A :class:`TargetConv2d` with ROIs fixed for one input size; only the ROIs are convolved.

    Channels that share an ROI are convolved together; each group's window crop
    is precomputed. Outputs outside every ROI are zero, as in the dense semantics.
    """

    def __init__(self, layer: TargetConv2d, input_hw: tuple[int, int]) -> None:
        super().__init__()
        self.input_hw = tuple(input_hw)
        self.output_hw = layer.output_size(*input_hw)
        self.stride, self.dilation, self.groups = layer.stride, layer.dilation, layer.groups
        self.pad, self.padding_mode = layer.pad, layer.padding_mode
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        with torch.no_grad():
            roi = layer.rois(*self.output_hw)
            win = layer.attention(*self.output_hw)
        self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.register_buffer("window_map", (win * TF.roi_mask(roi, *self.output_hw)).to(layer.weight.dtype))
        self.register_buffer("roi", roi)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(
                f"this frozen layer was planned for inputs of size {self.input_hw}, got {tuple(x.shape[-2:])}; "
                "freeze the model again with an example of the new size"
            )
        xp = TF.pad_input(x, self.pad, self.padding_mode)
        return TF._sliced_conv(
            xp, self.weight, self.bias, self.roi, self.window_map.to(x.dtype),
            self.stride, self.dilation, self.groups, self.output_hw,
        )

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, input_hw={self.input_hw}, rois={len(torch.unique(self.roi, dim=0))} distinct"


def _input_sizes(model: nn.Module, example_input: Tensor) -> dict[int, tuple[int, int]]:
    sizes: dict[int, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes.setdefault(id(module), tuple(args[0].shape[-2:]))

    hooks = [module.register_forward_pre_hook(record) for module in model.modules() if isinstance(module, TargetConv2d)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def freeze(model: nn.Module, example_input: Tensor, *, input_size: tuple[int, int] | None = None) -> nn.Module:
    """An inference copy of ``model`` whose target layers run only their fixed ROIs.

    Args:
        model: a model containing :class:`TargetConv2d` layers (left untouched).
        example_input: a batch (any batch size) of the shape the frozen model will see.
        input_size: optional ``(H, W)`` to plan for instead of the example's size
            (the example is resized: the window parameters are relative, so a TKN
            trained at one resolution runs at another).

    Returns:
        A copy in ``eval()`` mode; target layers are replaced by frozen ones.
        Layers never reached by the example input are left as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if input_size is not None:
        example_input = example_input.new_zeros((*example_input.shape[:-2], *input_size))
    frozen = copy.deepcopy(model).eval()
    sizes = _input_sizes(frozen, example_input[:1])
    if isinstance(frozen, TargetConv2d):
        return FrozenTargetConv2d(frozen, sizes[id(frozen)]).eval()
    built: dict[int, FrozenTargetConv2d] = {}
    for module in list(frozen.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, TargetConv2d) and id(child) in sizes:
                if id(child) not in built:
                    built[id(child)] = FrozenTargetConv2d(child, sizes[id(child)])
                setattr(module, name, built[id(child)])
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen
