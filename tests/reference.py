"""Independent float64 references written directly from the formulas of docs/semantics.md.

Plain Python/NumPy loops, deliberately sharing no code with ``tkn``: the tests
compare the library against these.
"""
from __future__ import annotations

import math

import numpy as np

SQRT2 = math.sqrt(2.0)


def window_ref(length: int, m: float, s: float, kind: str) -> np.ndarray:
    out = np.empty(length)
    for i in range(length):
        x = (i + 0.5) / length
        z = (x - m) / (s / 2.0)
        out[i] = math.exp(-z * z / 2.0) if kind == "gaussian" else 1.0 / (1.0 + z * z)
    return out


def clip_ref(m: float, s: float, kernel: int, length: int, s_max: float) -> tuple[float, float]:
    m = min(max(m, 0.0), 1.0)
    lower = kernel / (SQRT2 * length)
    upper = max(s_max, lower)
    return m, min(max(s, lower), upper)


def roi_ref(m: float, s: float, length: int) -> tuple[int, int]:
    lo = math.floor((m - s / SQRT2) * length)
    hi = math.ceil((m + s / SQRT2) * length)
    return max(lo, 0), min(hi, length)


def conv2d_ref(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int) -> np.ndarray:
    """Zero-padded cross-correlation, loops over every output element. ``padding`` = (top, bottom, left, right)."""
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    top, bottom, left, right = padding
    xp = np.zeros((n, cin, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    ho = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, cout, ho, wo))
    per_group = cout // groups
    for c in range(cout):
        g = c // per_group
        for i in range(ho):
            for j in range(wo):
                acc = np.zeros(n)
                for ci in range(cin_g):
                    for u in range(kh):
                        for v in range(kw):
                            acc += w[c, ci, u, v] * xp[:, g * cin_g + ci, i * stride[0] + u * dilation[0],
                                                      j * stride[1] + v * dilation[1]]
                out[:, c, i, j] = acc
    return out


def target_conv2d_ref(x, w, m, s, kind, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
                      s_max=4.0, min_roi=None) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """y[c] = conv(x, W)[c] * (f_y ⊗ f_x)_c * 1[ROI_c]; returns (y, rois).

    The scales are clipped at ``min_roi`` output pixels per axis, or at the kernel's extent when it is ``None``.
    """
    y = conv2d_ref(x, w, stride, padding, dilation, groups)
    _, cout, ho, wo = y.shape
    kh, kw = w.shape[-2:]
    ext = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    if min_roi is not None:
        ext = (min_roi, min_roi)
    rois = []
    for c in range(cout):
        my, sy = clip_ref(float(m[c, 0]), float(s[c, 0]), ext[0], ho, s_max)
        mx, sx = clip_ref(float(m[c, 1]), float(s[c, 1]), ext[1], wo, s_max)
        fy, fx = window_ref(ho, my, sy, kind), window_ref(wo, mx, sx, kind)
        y0, y1 = roi_ref(my, sy, ho)
        x0, x1 = roi_ref(mx, sx, wo)
        rois.append((y0, y1, x0, x1))
        for i in range(ho):
            for j in range(wo):
                inside = y0 <= i < y1 and x0 <= j < x1
                y[:, c, i, j] *= fy[i] * fx[j] if inside else 0.0
    return y, rois


def input_sparse_macs_ref(roi, support, kernel, stride, dilation, pad, extent) -> int:
    """Products whose input may be non-zero: every output position of every ROI (inside ``extent``), every tap,
    every input channel whose support box holds the tap's input pixel, counted one by one."""
    count = 0
    for y0, y1, x0, x1 in roi:
        for py in range(y0, min(y1, extent[0])):
            for px in range(x0, min(x1, extent[1])):
                for ky in range(kernel[0]):
                    for kx in range(kernel[1]):
                        iy = py * stride[0] - pad[0] + ky * dilation[0]
                        ix = px * stride[1] - pad[1] + kx * dilation[1]
                        for sy0, sy1, sx0, sx1 in support:
                            count += sy0 <= iy < sy1 and sx0 <= ix < sx1
    return count
