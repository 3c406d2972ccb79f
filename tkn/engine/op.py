"""``torch.ops.tkn.roi_conv2d``: the ROI convolution as a PyTorch operator.

Frozen native layers (:class:`~tkn.engine.modules.FrozenTargetConv2d` with a
``native`` plan) call this operator, so PyTorch sees one opaque node per layer
instead of a ``ctypes`` call it cannot trace: ``torch.export.export`` and
``torch.compile(..., fullgraph=True)`` accept frozen models, and the operator's
fake (meta) implementation gives them the output's shape and strides.

Semantics (``tkn``'s one forward semantics, with the fused epilogue): for every
output channel ``c`` inside its ROI ``v = (conv(x, weight)[c] + bias[c]) ·
window[c]``, then ``v · scale[c] + shift[c]``; outside it ``shift[c]`` (0
without ``shift``); plus ``residual`` if given; then a ReLU if ``relu``; then a
``pool × pool`` max-pool of stride ``pool``. ``window`` is the window·mask
(zero outside each ROI), ``roi`` the ``(C_out, 4)`` boxes, ``support`` optional
``(C_in, 4)`` boxes outside which the input is known to be zero.

With ``strategy="triton"`` the Triton kernel of :mod:`tkn.engine.triton_roi`
runs it (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``). Otherwise
the CPU implementation is the native kernel of :mod:`tkn.engine.native` with
the lane ``strategy`` named (its packed tensors are cached per set of argument
tensors, keyed by their storage and version, so a module's buffers are packed
once); without the native kernel, or on another device, a PyTorch reference
computes the same values (a dense convolution, then the epilogue).

Autograd: a registered formula gives the gradients with respect to ``x``,
``weight``, ``window``, ``bias``, ``scale``, ``shift`` and ``residual`` by
recomputing the forward with :func:`reference_roi_conv2d` and taking its
vector–Jacobian product (the values are the same; the backward costs a dense
convolution). Frozen models run without gradients; the training path is
:mod:`tkn.ops.fast_conv`, this formula is there so that the operator can sit in
a graph that is differentiated (``torch.func``, ``torch.compile`` training).

Example:
    >>> import torch
    >>> from tkn.engine import op  # registers the operator
    >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    >>> roi = torch.tensor([[0, 8, 0, 8], [2, 5, 2, 5], [0, 1, 0, 1], [3, 3, 0, 8]])
    >>> mask = torch.zeros(4, 8, 8)
    >>> for c, (y0, y1, x0, x1) in enumerate(roi.tolist()):
    ...     mask[c, y0:y1, x0:x1] = 1
    >>> y = torch.ops.tkn.roi_conv2d(x, w, mask, roi, None, None, None, None, None, [1, 1], [1, 1, 1, 1],
    ...                              [1, 1], False, 1, "groups")
    >>> ref = torch.nn.functional.conv2d(x, w, padding=1) * mask
    >>> bool(torch.allclose(y, ref, atol=1e-5)), tuple(y.shape)
    (True, (2, 4, 8, 8))
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tkn.engine import native as native_kernel
from tkn.engine import triton_roi

__all__ = ["roi_conv2d", "reference_roi_conv2d", "cache_key", "CACHE_SIZE"]

#: How many packed layers the operator keeps (the oldest are dropped and repacked on demand).
CACHE_SIZE = 256

_packed: "OrderedDict[tuple, native_kernel.NativeConv]" = OrderedDict()


def cache_key(tensors: tuple[Optional[Tensor], ...], geometry: tuple) -> tuple:
    """The key under which the operator keeps a packed layer: each tensor's storage, offset, shape, strides,
    version and dtype, and the geometry. Equal keys mean the same tensors, unchanged since."""
    parts = []
    for t in tensors:
        parts.append(None if t is None else (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                                             tuple(t.stride()), t._version, t.dtype))
    return (*parts, *geometry)


def remember(conv: native_kernel.NativeConv, tensors: tuple[Optional[Tensor], ...], geometry: tuple) -> None:
    """Register an already packed layer for these argument tensors (what a frozen layer does once)."""
    _packed[cache_key(tensors, geometry)] = conv
    while len(_packed) > CACHE_SIZE:
        _packed.popitem(last=False)


def _pack(x: Tensor, tensors: tuple[Optional[Tensor], ...], geometry: tuple, key: tuple) -> native_kernel.NativeConv:
    weight, window, roi, bias, scale, shift, support = tensors
    stride, padding, dilation, relu, pool, strategy, residual = geometry
    conv = native_kernel.NativeConv(
        weight, bias, window, roi, conv_hw=tuple(window.shape[-2:]), input_hw=tuple(x.shape[-2:]),
        stride=tuple(stride), dilation=tuple(dilation), pad=tuple(padding), scale=scale, shift=shift, relu=relu,
        pool=pool, support=support, residual=residual, strategy=strategy)
    _packed[key] = conv
    while len(_packed) > CACHE_SIZE:
        _packed.popitem(last=False)
    return conv


def _lanes(n: int) -> int:
    vw = native_kernel.vector_width() if native_kernel.available() else 16
    return -(-max(n, 1) // vw) * vw


def _output_layout(n: int, c: int, hp: int, wp: int, strategy: str, like: Tensor) -> Tensor:
    """An empty output with the strides the strategy returns (channels_last, batch-innermost, or contiguous)."""
    if strategy == "batch":
        return like.new_empty((hp, wp, c, _lanes(n)))[..., :n].permute(3, 2, 0, 1)
    if strategy == "triton" or c == 1:  # one channel: plain strides (the same memory as channels_last)
        return like.new_empty((n, c, hp, wp))
    return like.new_empty((n, hp, wp, c)).permute(0, 3, 1, 2)


def _strides(n: int, c: int, hp: int, wp: int, strategy: str) -> tuple[int, ...]:
    if strategy == "batch":
        lanes = _lanes(n)
        return (1, lanes, wp * c * lanes, c * lanes)
    if strategy == "triton" or c == 1:
        return (c * hp * wp, hp * wp, wp, 1)
    return (hp * wp * c, 1, wp * c, c)


def reference_roi_conv2d(x: Tensor, weight: Tensor, window: Tensor, roi: Tensor, bias: Optional[Tensor],
                         scale: Optional[Tensor], shift: Optional[Tensor], residual: Optional[Tensor],
                         stride: list[int], padding: list[int], dilation: list[int], relu: bool, pool: int) -> Tensor:
    """The operator's values computed densely with PyTorch (any device; what runs without the native kernel)."""
    left, right, top, bottom = padding
    y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride=stride, dilation=dilation)
    y = y * window
    c = weight.shape[0]
    if scale is not None or shift is not None:
        sc = scale if scale is not None else torch.ones(c, dtype=y.dtype, device=y.device)
        sh = shift if shift is not None else torch.zeros(c, dtype=y.dtype, device=y.device)
        y = y * sc[:, None, None] + sh[:, None, None]  # outside the ROIs: y = 0, so the value is shift
    if residual is not None:
        y = y + residual
    if relu:
        y = y.relu()
    if pool > 1:
        y = F.max_pool2d(y, pool)
    return y


@torch.library.custom_op("tkn::roi_conv2d", mutates_args=())
def roi_conv2d(x: Tensor, weight: Tensor, window: Tensor, roi: Tensor, bias: Optional[Tensor],
               scale: Optional[Tensor], shift: Optional[Tensor], support: Optional[Tensor],
               residual: Optional[Tensor], stride: list[int], padding: list[int], dilation: list[int], relu: bool,
               pool: int, strategy: str) -> Tensor:
    """See the module documentation. Shapes: ``x (N, C_in, H, W)``, ``weight (C_out, C_in, kH, kW)``, ``window
    (C_out, H_out, W_out)``, ``roi (C_out, 4)``, ``bias``/``scale``/``shift`` ``(C_out,)``, ``support (C_in, 4)``,
    ``residual (N, C_out, H_out, W_out)``; ``padding`` is ``(left, right, top, bottom)``. Output ``(N, C_out,
    H_out // pool, W_out // pool)``."""
    n, c = x.shape[0], weight.shape[0]
    hp, wp = window.shape[-2] // pool, window.shape[-1] // pool
    if strategy == "triton" and residual is None and triton_roi.available():
        return triton_roi.roi_conv2d_triton(x, weight, window, roi, bias=bias, scale=scale, shift=shift,
                                            stride=tuple(stride), padding=tuple(padding),
                                            dilation=tuple(dilation), relu=relu, pool=pool).contiguous()
    conv = None
    if x.device.type == "cpu" and x.dtype == torch.float32:
        tensors = (weight, window, roi, bias, scale, shift, support)
        geometry = (tuple(stride), tuple(padding), tuple(dilation), bool(relu), int(pool), strategy,
                    residual is not None)
        key = cache_key(tensors, geometry)
        conv = _packed.get(key)  # a packed layer was checked when it was packed
        if conv is None and native_kernel.available() and not native_kernel.strategy_unsupported(
                strategy, weight.shape[1], residual is not None):
            conv = _pack(x, tensors, geometry, key)
    if conv is not None:
        y = conv(x, residual)
    else:
        y = reference_roi_conv2d(x, weight, window, roi, bias, scale, shift, residual, stride, padding, dilation,
                                 relu, pool)
    if y.stride() == _strides(n, c, hp, wp, strategy) or y.numel() <= 1:
        return y
    out = _output_layout(n, c, hp, wp, strategy, x)  # the layout the fake implementation promises
    if strategy != "batch" and c == 1 and y.is_contiguous(memory_format=torch.channels_last):
        return y.reshape(out.shape).as_strided(out.shape, out.stride())  # the same memory: no copy
    out.copy_(y)
    return out


@roi_conv2d.register_fake
def _(x, weight, window, roi, bias, scale, shift, support, residual, stride, padding, dilation, relu, pool, strategy):
    return _output_layout(x.shape[0], weight.shape[0], window.shape[-2] // pool, window.shape[-1] // pool, strategy,
                          x)


#: The operator's arguments that carry gradients (the others are boxes, geometry and the strategy).
_DIFFERENTIABLE = {0: "x", 1: "weight", 2: "window", 4: "bias", 5: "scale", 6: "shift", 8: "residual"}


def _setup_context(ctx, inputs, output) -> None:
    x, weight, window, roi, bias, scale, shift, support, residual, stride, padding, dilation, relu, pool, _ = inputs
    ctx.save_for_backward(x, weight, window, roi, bias, scale, shift, residual)
    ctx.geometry = (list(stride), list(padding), list(dilation), bool(relu), int(pool))


def _backward(ctx, grad: Tensor):
    x, weight, window, roi, bias, scale, shift, residual = ctx.saved_tensors
    stride, padding, dilation, relu, pool = ctx.geometry
    args = {0: x, 1: weight, 2: window, 4: bias, 5: scale, 6: shift, 8: residual}
    wanted = [i for i in _DIFFERENTIABLE if args[i] is not None and ctx.needs_input_grad[i]]
    leaves = {i: args[i].detach().requires_grad_(i in wanted) if args[i] is not None else None for i in args}
    with torch.enable_grad():
        y = reference_roi_conv2d(leaves[0], leaves[1], leaves[2], roi, leaves[4], leaves[5], leaves[6], leaves[8],
                                 stride, padding, dilation, relu, pool)
        grads = torch.autograd.grad(y, [leaves[i] for i in wanted], grad, allow_unused=True) if wanted else []
    out = [None] * 15
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out)


roi_conv2d.register_autograd(_backward, setup_context=_setup_context)
