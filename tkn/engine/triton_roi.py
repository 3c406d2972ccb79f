"""A Triton kernel of the ROI convolution: one launch computes every channel's ROI, and only its ROI.

:func:`roi_conv2d_triton` computes exactly what the native CPU kernel
(:class:`tkn.engine.native.NativeConv`) computes, for tensors on a GPU or, under
Triton's interpreter (``TRITON_INTERPRET=1``), on the CPU. For each output
channel ``c`` with ROI ``[y0, y1) x [x0, x1)`` of the convolution output:

* inside the ROI: ``v = (conv(x, weight)[c] + bias[c]) * window[c]``, then
  ``v = v * scale[c] + shift[c]``, then ``max(v, 0)`` when ``relu``;
* outside the ROI: the *fill* ``shift[c]`` (0 without ``shift``), ``max(fill, 0)``
  when ``relu`` (the same formula with ``window·mask = 0``);
* then a ``pool`` x ``pool`` max-pool of stride ``pool`` (the last rows and
  columns that do not fill a window are dropped).

Design (in the spirit of SBNet / SIGE: gather the active region, run a dense
GEMM on it, scatter the result back):

* **Work list.** A host-side plan (vectorised torch on the CPU, a few small
  tensors copied to the device) turns the ROIs into *items*: a group of
  ``channels_per_program`` output channels and a box of conv-output positions.
  With one channel per program the box of a channel is its ROI, exactly; with
  ``G > 1`` channels (sorted by ROI position and taken ``G`` at a time) the map
  is cut into ``tile`` x ``tile`` tiles and each (group, tile) pair whose ROIs
  meet gets the bounding box of those ROIs within the tile. Every ROI position
  of every channel lies in exactly one item, so programs never write the same
  element twice (no atomics).
* **Programs.** The GEMM's rows are the (sample, position) pairs of an item,
  the batch folded in so that ROIs of one pixel still fill a block:
  ``M = N * box area``; its columns are the item's channels; its reduction is
  ``K = C_in * kh * kw``. One program computes ``BLOCK_M`` rows by all ``G``
  columns, looping over ``K`` in blocks of ``BLOCK_K``: the input block is
  gathered from ``x`` (im2col on the fly, through ``x``'s strides, so a
  non-contiguous input is read in place) with masks for the zero padding; the
  weight block is gathered by channel index. With ``G >= 16`` the product is a
  ``tl.dot`` (``input_precision="ieee"``: full float32, no TF32, so the result
  matches the CPU kernel's to ~1e-6); with ``G < 16`` it is a broadcast
  multiply and ``tl.sum`` (a matrix-vector product for ``G = 1``).
* **Epilogue, fused.** Bias, window·mask, affine and ReLU are applied in
  registers, and only positions inside each channel's own ROI are stored
  (a group's box may hold positions outside some of its channels' ROIs: those
  are computed and discarded, the price of ``tl.dot``).
* **Fill and pool, in torch.** The output buffer ``(N, C_out, Ho, Wo)`` is
  initialised with each channel's fill, the kernel writes the ROI values into
  it, and ``torch.nn.functional.max_pool2d`` pools it (not fused).

:func:`available` says whether Triton can run here and :func:`reason` why not.
Importing this module never needs Triton; calling the kernel without it raises
:class:`RuntimeError`.

>>> from tkn.engine import triton_roi
>>> isinstance(triton_roi.available(), bool) and isinstance(triton_roi.reason(), str)
True
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # an optional dependency: ``pip install tkn[triton]``
    import triton
    import triton.language as tl
except ImportError as _exc:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    _IMPORT_ERROR: str | None = f"triton is not installed ({_exc}); install it with `pip install tkn[triton]`"
else:
    _IMPORT_ERROR = None

__all__ = ["roi_conv2d_triton", "plan_items", "available", "reason", "interpreting"]

#: Smallest block sizes ``tl.dot`` accepts (rows, columns and reduction).
DOT_MIN = 16


def interpreting() -> bool:
    """Whether Triton kernels run under its CPU interpreter (``TRITON_INTERPRET=1`` in the environment).

    Triton reads the variable when a kernel is decorated; this module decorates its kernel at the first
    call in each mode, so the value at call time is the one that counts. Triton's own reading is used where
    it has one (``triton.knobs``, Triton >= 3.4), so both agree.
    """
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def reason() -> str:
    """Why :func:`roi_conv2d_triton` cannot run here, or ``""`` when it can (on some device)."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if interpreting():
        return ""
    if torch.cuda.is_available():
        return ""
    return ("no CUDA device, and Triton's interpreter is off: set TRITON_INTERPRET=1 in the environment to run "
            "the kernel on CPU tensors (slowly)")


def available() -> bool:
    """Whether :func:`roi_conv2d_triton` can run here: Triton importable, and a CUDA device present or
    ``TRITON_INTERPRET=1`` set (the interpreter runs the kernel on CPU tensors)."""
    return reason() == ""


def _device_reason(device: torch.device) -> str:
    """Why the kernel cannot run on tensors of ``device`` (``""`` when it can)."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if interpreting():
        return ""
    if device.type == "cuda":
        return ""
    return (f"tensors on {device.type!r} need Triton's interpreter: set TRITON_INTERPRET=1 in the environment "
            "(or move them to a CUDA device)")


# The kernel. ``from __future__ import annotations`` keeps ``tl.constexpr`` a string, which Triton reads, so
# this definition needs no Triton at import time; it is decorated with ``triton.jit`` at first use.
def _roi_conv_kernel(
    x_ptr, w_ptr, win_ptr, bias_ptr, scale_ptr, shift_ptr, roi_ptr, out_ptr,
    prog_ptr, item_ptr, chan_ptr,
    C_out, H, W, Ho, Wo, K,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    item = tl.load(prog_ptr + 2 * pid)
    m_start = tl.load(prog_ptr + 2 * pid + 1)
    by0 = tl.load(item_ptr + 6 * item)
    bx0 = tl.load(item_ptr + 6 * item + 2)
    bw = tl.load(item_ptr + 6 * item + 3) - bx0
    area = (tl.load(item_ptr + 6 * item + 1) - by0) * bw
    m_total = tl.load(item_ptr + 6 * item + 4)  # N * area
    group = tl.load(item_ptr + 6 * item + 5)

    # rows: (sample, position in the box)
    offs_m = m_start + tl.arange(0, BLOCK_M)
    m_ok = offs_m < m_total
    n = offs_m // area
    p = offs_m % area
    oy = by0 + p // bw
    ox = bx0 + p % bw
    iy0 = oy * stride_h - pad_top
    ix0 = ox * stride_w - pad_left
    x_row = n.to(tl.int64) * sxn

    # columns: the group's output channels (-1 pads the last group)
    offs_c = tl.arange(0, BLOCK_C)
    chan = tl.load(chan_ptr + group * BLOCK_C + offs_c)
    c_ok = chan >= 0
    chan_safe = tl.where(c_ok, chan, 0)

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        ci = offs_k // (KH * KW)
        r = offs_k % (KH * KW)
        ky = r // KW
        kx = r % KW
        iy = iy0[:, None] + (ky * dil_h)[None, :]
        ix = ix0[:, None] + (kx * dil_w)[None, :]
        a_ok = m_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        a_off = x_row[:, None] + (ci.to(tl.int64) * sxc)[None, :] + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw
        a = tl.load(x_ptr + a_off, mask=a_ok, other=0.0)
        b_off = chan_safe.to(tl.int64)[None, :] * K + offs_k[:, None]
        b = tl.load(w_ptr + b_off, mask=k_ok[:, None] & c_ok[None, :], other=0.0)
        if BLOCK_C >= 16:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)

    # epilogue: bias, window·mask, affine, ReLU; stored only inside each channel's own ROI
    bias = tl.load(bias_ptr + chan_safe, mask=c_ok, other=0.0)
    scale = tl.load(scale_ptr + chan_safe, mask=c_ok, other=1.0)
    shift = tl.load(shift_ptr + chan_safe, mask=c_ok, other=0.0)
    ry0 = tl.load(roi_ptr + 4 * chan_safe, mask=c_ok, other=0)
    ry1 = tl.load(roi_ptr + 4 * chan_safe + 1, mask=c_ok, other=0)
    rx0 = tl.load(roi_ptr + 4 * chan_safe + 2, mask=c_ok, other=0)
    rx1 = tl.load(roi_ptr + 4 * chan_safe + 3, mask=c_ok, other=0)
    inside = ((oy[:, None] >= ry0[None, :]) & (oy[:, None] < ry1[None, :])
              & (ox[:, None] >= rx0[None, :]) & (ox[:, None] < rx1[None, :]))
    keep = m_ok[:, None] & c_ok[None, :] & inside
    plane = Ho * Wo
    pos = (oy * Wo + ox).to(tl.int64)
    win = tl.load(win_ptr + chan_safe.to(tl.int64)[None, :] * plane + pos[:, None], mask=keep, other=0.0)
    v = (acc + bias[None, :]) * win
    v = v * scale[None, :] + shift[None, :]
    if RELU:
        v = tl.maximum(v, 0.0)
    out_off = (n.to(tl.int64) * C_out)[:, None] * plane + chan_safe.to(tl.int64)[None, :] * plane + pos[:, None]
    tl.store(out_ptr + out_off, v, mask=keep)


_JITTED: dict[bool, Any] = {}


def _kernel() -> Any:  # a triton JITFunction, or an InterpretedFunction under the interpreter
    """The kernel decorated with ``triton.jit`` in the current mode (interpreter or compiler), cached per mode."""
    mode = interpreting()
    if mode not in _JITTED:
        _JITTED[mode] = triton.jit(_roi_conv_kernel)
    return _JITTED[mode]


def _pair(value: object, name: str, minimum: int) -> tuple[int, int]:
    """An ``(a, b)`` pair of ints >= ``minimum`` from an int or a 2-sequence, or a ValueError naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum} on both axes, got {tuple(value)}")
    return int(value[0]), int(value[1])


def _padding(value: object) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` from an int or a 4-sequence of non-negative ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * 4
    if (not isinstance(value, Sequence) or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"padding must be an int or 4 ints (left, right, top, bottom), got {value!r}")
    if min(value) < 0:
        raise ValueError(f"padding must be non-negative, got {tuple(value)}")
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def _check_vector(t: Tensor | None, name: str, c_out: int, device: torch.device) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor or None, got {type(t).__name__}")
    if t.shape != (c_out,):
        raise ValueError(f"{name} must have shape (C_out,) = ({c_out},), got {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; all tensors but roi must share a device")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan_items(roi: Tensor, conv_hw: tuple[int, int], channels: int, tile: int | None) -> tuple[Tensor, Tensor]:
    """The kernel's work list: items (boxes of positions for groups of channels) and the groups' channels.

    Channels with an empty ROI are left out. With ``channels == 1`` each channel is its own group; with more,
    channels are sorted by the top-left corner of their ROI (row of ``tile``-tiles, then column) and taken
    ``channels`` at a time. The map is cut into ``tile`` x ``tile`` tiles (``None``: one tile, the whole map),
    and each (group, tile) pair gets the bounding box of its channels' ROIs within the tile, if any.

    Args:
        roi: ``(C_out, 4)`` integer boxes ``y0, y1, x0, x1`` (half-open) of the convolution output.
        conv_hw: ``(Ho, Wo)`` of the convolution output.
        channels: output channels per group (a power of two).
        tile: side of the tiles, or ``None``.

    Returns:
        ``(items, groups)``: ``items`` ``(I, 5)`` int64 rows ``y0, y1, x0, x1, group``, every box non-empty;
        ``groups`` ``(G, channels)`` int64 channel indices, ``-1`` padding the last group.

    Shape:
        - roi: ``(C_out, 4)``
        - items: ``(I, 5)``; groups: ``(G, channels)``
    """
    ho, wo = conv_hw
    roi = roi.to(device="cpu", dtype=torch.int64)
    nonempty = (roi[:, 1] > roi[:, 0]) & (roi[:, 3] > roi[:, 2])
    active = torch.nonzero(nonempty).flatten()
    if active.numel() == 0:
        return torch.zeros(0, 5, dtype=torch.int64), torch.zeros(0, channels, dtype=torch.int64)
    th, tw = (ho, wo) if tile is None else (tile, tile)
    if channels > 1:
        r = roi[active]
        key = ((r[:, 0] // th) * ((wo + tw - 1) // tw) + r[:, 2] // tw) * (ho * wo) + r[:, 0] * wo + r[:, 2]
        active = active[torch.argsort(key, stable=True)]
    n_groups = -(-active.numel() // channels)
    groups = torch.full((n_groups * channels,), -1, dtype=torch.int64)
    groups[:active.numel()] = active
    groups = groups.view(n_groups, channels)
    # boxes: (G, channels, 4), an empty box for padding entries
    boxes = torch.zeros(n_groups, channels, 4, dtype=torch.int64)
    boxes[groups >= 0] = roi[groups[groups >= 0]]
    ty0 = torch.arange(0, ho, th)
    tx0 = torch.arange(0, wo, tw)
    tiles = torch.stack([ty0[:, None].expand(-1, len(tx0)), (ty0[:, None] + th).clamp(max=ho).expand(-1, len(tx0)),
                         tx0[None, :].expand(len(ty0), -1), (tx0[None, :] + tw).clamp(max=wo).expand(len(ty0), -1)],
                        -1).reshape(-1, 4)  # (T, 4)
    b = boxes[:, :, None, :]  # (G, C, 1, 4)
    t = tiles[None, None, :, :]  # (1, 1, T, 4)
    y0 = torch.maximum(b[..., 0], t[..., 0])
    y1 = torch.minimum(b[..., 1], t[..., 1])
    x0 = torch.maximum(b[..., 2], t[..., 2])
    x1 = torch.minimum(b[..., 3], t[..., 3])
    meets = (y1 > y0) & (x1 > x0)  # (G, C, T)
    big = max(ho, wo) + 1
    uy0 = torch.where(meets, y0, big).amin(1)
    uy1 = torch.where(meets, y1, -1).amax(1)
    ux0 = torch.where(meets, x0, big).amin(1)
    ux1 = torch.where(meets, x1, -1).amax(1)  # (G, T)
    g_idx, t_idx = torch.nonzero(meets.any(1), as_tuple=True)
    items = torch.stack([uy0[g_idx, t_idx], uy1[g_idx, t_idx], ux0[g_idx, t_idx], ux1[g_idx, t_idx], g_idx], 1)
    return items, groups


def roi_conv2d_triton(x: Tensor, weight: Tensor, window: Tensor, roi: Tensor, *, bias: Tensor | None = None,
                      scale: Tensor | None = None, shift: Tensor | None = None,
                      stride: int | tuple[int, int] = (1, 1),
                      padding: int | tuple[int, int, int, int] = (0, 0, 0, 0),
                      dilation: int | tuple[int, int] = (1, 1), relu: bool = False, pool: int = 1,
                      channels_per_program: int = 1, tile: int | None = None, block_m: int = 32,
                      block_k: int = 32) -> Tensor:
    """ROI convolution with a fused epilogue, computed over the ROIs only by one Triton kernel launch.

    Same function as :class:`tkn.engine.native.NativeConv` (see the module docstring): inside channel
    ``c``'s ROI ``relu(((conv + bias) * window) * scale + shift)``, outside it ``relu(shift)`` (0 without
    ``shift``; ``relu`` only when asked; ``shift`` alone means ``scale = 1``, ``scale`` alone ``shift = 0``),
    then a ``pool`` x ``pool`` max-pool of stride ``pool``.

    Args:
        x: the input, float32, on a CUDA device (or any device under ``TRITON_INTERPRET=1``); any strides.
        weight: ``(C_out, C_in, kh, kw)`` float32 (``groups=1``).
        window: ``(C_out, Ho, Wo)`` float32 window·mask of the convolution output (read inside the ROIs only).
        roi: ``(C_out, 4)`` integer boxes ``y0, y1, x0, x1``, half-open, ``0 <= y0 <= y1 <= Ho`` and
            ``0 <= x0 <= x1 <= Wo`` (an empty box: the channel is its fill). Read on the host, any device.
        bias, scale, shift: optional ``(C_out,)`` float32.
        stride, dilation: an int or a pair ``(h, w)`` of positive ints.
        padding: zero padding, an int or ``(left, right, top, bottom)``.
        relu: apply a ReLU after the affine map.
        pool: max-pool size and stride (1: none).
        channels_per_program: output channels per program, a power of two. 1 (default): each program
            computes positions of one channel's ROI, exactly its ROI, reducing with ``tl.sum``. ``>= 16``:
            channels sorted by ROI position share a tile's bounding box and the reduction is a ``tl.dot``;
            positions of the box outside a channel's ROI are computed and discarded.
        tile: side of the square tiles that split the map for groups of channels (``None``: 8 when
            ``channels_per_program > 1``, else the whole map).
        block_m: (sample, position) rows per program, a power of two (>= 16 with ``tl.dot``).
        block_k: reduction block, a power of two (>= 16 with ``tl.dot``); capped at ``C_in * kh * kw``
            rounded up to a power of two.

    Returns:
        The output, float32, contiguous, on ``x``'s device. Inference only: inputs are detached (no autograd).

    Raises:
        ValueError: an argument of the wrong shape, dtype, device or range (the message names it).
        RuntimeError: Triton cannot run here (not installed; CPU tensors without ``TRITON_INTERPRET=1``).

    Shape:
        - x: ``(N, C_in, H, W)``
        - weight: ``(C_out, C_in, kh, kw)``
        - window: ``(C_out, Ho, Wo)`` with ``Ho = (H + top + bottom - dilation_h * (kh - 1) - 1) // stride_h + 1``
          and ``Wo`` likewise
        - roi: ``(C_out, 4)``
        - Output: ``(N, C_out, Ho // pool, Wo // pool)``
    """
    # -- arguments
    for name, t in (("x", x), ("weight", weight), ("window", window), ("roi", roi)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C_in, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32, got {x.dtype}")
    if weight.dim() != 4:
        raise ValueError(f"weight must have shape (C_out, C_in, kh, kw), got {tuple(weight.shape)}")
    if weight.dtype != torch.float32:
        raise ValueError(f"weight must be float32, got {weight.dtype}")
    n, c_in, h, w = x.shape
    c_out, w_cin, kh, kw = weight.shape
    if w_cin != c_in:
        raise ValueError(f"weight has {w_cin} input channels but x has {c_in} (weight {tuple(weight.shape)}, "
                         f"x {tuple(x.shape)}; groups > 1 are not supported)")
    if kh < 1 or kw < 1:
        raise ValueError(f"weight must have a non-empty kernel, got {tuple(weight.shape)}")
    sh, sw = _pair(stride, "stride", 1)
    dh, dw = _pair(dilation, "dilation", 1)
    left, right, top, bottom = _padding(padding)
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
        raise ValueError(f"pool must be an int >= 1, got {pool!r}")
    if not isinstance(relu, bool):
        raise ValueError(f"relu must be a bool, got {relu!r}")
    ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"the convolution output is empty: input {h}x{w}, padding (l, r, t, b) "
                         f"{(left, right, top, bottom)}, kernel {kh}x{kw}, dilation {(dh, dw)}, stride {(sh, sw)}")
    if window.shape != (c_out, ho, wo):
        raise ValueError(f"window must have shape (C_out, Ho, Wo) = {(c_out, ho, wo)}, got {tuple(window.shape)}")
    if window.dtype != torch.float32:
        raise ValueError(f"window must be float32, got {window.dtype}")
    if roi.shape != (c_out, 4):
        raise ValueError(f"roi must have shape (C_out, 4) = ({c_out}, 4), got {tuple(roi.shape)}")
    if roi.dtype.is_floating_point or roi.dtype.is_complex or roi.dtype == torch.bool:
        raise ValueError(f"roi must hold integers, got {roi.dtype}")
    device = x.device
    for name, t in (("weight", weight), ("window", window)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but x is on {device}; all tensors but roi must share a device")
    _check_vector(bias, "bias", c_out, device)
    _check_vector(scale, "scale", c_out, device)
    _check_vector(shift, "shift", c_out, device)
    roi_cpu = roi.detach().to(device="cpu", dtype=torch.int64)
    y0, y1, x0, x1 = roi_cpu.unbind(1)
    bad = (y0 < 0) | (y0 > y1) | (y1 > ho) | (x0 < 0) | (x0 > x1) | (x1 > wo)
    if bool(bad.any()):
        c = int(torch.nonzero(bad)[0])
        raise ValueError(f"roi[{c}] = {roi_cpu[c].tolist()} (y0, y1, x0, x1) must satisfy 0 <= y0 <= y1 <= Ho = {ho} "
                         f"and 0 <= x0 <= x1 <= Wo = {wo}")
    g = channels_per_program
    if not isinstance(g, int) or isinstance(g, bool) or g < 1 or g & (g - 1):
        raise ValueError(f"channels_per_program must be a power of two >= 1, got {g!r}")
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 1):
        raise ValueError(f"tile must be None or an int >= 1, got {tile!r}")
    dot = g >= DOT_MIN
    for name, b in (("block_m", block_m), ("block_k", block_k)):
        low = DOT_MIN if dot else 1
        if not isinstance(b, int) or isinstance(b, bool) or b < low or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= {low}"
                             f"{' with channels_per_program >= 16 (tl.dot)' if dot else ''}, got {b!r}")
    why = _device_reason(device)
    if why:
        raise RuntimeError(f"roi_conv2d_triton cannot run: {why}")

    # -- fill, bias, affine
    if scale is None and shift is not None:
        scale = torch.ones_like(shift)
    if shift is None and scale is not None:
        shift = torch.zeros_like(scale)
    zeros = torch.zeros(c_out, device=device, dtype=torch.float32)
    bias_v = zeros if bias is None else bias.detach().contiguous()
    scale_v = torch.ones_like(zeros) if scale is None else scale.detach().contiguous()
    shift_v = zeros if shift is None else shift.detach().contiguous()
    fill = shift_v.relu() if relu else shift_v
    out = fill.view(1, c_out, 1, 1).expand(n, c_out, ho, wo).contiguous()

    # -- the ROI positions
    if tile is None and g > 1:
        tile = 8
    items, groups = plan_items(roi_cpu, (ho, wo), g, tile)
    if n > 0 and items.shape[0] > 0:
        area = (items[:, 1] - items[:, 0]) * (items[:, 3] - items[:, 2])
        m_total = n * area
        if int(m_total.max()) >= 2 ** 31:
            raise ValueError(f"batch x ROI positions per item must stay below 2**31, got {int(m_total.max())}")
        per_item = (m_total + block_m - 1) // block_m
        prog_item = torch.repeat_interleave(torch.arange(items.shape[0]), per_item)
        first = torch.cumsum(per_item, 0) - per_item
        prog_start = (torch.arange(prog_item.numel()) - first[prog_item]) * block_m
        progs = torch.stack([prog_item, prog_start], 1).to(torch.int32).contiguous()
        item_tab = torch.cat([items[:, :4], m_total[:, None], items[:, 4:]], 1).to(torch.int32).contiguous()
        k = c_in * kh * kw
        bk = min(block_k, max(_next_pow2(k), DOT_MIN if dot else 1))
        w2 = weight.detach().reshape(c_out, k).contiguous()
        win = window.detach().contiguous()
        kernel = _kernel()
        kernel[(progs.shape[0],)](
            x.detach(), w2, win, bias_v, scale_v, shift_v, roi_cpu.to(device=device, dtype=torch.int32).contiguous(),
            out, progs.to(device), item_tab.to(device), groups.to(device=device, dtype=torch.int32).contiguous(),
            c_out, h, w, ho, wo, k,
            *x.stride(),
            sh, sw, top, left, dh, dw,
            KH=kh, KW=kw, RELU=relu, BLOCK_M=block_m, BLOCK_K=bk, BLOCK_C=g,
        )
    if pool == 1:
        return out
    hp, wp = ho // pool, wo // pool
    if n == 0 or hp == 0 or wp == 0:
        return out.new_empty(n, c_out, hp, wp)
    return F.max_pool2d(out[:, :, :hp * pool, :wp * pool], pool).contiguous()

