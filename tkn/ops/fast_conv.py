"""Fast training path: a target convolution that computes only ROI blocks, re-planned at every call.

``fast_target_conv2d`` computes exactly ``y[c] = (conv(x, W)[c] * F_c) * 1[ROI_c]``
(as :func:`tkn.functional.target_conv2d`) but convolves only blocks: one per
tile of about 5×5 output pixels, holding the channels whose ROI meets the tile,
over their bounding box there (:func:`~tkn.ops.plan.plan_union_tiles`;
vectorised integer work, a few milliseconds, redone every call because the
ROIs move during training). On TKN6 (batch 64, 56×56) this made a training
step 1.68–1.69× faster than CNN6's, against 1.24–1.31× with the agglomerative
whole-ROI blocks of :func:`~tkn.ops.plan.plan_blocks` used before. Autograd differentiates the blocked
computation, so the gradients are those of the dense semantics: the weight
and the input get the convolution's gradients over the ROIs only, and ``m``,
``s`` get theirs through the window ``F`` inside the ROI.

Two small autograd functions keep the backward pass cheap:
:class:`_BlockConvs` runs all block convolutions on ``channels_last`` crops
(output channels padded with zero rows to a multiple of 8, as in the frozen engine),
recomputes the crops in backward instead of storing them (the crops together
are many times the input) and accumulates the input gradient into a single
buffer; :class:`_Assemble` writes each block's channels straight to their
original indices of one zero-initialised ``channels_last`` output (its
backward hands each block its slice of the gradient), so the channel order
never needs a full-size un-permutation.

Used by ``TargetConv2d(..., execution="fast")``. Cases the block path does not
cover (``groups > 1``, non-zero padding modes) run the dense reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tkn import functional as TF
from tkn.validate import int_pair, positive_int
from tkn.ops.plan import Block, input_span, padded_channels, plan_union_tiles

__all__ = ["fast_target_conv2d", "TRAIN_TILE", "train_grid"]

#: Side of the per-step plan's tiles, in output pixels. On TKN6 (batch 64) a training step took 3.36 s with
#: 5-pixel tiles and 3.67–3.82 s with 4-pixel tiles (CNN6: 5.6–6.0 s), in alternating runs.
TRAIN_TILE = 5


def train_grid(height: int, width: int, tile: float = TRAIN_TILE) -> tuple[int, int]:
    """Tiles per axis for a plan with tiles of about ``tile`` output pixels (at least 1 tile per axis)."""
    return max(1, round(height / tile)), max(1, round(width / tile))


#: Above this fraction of the dense multiply–accumulates, the block plan is not worth it. Blocks run at a lower
#: rate than one full convolution: on TKN6's 256->256 layer (14x14, batch 64, forward + backward with ReLU and
#: pool) a plan of 0.78 of the dense work took 964 ms against 721 ms dense, so blocks pay off below ~0.58.
DENSE_FRACTION = 0.55


def _crop(x: Tensor, span: tuple[int, ...]) -> Tensor:
    ya, yb, xa, xb, pt, pb, pl, pr = span
    c = x[:, :, ya:yb, xa:xb]
    return F.pad(c, (pl, pr, pt, pb)) if (pt or pb or pl or pr) else c.contiguous(memory_format=torch.channels_last)


def _padded_rows(t: Tensor, dim: int = 0) -> Tensor:
    """``t`` with zeros appended along ``dim`` up to a multiple of :data:`~tkn.ops.plan.PAD_CHANNELS`
    (oneDNN runs other output-channel counts 1.5-2.5x slower per channel); ``t`` itself when already one."""
    extra = padded_channels(t.shape[dim]) - t.shape[dim]
    if not extra:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    zeros = t.new_zeros(shape)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        zeros = zeros.contiguous(memory_format=torch.channels_last)
    return torch.cat([t, zeros], dim)


class _BlockConvs(torch.autograd.Function):
    """One convolution per block over its input crop; the crops are recomputed in backward, not stored.

    Inputs: ``x`` (any memory format), the permuted weight ``wp`` and bias ``bp``
    (rows ``[c0, c1)`` belong to a block). Storing every block's crop for the
    backward pass would cost the sum of the halo boxes (many times the input);
    re-cutting them from ``x`` costs one copy each. The input gradient is
    accumulated into one ``channels_last`` buffer, the weight gradient written
    by disjoint row ranges.
    """

    @staticmethod
    def forward(ctx, x: Tensor, wp: Tensor, bp: Tensor | None, spans: list, ranges: list, stride, dilation):
        ctx.spans, ctx.ranges, ctx.stride, ctx.dilation = spans, ranges, stride, dilation
        ctx.has_bias = bp is not None
        ctx.save_for_backward(x, wp)
        xc = x.contiguous(memory_format=torch.channels_last)
        return tuple(
            F.conv2d(_crop(xc, span), _padded_rows(wp[c0:c1]), None if bp is None else _padded_rows(bp[c0:c1]),
                     stride=stride, dilation=dilation)[:, :c1 - c0]
            for span, (c0, c1) in zip(spans, ranges)
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        x, wp = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        xc = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        gx = x.new_zeros((n, h, w, c)).permute(0, 3, 1, 2) if need_x else None
        gw = torch.zeros_like(wp) if need_w else None
        gb = wp.new_zeros(wp.shape[0]) if need_b else None
        for g, span, (c0, c1) in zip(grads, ctx.spans, ctx.ranges):
            if g is None:
                continue
            ya, yb, xa, xb, pt, pb, pl, pr = span
            crop = _crop(xc, span)
            w = _padded_rows(wp[c0:c1])
            g = _padded_rows(g.contiguous(memory_format=torch.channels_last), dim=1)
            gi, gwb, gbb = torch.ops.aten.convolution_backward(
                g, crop, w, [w.shape[0]] if ctx.has_bias else None, list(ctx.stride), [0, 0],
                list(ctx.dilation), False, [0, 0], 1, [need_x, need_w, need_b and ctx.has_bias])
            if need_x:
                gx[:, :, ya:yb, xa:xb] += gi[:, :, pt:pt + yb - ya, pl:pl + xb - xa]
            if need_w:
                gw[c0:c1] = gwb[:c1 - c0]
            if need_b and ctx.has_bias:
                gb[c0:c1] = gbb[:c1 - c0]
        return gx, gw, gb, None, None, None, None


class _Assemble(torch.autograd.Function):
    """Write block outputs ``(N, count, h, w)`` into a zero ``(N, C, H, W)`` ``channels_last`` output.

    Each block's channels go to their original indices (``channels[i]``), so no
    full-size un-permutation is needed; the backward gathers each block's slice.
    """

    @staticmethod
    def forward(ctx, shape: tuple[int, ...], blocks: list[Block], channels: list[Tensor], *ys: Tensor) -> Tensor:
        ctx.blocks, ctx.channels = blocks, channels
        n, c, h, w = shape
        out = torch.empty(
            (n, c, h, w), dtype=ys[0].dtype, device=ys[0].device, memory_format=torch.channels_last).zero_()
        rows = out.permute(0, 2, 3, 1)
        for b, idx, y in zip(blocks, channels, ys):
            rows[:, b.y0:b.y1, b.x0:b.x1].index_copy_(3, idx, y.permute(0, 2, 3, 1))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = grad.permute(0, 2, 3, 1)
        return (None, None, None, *(g[:, b.y0:b.y1, b.x0:b.x1].index_select(3, idx).permute(0, 3, 1, 2)
                                    for b, idx in zip(ctx.blocks, ctx.channels)))


def fast_target_conv2d(
    x: Tensor,
    weight: Tensor,
    m: Tensor,
    s: Tensor,
    bias: Tensor | None = None,
    *,
    stride=1,
    padding="same",
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    window: str = "cauchy",
    dense_fraction: float = DENSE_FRACTION,
    min_roi: int | None = None,
    relu: bool = False,
    pool: int = 1,
) -> Tensor:
    """The target convolution computed over ROI blocks only; same values and gradients as the dense reference.

    Args:
        x: input ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        m, s: raw window parameters ``(C_out, 2)`` (clipped here, as in the dense path).
        bias: optional ``(C_out,)``, added before the window.
        stride, padding, dilation, groups, padding_mode, window: as :func:`tkn.functional.target_conv2d`.
        dense_fraction: run densely when the blocks would cost more than this
            fraction of the dense multiply–accumulates.
        min_roi: minimum ROI width (see :class:`~tkn.layers.TargetConv2d`).
        relu, pool: an epilogue computed per block: ``max_pool2d(relu(y), pool)`` (kernel = stride =
            ``pool``) instead of ``y``; the blocks are aligned to the pool windows, so the result equals
            the epilogue applied to the whole map, and the full-size map is never built.

    Shape:
        - Output: ``(N, C_out, H_out // pool, W_out // pool)`` (``channels_last`` memory when blocks are used).

    Example:
        >>> x, w = torch.randn(2, 3, 9, 9), torch.randn(8, 3, 3, 3)
        >>> m, s = torch.rand(8, 2), torch.full((8, 2), 0.3)
        >>> ref = TF.target_conv2d(x, w, m, s)
        >>> bool(torch.allclose(fast_target_conv2d(x, w, m, s), ref, atol=1e-5))
        True
    """
    window = TF.check_window(window)
    stride, dilation = int_pair("stride", stride), int_pair("dilation", dilation)
    pool = positive_int("pool", pool)

    def dense() -> Tensor:
        y = TF.target_conv2d(x, weight, m, s, bias, stride=stride, padding=padding, dilation=dilation,
                             groups=groups, padding_mode=padding_mode, window=window, execution="dense",
                             min_roi=min_roi)
        y = F.relu(y) if relu else y
        return F.max_pool2d(y, pool) if pool > 1 else y

    if groups != 1 or padding_mode != "zeros" or x.dim() != 4:
        return dense()
    ky, kx = weight.shape[-2:]
    pad = TF.resolve_padding(padding, (ky, kx), stride, dilation)
    n, _, h, w = x.shape
    ho = TF.conv_output_size(h, ky, stride[0], dilation[0], pad[2] + pad[3])
    wo = TF.conv_output_size(w, kx, stride[1], dilation[1], pad[0] + pad[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"input of spatial size {(h, w)} is too small for kernel {(ky, kx)} and padding {pad}")
    extents = (dilation[0] * (ky - 1) + 1, dilation[1] * (kx - 1) + 1)
    floors = TF.roi_floor(extents, TF.check_min_roi(min_roi))
    roi = TF.rois(m, s, (ho, wo), floors)
    c_out = weight.shape[0]
    if ho < pool or wo < pool:
        raise ValueError(f"pool={pool} is larger than the convolution's output {(ho, wo)}")
    plan = plan_union_tiles(roi, output_hw=(ho, wo), grid=train_grid(ho, wo, tile=max(TRAIN_TILE, pool)),
                            align=pool)
    if not plan.blocks or plan.macs_per_position() > dense_fraction * c_out * ho * wo:
        return dense()
    mc, sc = TF.clip_params(m, s, (ho, wo), floors)
    index = torch.tensor(plan.index, dtype=torch.long, device=weight.device)
    # separable window times separable ROI mask, per axis: each block takes its rows of these (C, H), (C, W)
    r = roi.to(device=weight.device)
    ys_, xs_ = torch.arange(ho, device=weight.device), torch.arange(wo, device=weight.device)
    fy = TF.window(ho, mc[:, 0], sc[:, 0], window).to(x.dtype) * ((ys_ >= r[:, :1]) & (ys_ < r[:, 1:2]))
    fx = TF.window(wo, mc[:, 1], sc[:, 1], window).to(x.dtype) * ((xs_ >= r[:, 2:3]) & (xs_ < r[:, 3:4]))
    wp = weight.index_select(0, index)
    bp = None if bias is None else bias.index_select(0, index)
    left, _, top, _ = pad
    spans = []
    for b in plan.blocks:
        ya, yb, pt, pb = input_span(b.y0, b.y1, stride[0], extents[0], top, h)
        xa, xb, pl, pr = input_span(b.x0, b.x1, stride[1], extents[1], left, w)
        spans.append((ya, yb, xa, xb, pt, pb, pl, pr))
    ys = _BlockConvs.apply(x, wp, bp, spans, [(b.c0, b.c1) for b in plan.blocks], stride, dilation)
    channels = [index[b.c0:b.c1] for b in plan.blocks]
    ys = [y * (fy.index_select(0, c)[:, b.y0:b.y1, None] * fx.index_select(0, c)[:, None, b.x0:b.x1])
          for b, c, y in zip(plan.blocks, channels, ys)]
    if relu:
        ys = [F.relu(y) for y in ys]
    blocks = plan.blocks
    if pool > 1:  # the blocks are aligned to the pool windows and end inside the pooled extent
        ys = [F.max_pool2d(y, pool) for y in ys]
        blocks = [Block(b.c0, b.c1, b.y0 // pool, b.y1 // pool, b.x0 // pool, b.x1 // pool, b.tile) for b in blocks]
    return _Assemble.apply((n, c_out, ho // pool, wo // pool), blocks, channels, *ys)
