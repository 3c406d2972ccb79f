"""Pure functions behind Attentive Regularization and target layers.

Conventions (stated in docs/semantics.md; every other module builds on these):

* **Window.** For a map of length ``L`` the pixel centres are
  ``x_i = (i + 0.5) / L``. With centre ``m`` and scale ``s`` (relative units)
  and ``z = (x_i - m) / (s / 2)``, the Gaussian window is ``exp(-z**2 / 2)``
  and the Cauchy window ``1 / (1 + z**2)``. 2-D windows are the outer product
  ``F = f_y ⊗ f_x``.
* **Clipping.** Layers never use their raw parameters: ``m`` is clipped to
  ``[0, 1]`` and ``s`` to ``[k / (sqrt(2) * L), SCALE_MAX]`` per axis, where
  ``L`` is the output length and ``k`` the minimum ROI width in output pixels:
  by default the kernel's extent along that axis (``dilation * (size - 1) + 1``,
  so that an ROI is never narrower than the kernel, as the paper's text says),
  or the layer's ``min_roi`` when set (the paper's original code clipped at
  ``s >= 3 / (2L)``, ROIs of 2–3 pixels). If the lower bound exceeds
  ``SCALE_MAX`` (a tiny map) the lower bound wins.
* **ROI.** Per axis, ``lo = floor((m - s / sqrt(2)) * L)``,
  ``hi = ceil((m + s / sqrt(2)) * L)``, clipped to ``[0, L]``, half-open.
  ROIs are computed in float64 from the clipped parameters, so they do not
  depend on the parameters' dtype beyond the values they hold.
* **Target convolution.** ``y[c] = (conv(x, W)[c] * F_c) * 1[ROI_c]``, whether
  executed densely or by convolving only each ROI (reading the kernel's halo
  from the padded input, so borders are exact).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tkn.validate import at_least, int_pair, one_of, positive_int

__all__ = [
    "WINDOWS",
    "SCALE_MAX",
    "PADDING_MODES",
    "check_window",
    "pixel_centres",
    "window",
    "min_scale",
    "clip_params",
    "rois",
    "roi_mask",
    "roi_areas",
    "roi_macs",
    "pooled_rois",
    "input_sparse_macs",
    "attention2d",
    "attention2d_correlated",
    "conv_output_size",
    "resolve_padding",
    "pad_input",
    "check_min_roi",
    "roi_floor",
    "target_conv2d",
]

WINDOWS = ("gaussian", "cauchy")
#: Upper clip of the scale parameters. At ``s = SCALE_MAX`` a Cauchy window
#: is still above 0.94 everywhere on the map: anything larger is effectively
#: flat, and an unbounded scale would only let the L2 penalty chase it.
SCALE_MAX = 4.0
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: Bound of the correlation of the opt-in correlated Gaussian window.
RHO_MAX = 0.95
_SQRT2 = math.sqrt(2.0)


def check_window(kind: str) -> str:
    """Return the canonical window name, or raise ``ValueError`` naming the choices."""
    if isinstance(kind, str) and kind.lower() in WINDOWS:
        return kind.lower()
    return one_of("window", kind, sorted(WINDOWS))


def check_min_roi(min_roi) -> int | None:
    """Validate a minimum ROI width: ``None`` (the kernel's extent) or an int ``>= 1`` (output pixels per axis)."""
    return at_least("min_roi", min_roi, 1, integer=True, allow_none=True,
                    note="None: the kernel's extent; else output pixels")


def roi_floor(kernel_extent: Sequence[int], min_roi: int | None) -> tuple[int, ...]:
    """Minimum ROI width per axis, in output pixels: ``min_roi`` on every axis, or the kernel's extent."""
    return tuple(kernel_extent) if min_roi is None else (min_roi,) * len(kernel_extent)


def pixel_centres(length: int, *, device=None, dtype=None) -> Tensor:
    """Relative pixel centres ``(i + 0.5) / length`` for ``i = 0 .. length - 1``."""
    return (torch.arange(length, device=device, dtype=dtype or torch.get_default_dtype()) + 0.5) / length


def window(length: int, m, s, kind: str = "cauchy") -> Tensor:
    """1-D attention windows sampled at the pixel centres of a map of ``length``.

    Args:
        length: number of samples ``L``.
        m: centres, shape ``(C,)`` (relative units; 0.5 is the middle).
        s: scales, shape ``(C,)`` (relative units; 1 is the paper's initialisation).
        kind: ``"gaussian"`` or ``"cauchy"``.

    Returns:
        Tensor of shape ``(C, L)``, differentiable in ``m`` and ``s``. No clipping
        is applied here: layers clip with :func:`clip_params` first.

    Example:
        >>> w = window(5, torch.tensor([0.5]), torch.tensor([1.0]), "cauchy")
        >>> [round(v, 3) for v in w[0].tolist()]
        [0.61, 0.862, 1.0, 0.862, 0.61]
    """
    kind = check_window(kind)
    positive_int("length", length)
    if not isinstance(m, Tensor):
        m = torch.as_tensor(m, dtype=torch.get_default_dtype())
    if not isinstance(s, Tensor):
        s = torch.as_tensor(s, dtype=m.dtype, device=m.device)
    if m.dim() != 1 or s.shape != m.shape:
        raise ValueError(f"m and s must both have shape (C,), got m {tuple(m.shape)} and s {tuple(s.shape)}")
    if not m.is_floating_point():
        raise TypeError(f"m and s must be floating point, got {m.dtype}")
    x = pixel_centres(length, device=m.device, dtype=m.dtype)
    z = (x[None, :] - m[:, None]) / (s[:, None] / 2)
    if kind == "gaussian":
        return torch.exp(-0.5 * z * z)
    return 1.0 / (1.0 + z * z)


def min_scale(kernel_extent: int, length: int) -> float:
    """Smallest scale whose ROI is at least ``kernel_extent`` pixels wide on a map of ``length``."""
    return kernel_extent / (_SQRT2 * length)


def clip_params(m: Tensor, s: Tensor, sizes: Sequence[int], kernel_extents: Sequence[int] | None = None):
    """Clip ``(C, D)`` centres and scales as the layers use them (see module docstring).

    ``sizes`` and ``kernel_extents`` give ``L`` and the minimum ROI width ``k``
    per axis (length ``D``; a target layer passes :func:`roi_floor`); widths
    default to 1 (a plain AR layer: ROIs at least one pixel wide).
    Gradients flow through the clamp where the value is inside the bounds.
    """
    if kernel_extents is None:
        kernel_extents = [1] * len(sizes)
    if m.shape[-1] != len(sizes) or len(kernel_extents) != len(sizes):
        raise ValueError(f"expected parameters with {len(sizes)} columns, got shape {tuple(m.shape)}")
    lower = [min_scale(k, n) for k, n in zip(kernel_extents, sizes)]
    lo = torch.tensor(lower, dtype=s.dtype, device=s.device)
    hi = torch.clamp(lo, min=SCALE_MAX)
    return m.clamp(0.0, 1.0), torch.maximum(torch.minimum(s, hi), lo)


def rois(m: Tensor, s: Tensor, sizes: Sequence[int], kernel_extents: Sequence[int] | None = None) -> Tensor:
    """Integer ROIs ``(C, 2 * D)`` as ``lo, hi`` per axis, half-open, clipped to ``[0, L]``.

    Computed in float64 from the clipped parameters (``kernel_extents``: the
    minimum ROI widths, as in :func:`clip_params`). For 2-D the columns are
    ``y0, y1, x0, x1``.
    """
    with torch.no_grad():
        m64 = m.detach().to(torch.float64)
        s64 = s.detach().to(torch.float64)
        mc, sc = clip_params(m64, s64, sizes, kernel_extents)
        n = torch.tensor(list(sizes), dtype=torch.float64, device=m.device)
        half = sc / _SQRT2
        lo = torch.floor((mc - half) * n).clamp(min=0)
        hi = torch.minimum(torch.ceil((mc + half) * n), n)
        return torch.stack([lo, hi], dim=-1).flatten(-2).to(torch.int64)


def roi_mask(roi: Tensor, height: int, width: int) -> Tensor:
    """Boolean mask ``(C, H, W)`` of the ROIs ``(C, 4)`` (``y0, y1, x0, x1``)."""
    iy = torch.arange(height, device=roi.device)
    ix = torch.arange(width, device=roi.device)
    in_y = (iy[None, :] >= roi[:, 0:1]) & (iy[None, :] < roi[:, 1:2])
    in_x = (ix[None, :] >= roi[:, 2:3]) & (ix[None, :] < roi[:, 3:4])
    return in_y[:, :, None] & in_x[:, None, :]


def roi_areas(roi: Tensor) -> Tensor:
    """Pixels of each ROI ``(C, 4)`` (``y0, y1, x0, x1``, half-open) as an ``int64`` tensor ``(C,)``;
    an empty ROI (``hi <= lo`` on an axis) has 0.

    >>> roi_areas(torch.tensor([[0, 2, 1, 4], [3, 3, 0, 5]])).tolist()
    [6, 0]
    """
    roi = roi.to(torch.int64)
    return (roi[:, 1] - roi[:, 0]).clamp(min=0) * (roi[:, 3] - roi[:, 2]).clamp(min=0)


def roi_macs(roi: Tensor, in_per_group: int, kernel_size: Sequence[int]) -> int:
    """Exact multiply–accumulates of a convolution computed over the ROIs ``(C, 4)`` only, for one sample.

    ``Σ_c area(ROI_c) × in_per_group × kH × kW`` (``in_per_group`` = input channels / groups): the count
    of :meth:`tkn.TargetConv2d.macs`, :func:`tkn.flops.count` and the frozen layers. The per-channel
    counts are ``roi_areas(roi) * in_per_group * kH * kW``.

    >>> roi_macs(torch.tensor([[0, 2, 1, 4], [3, 3, 0, 5]]), 4, (3, 3))
    216
    """
    kh, kw = kernel_size
    return int(roi_areas(roi).sum()) * int(in_per_group) * int(kh) * int(kw)


def pooled_rois(roi: Tensor, pool: int, height: int, width: int) -> Tensor:
    """The boxes ``(C, 4)`` of a ``pool``×``pool`` max pool's output (stride ``pool``) that read the ROIs
    ``(C, 4)``: each start rounded down and each end up to the pool's grid, clipped to the pooled map
    ``height``×``width``. An empty ROI gives the empty box ``[0, 0, 0, 0]``. Outside its box a channel that is
    zero outside its ROI stays zero through ReLU and the pool.

    >>> pooled_rois(torch.tensor([[1, 4, 0, 3], [2, 2, 0, 4]]), 2, 2, 2).tolist()
    [[0, 2, 0, 2], [0, 0, 0, 0]]
    """
    roi = roi.to(torch.int64)
    p = int(pool)
    box = torch.stack([roi[:, 0] // p, -(-roi[:, 1] // p), roi[:, 2] // p, -(-roi[:, 3] // p)], 1)
    box[:, :2] = box[:, :2].clamp(max=int(height))
    box[:, 2:] = box[:, 2:].clamp(max=int(width))
    box[(roi[:, 1] <= roi[:, 0]) | (roi[:, 3] <= roi[:, 2])] = 0
    return box


def _tap_counts(lo: Tensor, hi: Tensor, support_lo: Tensor, support_hi: Tensor, kernel: int, stride: int,
                dilation: int, pad: int, integer: bool) -> Tensor:
    """One axis of :func:`input_sparse_macs`: ``(C_out, C_in)`` counts of (output position in ``[lo, hi)``, tap)
    pairs whose input index ``p·stride - pad + k·dilation`` lies in the support ``[support_lo, support_hi)``."""
    taps = torch.arange(kernel, dtype=torch.float64, device=lo.device) * dilation
    first = (support_lo.to(torch.float64)[None, :, None] + pad - taps) / stride
    end = (support_hi.to(torch.float64)[None, :, None] + pad - taps) / stride
    if integer:
        first, end = torch.ceil(first), torch.ceil(end)
    lo64, hi64 = lo.to(torch.float64)[:, None, None], hi.to(torch.float64)[:, None, None]
    return (torch.minimum(hi64, end) - torch.maximum(lo64, first)).clamp(min=0).sum(-1)


def input_sparse_macs(roi: Tensor, support: Tensor, kernel_size: Sequence[int], *, stride: Sequence[int] = (1, 1),
                      dilation: Sequence[int] = (1, 1), pad: Sequence[int] = (0, 0),
                      extent: Sequence[int] | None = None, integer: bool = True) -> Tensor:
    """Multiply–accumulates per sample of a convolution computed over each output channel's ROI that also skips
    the input values known to be zero (outside each input channel's *support* box).

    ``Σ_o Σ_c Σ_(ky, kx) #{p ∈ ROI_o : p·stride − pad + k·dilation ∈ support_c}``: every (output position, tap,
    input channel) product whose input may be non-zero, for a convolution with ``groups=1``. It is what the
    native ``"batch"`` lane strategy executes (a layer fed by another target layer sees its producer's ROIs,
    through the pool between them, as the supports), and at most :func:`roi_macs` (equal with whole supports).
    Both counts separate per axis, so the sum costs ``C_out · C_in · (kH + kW)`` operations.

    Args:
        roi: ``(C_out, 4)`` boxes ``y0, y1, x0, x1`` (half-open, output coordinates).
        support: ``(C_in, 4)`` boxes in input coordinates; an empty box is a channel that is zero everywhere.
        kernel_size, stride, dilation: of the convolution, ``(y, x)``.
        pad: zeros added before the first row and column, ``(top, left)``.
        extent: ``(H, W)``: output positions counted only inside ``[0, H) x [0, W)`` (e.g. the part a fused pool
            keeps); default: the ROIs as given.
        integer: integer boxes, exact counts; ``False``: boxes with real ends (lengths, not pixel counts), and the
            result is differentiable in them (the budget's surrogate).

    Returns:
        a float64 scalar tensor.

    >>> roi = torch.tensor([[0, 4, 0, 4]])                  # one output channel on a 4 x 4 map
    >>> whole, corner = torch.tensor([[0, 4, 0, 4]]), torch.tensor([[0, 1, 0, 1]])
    >>> int(input_sparse_macs(roi, whole, (3, 3), pad=(1, 1)))  # per axis 4 x 3 (position, tap) pairs, 2 in the pad
    100
    >>> int(input_sparse_macs(roi, corner, (3, 3), pad=(1, 1)))  # input (0, 0): from positions 0 and 1 per axis
    4
    """
    if roi.dim() != 2 or roi.shape[-1] != 4 or support.dim() != 2 or support.shape[-1] != 4:
        raise ValueError(f"roi and support must be (C, 4) boxes, got {tuple(roi.shape)} and {tuple(support.shape)}")
    lo_y, hi_y, lo_x, hi_x = roi.unbind(-1)
    if extent is not None:
        hi_y = torch.minimum(hi_y.to(torch.float64), torch.tensor(float(extent[0]), dtype=torch.float64))
        hi_x = torch.minimum(hi_x.to(torch.float64), torch.tensor(float(extent[1]), dtype=torch.float64))
    ys = _tap_counts(lo_y, hi_y, support[:, 0], support[:, 1], int(kernel_size[0]), int(stride[0]),
                     int(dilation[0]), int(pad[0]), integer)
    xs = _tap_counts(lo_x, hi_x, support[:, 2], support[:, 3], int(kernel_size[1]), int(stride[1]),
                     int(dilation[1]), int(pad[1]), integer)
    return (ys * xs).sum()


def attention2d(m: Tensor, s: Tensor, height: int, width: int, kind: str = "cauchy") -> Tensor:
    """Separable 2-D windows ``F = f_y ⊗ f_x`` of shape ``(C, H, W)`` from ``(C, 2)`` parameters.

    Column 0 of ``m``/``s`` is the row (y) axis, column 1 the column (x) axis.
    No clipping is applied here.
    """
    fy = window(height, m[:, 0], s[:, 0], kind)
    fx = window(width, m[:, 1], s[:, 1], kind)
    return fy[:, :, None] * fx[:, None, :]


def attention2d_correlated(m: Tensor, s: Tensor, rho: Tensor, height: int, width: int) -> Tensor:
    """Correlated bivariate Gaussian windows ``(C, H, W)`` (paper Eq. 4–7), an opt-in non-separable variant.

    ``F = exp(-(z_y**2 - 2 * rho * z_y * z_x + z_x**2) / 2)`` with ``z`` as in
    :func:`window`, so ``rho = 0`` gives exactly the separable Gaussian of
    :func:`attention2d`. ``rho`` has shape ``(C,)`` and is used as given
    (layers clip it to ``[-RHO_MAX, RHO_MAX]``).
    """
    positive_int("height", height)
    positive_int("width", width)
    zy = (pixel_centres(height, device=m.device, dtype=m.dtype)[None, :] - m[:, 0:1]) / (s[:, 0:1] / 2)
    zx = (pixel_centres(width, device=m.device, dtype=m.dtype)[None, :] - m[:, 1:2]) / (s[:, 1:2] / 2)
    zy, zx = zy[:, :, None], zx[:, None, :]
    return torch.exp(-0.5 * (zy * zy - 2 * rho[:, None, None] * zy * zx + zx * zx))


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_total: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def resolve_padding(padding, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]):
    """Explicit padding ``(left, right, top, bottom)`` for ``F.pad`` from a ``nn.Conv2d``-style spec.

    ``"same"`` pads like PyTorch: total ``dilation * (k - 1)`` per axis, the odd
    pixel on the right/bottom; it requires stride 1.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' requires stride 1 (as in nn.Conv2d), got stride={stride}")
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        ty, tx = total
        return (tx // 2, tx - tx // 2, ty // 2, ty - ty // 2)
    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = (padding, padding)
    if (
        not isinstance(padding, (tuple, list))
        or len(padding) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding)
    ):
        raise ValueError(f"padding must be 'same', 'valid', a non-negative int or a pair of them, got {padding!r}")
    py, px = padding
    return (px, px, py, py)


def pad_input(x: Tensor, pad: tuple[int, int, int, int], padding_mode: str) -> Tensor:
    """Pad ``x`` by ``(left, right, top, bottom)`` with an ``nn.Conv2d`` padding mode."""
    if not any(pad):
        return x
    if padding_mode == "zeros":
        return F.pad(x, pad)
    return F.pad(x, pad, mode=padding_mode)


def _sliced_conv(xp: Tensor, weight: Tensor, bias: Tensor | None, roi: Tensor, window_map: Tensor,
                 stride, dilation, groups: int, out_hw: tuple[int, int]) -> Tensor:
    """Convolve only each channel's ROI of the padded input ``xp``; channels with equal ROIs share one conv."""
    n = xp.shape[0]
    c_out = weight.shape[0]
    ho, wo = out_hw
    ky, kx = weight.shape[-2:]
    (sy, sx), (dy, dx) = stride, dilation
    out = xp.new_zeros((n, c_out, ho, wo))
    per_group = c_out // groups
    cin_g = weight.shape[1]
    unique, inverse = torch.unique(roi, dim=0, return_inverse=True)
    for u, (y0, y1, x0, x1) in enumerate(unique.tolist()):
        if y1 <= y0 or x1 <= x0:
            continue
        idx = (inverse == u).nonzero().flatten()
        patch = xp[:, :, y0 * sy:(y1 - 1) * sy + dy * (ky - 1) + 1, x0 * sx:(x1 - 1) * sx + dx * (kx - 1) + 1]
        for g in torch.unique(idx // per_group).tolist() if groups > 1 else [0]:
            sel = idx[(idx // per_group) == g] if groups > 1 else idx
            src = patch[:, g * cin_g:(g + 1) * cin_g] if groups > 1 else patch
            y = F.conv2d(src, weight[sel], None if bias is None else bias[sel], stride=stride, dilation=dilation)
            out[:, sel, y0:y1, x0:x1] = y * window_map[sel, y0:y1, x0:x1]
    return out


def target_conv2d(
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
    execution: str = "dense",
    min_roi: int | None = None,
) -> Tensor:
    """Convolution + Attentive Regularization + ROI: ``y[c] = (conv(x, W)[c] * F_c) * 1[ROI_c]``.

    Args:
        x: input ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        m, s: raw window parameters ``(C_out, 2)`` (column 0 = y); clipped here.
        bias: optional ``(C_out,)``, added before the window.
        execution: ``"dense"`` (full convolution, then window and mask) or
            ``"sliced"`` (convolve only the ROIs). Both compute the same values.
        min_roi: minimum ROI width in output pixels per axis (``None``: the
            kernel's dilated extent). Narrower ROIs still read the kernel's
            whole halo from the input.

    Shape:
        - Output: ``(N, C_out, H_out, W_out)`` as ``nn.Conv2d`` with the same arguments.
    """
    if execution not in ("dense", "sliced"):
        raise ValueError(f"execution must be 'dense' or 'sliced', got {execution!r}")
    stride, dilation = int_pair("stride", stride), int_pair("dilation", dilation)
    ky, kx = weight.shape[-2:]
    pad = resolve_padding(padding, (ky, kx), stride, dilation)
    ho = conv_output_size(x.shape[-2], ky, stride[0], dilation[0], pad[2] + pad[3])
    wo = conv_output_size(x.shape[-1], kx, stride[1], dilation[1], pad[0] + pad[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"input of spatial size {tuple(x.shape[-2:])} is too small for kernel {(ky, kx)} with "
            f"dilation {dilation} and padding {pad}: the output would be {ho}x{wo}"
        )
    floors = roi_floor((dilation[0] * (ky - 1) + 1, dilation[1] * (kx - 1) + 1), check_min_roi(min_roi))
    mc, sc = clip_params(m, s, (ho, wo), floors)
    roi = rois(m, s, (ho, wo), floors)
    win = attention2d(mc, sc, ho, wo, window).to(x.dtype)
    if execution == "sliced":
        return _sliced_conv(pad_input(x, pad, padding_mode), weight, bias, roi, win, stride, dilation, groups,
                            (ho, wo))
    left, right, top, bottom = pad
    if padding_mode == "zeros" and left == right and top == bottom:
        # symmetric zero padding inside the convolution: oneDNN's backward on an explicitly padded input
        # took 1.3x as long (TKN6's 256->256 5x5 layer, 14x14, batch 64)
        y = F.conv2d(x, weight, bias, stride=stride, padding=(top, left), dilation=dilation, groups=groups)
    else:
        y = F.conv2d(pad_input(x, pad, padding_mode), weight, bias, stride=stride, dilation=dilation, groups=groups)
    return y * (win * roi_mask(roi, ho, wo).to(win.dtype))


