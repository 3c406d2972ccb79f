"""The Triton ROI convolution (``tkn.engine.triton_roi``) against a float64 loop reference.

Without a CUDA device the kernel runs under Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set here before
Triton is imported (the interpreter is slow, so the shapes are small). Tests of the kernel's values are skipped
when Triton is not installed (``pip install tkn[triton]``); the argument checks and the work list are tested
either way.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tkn.engine import triton_roi  # noqa: E402  (after TRITON_INTERPRET: the module imports triton)
from tkn.engine.triton_roi import plan_items, roi_conv2d_triton  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_roi.available(), reason=f"Triton cannot run: {triton_roi.reason()}")
DEVICE = "cuda" if torch.cuda.is_available() and not triton_roi.interpreting() else "cpu"


def _reference(x, w, bias, window, roi, stride, pad, dilation, scale, shift, relu, pool):
    """Float64 loops from the definition: conv (zero padding), ((conv + bias) * window) * scale + shift inside each
    channel's ROI, shift outside it (0 without shift), ReLU, max-pool of stride ``pool``."""
    x = x.detach().cpu().double().numpy()
    w = w.detach().cpu().double().numpy()
    left, right, top, bottom = pad
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    xp = np.zeros((n, c_in, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    ho = (h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((n, c_out, ho, wo))
    for i in range(ho):
        for j in range(wo):
            for ky in range(kh):
                for kx in range(kw):
                    patch = xp[:, :, i * stride[0] + ky * dilation[0], j * stride[1] + kx * dilation[1]]  # (N, C_in)
                    y[:, :, i, j] += patch @ w[:, :, ky, kx].T
    sc = np.ones(c_out) if scale is None else scale.double().numpy()
    sh = np.zeros(c_out) if shift is None else shift.double().numpy()
    for c in range(c_out):
        y0, y1, x0, x1 = (int(v) for v in roi[c])
        for i in range(ho):
            for j in range(wo):
                if y0 <= i < y1 and x0 <= j < x1:
                    v = (y[:, c, i, j] + (0.0 if bias is None else float(bias[c]))) * float(window[c, i, j])
                else:
                    v = np.zeros(n)
                v = v * sc[c] + sh[c]
                y[:, c, i, j] = np.maximum(v, 0.0) if relu else v
    hp, wp = ho // pool, wo // pool
    out = np.empty((n, c_out, hp, wp))
    for i in range(hp):
        for j in range(wp):
            out[:, :, i, j] = y[:, :, i * pool:(i + 1) * pool, j * pool:(j + 1) * pool].max(axis=(2, 3))
    return torch.from_numpy(out)


def _rois(c_out, ho, wo, g):
    """Scattered ROIs of 1-3 pixels per axis, empty ROIs, whole-map ROIs and ROIs at each border and corner."""
    fixed = [(0, 1, 0, 1), (ho - 1, ho, wo - 1, wo), (0, ho, 0, wo), (2, 2, 0, wo), (0, 2, wo - 3, wo),
             (ho - 3, ho, 0, 2), (1, 1, 1, 1), (0, ho, wo - 1, wo)]
    rois = []
    for c in range(c_out):
        if c % 2 == 0 and c // 2 < len(fixed):
            rois.append(fixed[c // 2])
            continue
        hh, ww = (int(v) for v in torch.randint(1, 4, (2,), generator=g))
        hh, ww = min(hh, ho), min(ww, wo)
        y0 = int(torch.randint(0, ho - hh + 1, (1,), generator=g))
        x0 = int(torch.randint(0, wo - ww + 1, (1,), generator=g))
        rois.append((y0, y0 + hh, x0, x0 + ww))
    return torch.tensor(rois)


def _problem(c_in, c_out, hw, k, stride, dilation, pad, batch, layout, seed, masked=True):
    g = torch.Generator().manual_seed(seed)
    h, w_ = hw
    if layout == "transposed":  # (N, C, H, W) view of an (N, C, W, H) tensor
        x = torch.randn(batch, c_in, w_, h, generator=g).transpose(2, 3)
    elif layout == "sliced":  # every other channel of a wider tensor
        x = torch.randn(batch, 2 * c_in, h, w_, generator=g)[:, ::2]
    else:
        x = torch.randn(batch, c_in, h, w_, generator=g)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, generator=g) / (c_in * k * k) ** 0.5
    left, right, top, bottom = pad
    ho = (h + top + bottom - dilation[0] * (k - 1) - 1) // stride[0] + 1
    wo = (w_ + left + right - dilation[1] * (k - 1) - 1) // stride[1] + 1
    roi = _rois(c_out, ho, wo, g)
    mask = torch.zeros(c_out, ho, wo)
    for c, (y0, y1, x0, x1) in enumerate(roi.tolist()):
        mask[c, y0:y1, x0:x1] = 1.0
    window = torch.rand(c_out, ho, wo, generator=g) + 0.5
    if masked:  # the window·mask, as frozen layers pass it; unmasked, the ROIs alone must decide what is computed
        window = window * mask
    vectors = [torch.randn(c_out, generator=g) for _ in range(3)]
    return x, weight, window, roi, vectors, (ho, wo)


CASES = [
    # c_in, c_out, hw, kernel, stride, dilation, pad (l, r, t, b), pool, batch, bias, affine, relu, layout, masked
    (3, 18, (9, 11), 3, (1, 1), (1, 1), (1, 1, 1, 1), 1, 1, True, "none", False, "contiguous", False),
    (2, 17, (11, 9), 3, (2, 2), (1, 1), (0, 2, 1, 0), 2, 3, False, "both", True, "transposed", True),
    (3, 20, (10, 10), 3, (1, 1), (2, 2), (2, 1, 0, 2), 3, 2, True, "both", True, "channels_last", False),
    (1, 9, (8, 9), 5, (1, 2), (2, 1), (2, 2, 3, 1), 2, 5, True, "shift", False, "sliced", True),
    (4, 16, (7, 8), 1, (1, 1), (1, 1), (0, 0, 0, 0), 1, 2, False, "scale", True, "contiguous", True),
]


@needs_triton
@pytest.mark.parametrize("channels_per_program", [1, 16])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_matches_float64_reference(case, channels_per_program):
    c_in, c_out, hw, k, stride, dilation, pad, pool, batch, use_bias, affine, relu, layout, masked = case
    x, weight, window, roi, (b, s, t), (ho, wo) = _problem(c_in, c_out, hw, k, stride, dilation, pad, batch, layout,
                                                            seed=c_out, masked=masked)
    bias = b if use_bias else None
    scale = s if affine in ("both", "scale") else None
    shift = t if affine in ("both", "shift") else None
    dev = torch.device(DEVICE)
    opt = {name: v.to(dev) for name, v in (("bias", bias), ("scale", scale), ("shift", shift)) if v is not None}
    got = roi_conv2d_triton(x.to(dev), weight.to(dev), window.to(dev), roi, stride=stride, padding=pad,
                            dilation=dilation, relu=relu, pool=pool, channels_per_program=channels_per_program,
                            tile=4, **opt)
    ref = _reference(x, weight, bias, window, roi, stride, pad, dilation, scale, shift, relu, pool)
    assert got.shape == ref.shape == (batch, c_out, ho // pool, wo // pool)
    assert got.dtype == torch.float32 and got.device.type == dev.type
    torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-4, atol=1e-5)


@needs_triton
def test_grouped_sum_path_default_tile_and_empty_rois():
    """Four channels per program (``tl.sum`` over a channel block), the default tile, every ROI but one empty,
    and the all-empty layer (no launch: the output is the fill)."""
    x, weight, window, roi, (b, s, t), (ho, wo) = _problem(2, 6, (6, 7), 3, (1, 1), (1, 1), (1, 1, 1, 1), 3,
                                                            "contiguous", seed=3)
    roi[1:] = torch.tensor([0, 0, 0, 0])
    window[1:] = 0.0
    dev = torch.device(DEVICE)
    got = roi_conv2d_triton(x.to(dev), weight.to(dev), window.to(dev), roi, bias=b.to(dev), shift=t.to(dev),
                            padding=1, relu=True, channels_per_program=4, block_m=16, block_k=8)
    ref = _reference(x, weight, b, window, roi, (1, 1), (1, 1, 1, 1), (1, 1), None, t, True, 1)
    torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-4, atol=1e-5)
    empty = torch.zeros(6, 4, dtype=torch.int64)
    got = roi_conv2d_triton(x.to(dev), weight.to(dev), torch.zeros_like(window).to(dev), empty, shift=t.to(dev),
                            padding=1, pool=2)
    torch.testing.assert_close(got.cpu(), t.view(1, 6, 1, 1).expand(3, 6, ho // 2, wo // 2))


@needs_triton
@pytest.mark.parametrize("pool", [1, 2])
def test_batch_zero(pool):
    x, weight, window, roi, _, (ho, wo) = _problem(2, 5, (6, 6), 3, (1, 1), (1, 1), (1, 1, 1, 1), 0, "contiguous", 0)
    dev = torch.device(DEVICE)
    got = roi_conv2d_triton(x.to(dev), weight.to(dev), window.to(dev), roi, padding=1, pool=pool)
    assert got.shape == (0, 5, ho // pool, wo // pool)


@pytest.mark.parametrize("channels,tile", [(1, None), (1, 3), (4, 3), (16, 4), (16, None)])
def test_plan_covers_every_roi_position_once(channels, tile):
    """Every ROI position of every channel lies in exactly one item of its channel's group; boxes are non-empty
    and inside the map."""
    g = torch.Generator().manual_seed(channels)
    ho, wo = 9, 10
    roi = _rois(37, ho, wo, g)
    items, groups = plan_items(roi, (ho, wo), channels, tile)
    assert groups.shape[1] == channels
    nonempty = [c for c, r in enumerate(roi.tolist()) if r[1] > r[0] and r[3] > r[2]]
    assert sorted(groups[groups >= 0].tolist()) == nonempty
    assert ((items[:, 1] > items[:, 0]) & (items[:, 3] > items[:, 2])).all()
    assert (items[:, 0] >= 0).all() and (items[:, 1] <= ho).all() and (items[:, 2] >= 0).all()
    assert (items[:, 3] <= wo).all()
    count = torch.zeros(len(roi), ho, wo, dtype=torch.int64)
    for y0, y1, x0, x1, grp in items.tolist():
        for c in groups[grp].tolist():
            if c >= 0:
                r = roi[c].tolist()
                count[c, max(y0, r[0]):min(y1, r[1]), max(x0, r[2]):min(x1, r[3])] += 1
    expected = torch.zeros_like(count)
    for c, (y0, y1, x0, x1) in enumerate(roi.tolist()):
        expected[c, y0:y1, x0:x1] = 1
    assert torch.equal(count, expected)
    if channels == 1 and tile is None:  # one channel per item: the box is the ROI itself
        assert sorted((tuple(r[:4]), groups[r[4], 0].item()) for r in items.tolist()) == sorted(
            (tuple(roi[c].tolist()), c) for c in nonempty)


def _args():
    x = torch.randn(2, 3, 6, 7)
    weight = torch.randn(4, 3, 3, 3)
    window = torch.ones(4, 4, 5)
    roi = torch.tensor([[0, 4, 0, 5]] * 4)
    return x, weight, window, roi


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(x=a["x"][0]), "x must have shape"),
    (lambda a: a.update(x=a["x"].double()), "x must be float32"),
    (lambda a: a.update(weight=torch.randn(4, 2, 3, 3)), "weight has 2 input channels but x has 3"),
    (lambda a: a.update(weight=a["weight"].half()), "weight must be float32"),
    (lambda a: a.update(window=torch.ones(4, 5, 5)), r"window must have shape \(C_out, Ho, Wo\) = \(4, 4, 5\)"),
    (lambda a: a.update(window=a["window"].double()), "window must be float32"),
    (lambda a: a.update(roi=torch.zeros(3, 4, dtype=torch.int64)), r"roi must have shape \(C_out, 4\)"),
    (lambda a: a.update(roi=a["roi"].float()), "roi must hold integers"),
    (lambda a: a.update(roi=torch.tensor([[0, 4, 0, 5]] * 3 + [[0, 5, 0, 5]])), r"roi\[3\] = \[0, 5, 0, 5\]"),
    (lambda a: a.update(roi=torch.tensor([[0, 4, 0, 5]] * 3 + [[3, 2, 0, 5]])), "0 <= y0 <= y1 <= Ho = 4"),
    (lambda a: a.update(roi=torch.tensor([[-1, 4, 0, 5]] + [[0, 4, 0, 5]] * 3)), r"roi\[0\]"),
    (lambda a: a.update(bias=torch.zeros(3)), r"bias must have shape \(C_out,\) = \(4,\)"),
    (lambda a: a.update(scale=torch.zeros(4, dtype=torch.float64)), "scale must be float32"),
    (lambda a: a.update(shift=torch.zeros(4, device="meta")), "shift is on meta but x is on cpu"),
    (lambda a: a.update(weight=a["weight"].to("meta")), "weight is on meta but x is on cpu"),
    (lambda a: a.update(stride=0), "stride must be >= 1"),
    (lambda a: a.update(dilation=(1, 2, 3)), "dilation must be an int or a pair of ints"),
    (lambda a: a.update(padding=(1, 1, -1, 0)), "padding must be non-negative"),
    (lambda a: a.update(padding=(1, 1)), r"padding must be an int or 4 ints \(left, right, top, bottom\)"),
    (lambda a: a.update(pool=0), "pool must be an int >= 1"),
    (lambda a: a.update(relu=1), "relu must be a bool"),
    (lambda a: a.update(channels_per_program=3), "channels_per_program must be a power of two"),
    (lambda a: a.update(channels_per_program=16, block_m=8), "block_m must be a power of two >= 16"),
    (lambda a: a.update(block_k=24), "block_k must be a power of two"),
    (lambda a: a.update(tile=0), "tile must be None or an int >= 1"),
    (lambda a: a.update(x=torch.randn(2, 3, 2, 2)), "the convolution output is empty"),
])
def test_bad_arguments_raise(change, message):
    x, weight, window, roi = _args()
    args = dict(x=x, weight=weight, window=window, roi=roi)
    change(args)
    with pytest.raises(ValueError, match=message):
        roi_conv2d_triton(args.pop("x"), args.pop("weight"), args.pop("window"), args.pop("roi"), **args)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if triton_roi.triton is not None:
        assert not triton_roi.available()
        assert "TRITON_INTERPRET=1" in triton_roi.reason()
    with pytest.raises(RuntimeError, match="cannot run"):
        roi_conv2d_triton(*_args())


def test_module_imports_without_triton(monkeypatch):
    """With Triton absent the module still imports; the kernel says why it cannot run."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_triton_roi_without_triton", triton_roi.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.available()
    assert "triton is not installed" in module.reason()
    with pytest.raises(RuntimeError, match=r"pip install tkn\[triton\]"):
        module.roi_conv2d_triton(*_args())
