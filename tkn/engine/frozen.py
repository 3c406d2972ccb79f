"""The frozen executor: one target layer with fixed ROIs, run by a :class:`~tkn.engine.plan.LayerPlan`.

``"blocks"`` plans convolve each block's input crop (the kernel's halo read
from the input, zero padding added only where the crop leaves the map) with
the block's rows of the weight, multiply by the precomputed window·mask crop
multiply the convolution's result in place and write it into its slice of a
``channels_last`` output (slice assignment: no index scatter). The output is
zero-filled once with one contiguous memset (filling only the uncovered strips
took four strided fills per block and was not faster). ``"dense"`` plans run
the full convolution (padding inside the convolution, no padded copy) and
multiply by the window·mask map in place.

The output channels come out in the plan's order when ``permute_output`` is
true (the model's next layer has been permuted to expect them so, see
:mod:`tkn.engine.permute`); otherwise one final ``index_select`` restores the
original order. ``in_perm`` says in which order the input channels arrive; it
is folded into the weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn import functional as TF
from tkn.engine.plan import Block, LayerPlan, dense_plan
from tkn.layers import TargetConv2d

__all__ = ["FrozenTargetConv2d"]


def _span(lo: int, hi: int, stride: int, extent: int, pad_before: int, size: int) -> tuple[int, int, int, int]:
    """Input range ``[a, b)`` for output range ``[lo, hi)``, clipped to ``[0, size)``, plus the zero padding needed."""
    a = lo * stride - pad_before
    b = (hi - 1) * stride + extent - pad_before
    return max(a, 0), min(b, size), max(-a, 0), max(b - size, 0)


class FrozenTargetConv2d(nn.Module):
    """A :class:`~tkn.layers.TargetConv2d` frozen for one input size: only the ROIs are convolved.

    Args:
        layer: the trained target layer (its parameters are copied).
        input_hw: the ``(H, W)`` of the inputs the layer will see.
        plan: how to run it (default: a dense plan).
        in_perm: order of the incoming channels (``x[:, j]`` is original input channel
            ``in_perm[j]``); ``None`` for the original order.
        permute_output: return channels in ``plan.perm`` order instead of the original.

    Shape:
        - Input: ``(N, C_in, H, W)`` with ``(H, W) == input_hw``, any memory format.
        - Output: ``(N, C_out, H_out, W_out)``; ``channels_last`` for block plans.

    The output equals ``layer.eval()(x)`` (with the channel orders above).
    """

    def __init__(
        self,
        layer: TargetConv2d,
        input_hw: tuple[int, int],
        plan: LayerPlan | None = None,
        *,
        in_perm: list[int] | None = None,
        permute_output: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(layer, TargetConv2d):
            raise TypeError(f"layer must be a TargetConv2d, got {type(layer).__name__}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.output_hw = layer.output_size(*self.input_hw)
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.dilation = layer.kernel_size, layer.stride, layer.dilation
        self.kernel_extent = layer.kernel_extent
        self.groups, self.pad, self.padding_mode = layer.groups, layer.pad, layer.padding_mode
        self.plan = plan if plan is not None else dense_plan(layer.out_channels)
        if self.plan.mode not in ("dense", "blocks"):
            raise ValueError(f"plan.mode must be 'dense' or 'blocks', got {self.plan.mode!r}")
        if self.plan.mode == "blocks" and self.groups != 1:
            raise ValueError(f"block plans need groups=1, the layer has groups={self.groups}")
        if sorted(self.plan.perm) != list(range(self.out_channels)):
            raise ValueError(f"plan.perm must be a permutation of range({self.out_channels})")
        if in_perm is not None and (self.groups != 1 or sorted(in_perm) != list(range(self.in_channels))):
            raise ValueError(f"in_perm must be a permutation of range({self.in_channels}) (and groups 1)")
        self.permute_output = bool(permute_output)
        #: seconds measured per candidate plan at freeze time (empty when not measured)
        self.timings: dict[str, float] = {}
        self.blocks: list[Block] = list(self.plan.blocks)

        perm = torch.tensor(self.plan.perm, dtype=torch.long, device=layer.weight.device)
        ho, wo = self.output_hw
        with torch.no_grad():
            roi = layer.rois(ho, wo)
            wm = (layer.attention(ho, wo) * TF.roi_mask(roi, ho, wo)).to(layer.weight.dtype)
            weight = layer.weight.detach()[perm]
            if in_perm is not None:
                weight = weight[:, torch.tensor(in_perm, dtype=torch.long, device=weight.device)]
            bias = None if layer.bias is None else layer.bias.detach()[perm].clone()
            wm = wm[perm]
        block_mode = self.plan.mode == "blocks"
        fmt = torch.channels_last if block_mode else torch.contiguous_format
        self.register_buffer("weight", weight.contiguous(memory_format=fmt))
        self.register_buffer("bias", bias)
        self.register_buffer("roi", roi[perm].clone())
        self.register_buffer("inverse_perm", torch.argsort(perm))
        self._identity = self.plan.perm == list(range(self.out_channels))
        if block_mode:
            self.register_buffer("window_map", None)
            for i, b in enumerate(self.blocks):
                crop = wm[b.c0:b.c1, b.y0:b.y1, b.x0:b.x1]
                # stored (h, w, c)-contiguous so that it matches the channels_last output it multiplies
                self.register_buffer(f"window_{i}", crop.permute(1, 2, 0).contiguous().permute(2, 0, 1))
        else:
            self.register_buffer("window_map", wm.contiguous())

    # -- execution -------------------------------------------------------------------
    def _dense(self, x: Tensor) -> Tensor:
        left, right, top, bottom = self.pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=(top, left), dilation=self.dilation,
                         groups=self.groups)
        else:
            xp = TF.pad_input(x, self.pad, self.padding_mode)
            y = F.conv2d(xp, self.weight, self.bias, stride=self.stride, dilation=self.dilation, groups=self.groups)
        return y.mul_(self.window_map)

    def _blocks(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        ho, wo = self.output_hw
        h, w = self.input_hw
        left, _, top, _ = self.pad
        if self.padding_mode != "zeros":
            x = TF.pad_input(x, self.pad, self.padding_mode)
            h, w, left, top = x.shape[-2], x.shape[-1], 0, 0
        x = x.contiguous(memory_format=torch.channels_last)
        out = x.new_zeros((n, ho, wo, self.out_channels)).permute(0, 3, 1, 2)
        for i, b in enumerate(self.blocks):
            ya, yb, pt, pb = _span(b.y0, b.y1, self.stride[0], self.kernel_extent[0], top, h)
            xa, xb, pl, pr = _span(b.x0, b.x1, self.stride[1], self.kernel_extent[1], left, w)
            crop = x[:, :, ya:yb, xa:xb]
            if pt or pb or pl or pr:
                crop = F.pad(crop, (pl, pr, pt, pb))
            bias = None if self.bias is None else self.bias[b.c0:b.c1]
            y = F.conv2d(crop, self.weight[b.c0:b.c1], bias, stride=self.stride, dilation=self.dilation)
            # slice assignment, not mul(out=view): the TorchScript-based ONNX exporter drops writes into views
            out[:, b.c0:b.c1, b.y0:b.y1, b.x0:b.x1] = y.mul_(getattr(self, f"window_{i}"))
        return out

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(
                f"this frozen layer was planned for inputs of size {self.input_hw}, got {tuple(x.shape[-2:])}; "
                "freeze the model again with an example of the new size"
            )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must be (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        y = self._blocks(x) if self.plan.mode == "blocks" else self._dense(x)
        if self.permute_output or self._identity:
            return y
        return y.index_select(1, self.inverse_perm)

    def extra_repr(self) -> str:
        p = self.plan
        s = f"{self.in_channels}, {self.out_channels}, input_hw={self.input_hw}, plan={p.mode}"
        if p.mode == "blocks":
            s += f", blocks={len(self.blocks)}, active={p.n_active}"
        if self.permute_output:
            s += ", permuted output"
        return s
