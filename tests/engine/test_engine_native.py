"""The native ROI kernel: against float64 loops written from the formula, through FrozenTargetConv2d and freeze,
the TKN_NATIVE=0 fallback, and the build cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tkn.engine import FrozenTargetConv2d, freeze, native
from tkn.engine.modules import FrozenSparseLinear, native_plan
from tkn.ops.plan import CostModel, dense_plan, plan_blocks, plan_tiles
from tkn.layers import TargetConv2d
from helpers_engine import needs_native, random_rois_, require_native
from reference import conv2d_ref


def _reference(x, w, bias, window, roi, stride, pad, dilation, scale, shift, relu, pool):
    """Float64 loops: ((conv + bias) * window * 1[ROI]) * scale + shift, ReLU, max-pool (stride pool)."""
    left, right, top, bottom = pad
    y = conv2d_ref(x.double().numpy(), w.double().numpy(), stride, (top, bottom, left, right), dilation, 1)
    n, c, ho, wo = y.shape
    for ch in range(c):
        y0, y1, x0, x1 = (int(v) for v in roi[ch])
        for i in range(ho):
            for j in range(wo):
                inside = y0 <= i < y1 and x0 <= j < x1
                v = y[:, ch, i, j] + (0.0 if bias is None else float(bias[ch]))
                v = v * float(window[ch, i, j]) if inside else 0.0 * v
                if scale is not None:
                    v = v * float(scale[ch]) + float(shift[ch])
                y[:, ch, i, j] = np.maximum(v, 0.0) if relu else v
    if pool > 1:
        hp, wp = ho // pool, wo // pool
        out = np.empty((n, c, hp, wp))
        for i in range(hp):
            for j in range(wp):
                out[:, :, i, j] = y[:, :, i * pool:(i + 1) * pool, j * pool:(j + 1) * pool].max(axis=(2, 3))
        y = out
    return torch.from_numpy(y)


def _random_rois(c, ho, wo, g):
    """Border ROIs, ROIs narrower than the kernel (1 pixel), empty ROIs, whole-map ROIs and random ones."""
    rois = []
    for ch in range(c):
        kind = ch % 5
        if kind == 0:
            rois.append((0, min(2, ho), wo - 2, wo))  # at the corner
        elif kind == 1:
            y = int(torch.randint(0, ho, (1,), generator=g))
            rois.append((y, y + 1, 1, 2))  # one pixel
        elif kind == 2 and ch % 10 == 2:
            rois.append((3, 3, 0, wo))  # empty
        elif kind == 3 and ch % 15 == 3:
            rois.append((0, ho, 0, wo))
        else:
            y0, x0 = int(torch.randint(0, ho, (1,), generator=g)), int(torch.randint(0, wo, (1,), generator=g))
            y1 = y0 + int(torch.randint(1, ho - y0 + 1, (1,), generator=g))
            x1 = x0 + int(torch.randint(1, wo - x0 + 1, (1,), generator=g))
            rois.append((y0, y1, x0, x1))
    return torch.tensor(rois)


CASES = [
    # c_in, c_out, hw, kernel, stride, dilation, pad (l, r, t, b), pool, batch, bias, affine, relu
    (3, 21, (9, 11), 3, (1, 1), (1, 1), (1, 1, 1, 1), 1, 2, True, False, False),
    (2, 17, (11, 9), 3, (1, 1), (1, 1), (1, 1, 1, 1), 2, 3, False, True, True),
    (4, 33, (13, 13), 5, (1, 1), (1, 1), (2, 2, 2, 2), 3, 1, True, True, True),
    (1, 12, (10, 12), 3, (2, 1), (1, 2), (0, 2, 1, 0), 1, 2, False, False, True),
    (5, 9, (9, 9), 3, (1, 1), (1, 1), (0, 0, 0, 0), 2, 0, True, True, False),
    (3, 16, (10, 11), 3, (1, 1), (1, 1), (1, 1, 1, 1), 2, 2, False, False, False),
]


@needs_native
@pytest.mark.parametrize("strategy", native.STRATEGIES)
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_float64_loops(case, strategy):
    c_in, c_out, hw, k, stride, dilation, pad, pool, batch, with_bias, affine, relu = case
    if strategy == "reduce":  # its lanes run over input channels: a multiple of the vector width
        c_in *= native.vector_width()
    g = torch.Generator().manual_seed(sum(hw) + c_out)
    left, right, top, bottom = pad
    ho = (hw[0] + top + bottom - dilation[0] * (k - 1) - 1) // stride[0] + 1
    wo = (hw[1] + left + right - dilation[1] * (k - 1) - 1) // stride[1] + 1
    x = torch.randn(batch, c_in, *hw, generator=g)
    w = torch.randn(c_out, c_in, k, k, generator=g)
    bias = torch.randn(c_out, generator=g) if with_bias else None
    scale = torch.randn(c_out, generator=g) if affine else None
    shift = torch.randn(c_out, generator=g) if affine else None
    roi = _random_rois(c_out, ho, wo, g)
    mask = torch.zeros(c_out, ho, wo)
    for ch, (y0, y1, x0, x1) in enumerate(roi.tolist()):
        mask[ch, y0:y1, x0:x1] = 1.0
    window = (torch.rand(c_out, ho, wo, generator=g) + 0.5) * mask
    conv = native.NativeConv(w, bias, window, roi, conv_hw=(ho, wo), input_hw=hw, stride=stride, dilation=dilation,
                             pad=pad, scale=scale, shift=shift, relu=relu, pool=pool, strategy=strategy)
    # non-contiguous input: a channel slice of a larger channels_last tensor
    wide = torch.randn(batch, c_in + 2, *hw, generator=g).contiguous(memory_format=torch.channels_last)
    wide[:, 1:1 + c_in] = x
    got = conv(wide[:, 1:1 + c_in])
    ref = _reference(x, w, bias, window, roi, stride, pad, dilation, scale, shift, relu, pool)
    assert got.shape == ref.shape == (batch, c_out, ho // pool, wo // pool)
    if strategy != "batch":
        assert got.is_contiguous(memory_format=torch.channels_last)
    else:  # a view of (H, W, C, lanes), the batch innermost
        lanes = -(-batch // native.vector_width()) * native.vector_width()
        assert batch == 0 or native.batch_layout(got, lanes) is not None
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_channel_sets_group_identical_boxes_largest_work_first():
    roi = torch.tensor([[0, 2, 0, 2], [1, 2, 3, 4], [0, 2, 0, 2], [3, 3, 0, 5], [1, 2, 3, 4], [0, 2, 0, 2],
                        [0, 5, 0, 5], [1, 2, 3, 4]])
    sets, boxes = native.channel_sets(roi, max_channels=2)
    # work (box area x channels): [0, 6] 25, [0, 2] 8, [1, 4] 2, [5] 4, [7] 1; channel 3's empty ROI is dropped
    assert sets == [[6], [0, 2], [5], [1, 4], [7]]
    assert boxes.dtype == torch.int32
    assert boxes.tolist() == [[0, 5, 0, 5], [0, 2, 0, 2], [0, 2, 0, 2], [1, 2, 3, 4], [1, 2, 3, 4]]
    empty_sets, empty_boxes = native.channel_sets(torch.tensor([[2, 2, 0, 3]]))
    assert empty_sets == [] and empty_boxes.shape == (0, 4)


def _shared_box_layer(c_out, hw, pad, pool, g):
    """A "reduce" layer whose channels share boxes of 1 to 20 positions (up to 30 channels per box: sets split at
    24, tiles of every R x NP shape), with boxes at the borders and across pool windows."""
    c_in = 2 * native.vector_width()
    boxes = [(0, 1, 0, 1), (2, 3, 4, 6), (1, 3, 1, 3), (0, 2, 5, 8), (3, 7, 2, 7), (5, 7, 6, 8), (0, 8, 0, 8),
             (4, 5, 0, 8)]
    counts = [30, 13, 7, 5, 3, 2, 1, 4]
    roi = [box for box, k in zip(boxes, counts) for _ in range(k)][:c_out]
    roi = torch.tensor(roi + [(0, 0, 0, 0)] * (c_out - len(roi)))
    roi = roi[torch.randperm(c_out, generator=g)]
    mask = torch.zeros(c_out, *hw)
    for ch, (y0, y1, x0, x1) in enumerate(roi.tolist()):
        mask[ch, y0:y1, x0:x1] = 1.0
    w = torch.randn(c_out, c_in, 3, 3, generator=g)
    bias, scale = torch.randn(c_out, generator=g), torch.rand(c_out, generator=g)
    shift = torch.randn(c_out, generator=g)
    window = (torch.rand(c_out, *hw, generator=g) + 0.5) * mask
    conv = native.NativeConv(w, bias, window, roi, conv_hw=hw, input_hw=hw, stride=(1, 1), dilation=(1, 1), pad=pad,
                             scale=scale, shift=shift, relu=True, pool=pool, strategy="reduce")
    return conv, (w, bias, window, roi, scale, shift)


@needs_native
@pytest.mark.parametrize("pool,batch", [(1, 3), (2, 1)])
def test_reduce_sets_of_shared_boxes_match_float64_loops(pool, batch):
    g = torch.Generator().manual_seed(10 * pool + batch)
    hw = (8, 8)
    conv, (w, bias, window, roi, scale, shift) = _shared_box_layer(66, hw, (1, 1, 1, 1), pool, g)
    assert conv.set_channels.numel() == 65  # every channel with a ROI, once
    assert max(int(b) - int(a) for a, b in zip(conv.set_offsets[:-1], conv.set_offsets[1:])) == 24
    x = torch.randn(batch, conv.c_in, *hw, generator=g)
    ref = _reference(x, w, bias, window, roi, (1, 1), (1, 1, 1, 1), (1, 1), scale, shift, True, pool)
    torch.testing.assert_close(conv(x).double(), ref, rtol=1e-4, atol=1e-4)


@needs_native
def test_reduce_kernel_reads_a_zero_padding_it_was_not_given():
    """The layer pads its input itself; called with the padding in ``dims`` instead (the C entry point's general
    form), the kernel's bounds-checked loop gives the same values."""
    g = torch.Generator().manual_seed(5)
    hw = (8, 8)
    conv, (w, bias, window, roi, scale, shift) = _shared_box_layer(40, hw, (1, 1, 1, 1), 1, g)
    x = torch.randn(2, conv.c_in, *hw, generator=g)
    ref = _reference(x, w, bias, window, roi, (1, 1), (1, 1, 1, 1), (1, 1), scale, shift, True, 1)
    assert conv._pad_copy is not None
    conv._pad_copy = None
    conv.dims[1:3] = torch.tensor(hw)
    conv.dims[10:12] = 1
    conv._dims_cache.clear()
    torch.testing.assert_close(conv(x).double(), ref, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("batch", [1, 17, 40])
def test_batch_strategy_chains_layers_and_skips_known_zeros(batch):
    """Two "batch" layers in a row: the second reads the first's output in place (no copy) and, given the
    first's ROIs (through the pool) as its input support, reads only the values that can be non-zero."""
    g = torch.Generator().manual_seed(batch)
    hw = (12, 10)
    x = torch.randn(batch, 3, *hw, generator=g)
    w1, w2 = torch.randn(24, 3, 3, 3, generator=g), torch.randn(19, 24, 3, 3, generator=g)
    roi1, roi2 = _random_rois(24, *hw, g), _random_rois(19, 6, 5, g)
    mask1 = torch.zeros(24, *hw)
    for ch, (y0, y1, x0, x1) in enumerate(roi1.tolist()):
        mask1[ch, y0:y1, x0:x1] = 1.0
    mask2 = torch.zeros(19, 6, 5)
    for ch, (y0, y1, x0, x1) in enumerate(roi2.tolist()):
        mask2[ch, y0:y1, x0:x1] = 1.0
    win1 = (torch.rand(24, *hw, generator=g) + 0.5) * mask1
    win2 = (torch.rand(19, 6, 5, generator=g) + 0.5) * mask2
    opts = dict(stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1), strategy="batch")
    first = native.NativeConv(w1, None, win1, roi1, conv_hw=hw, input_hw=hw, relu=True, pool=2, **opts)
    support = torch.stack([roi1[:, 0] // 2, -(-roi1[:, 1] // 2), roi1[:, 2] // 2, -(-roi1[:, 3] // 2)], 1)
    support[:, :2] = support[:, :2].clamp(max=6)
    support[:, 2:] = support[:, 2:].clamp(max=5)
    second = native.NativeConv(w2, None, win2, roi2, conv_hw=(6, 5), input_hw=(6, 5), support=support, **opts)
    dense_second = native.NativeConv(w2, None, win2, roi2, conv_hw=(6, 5), input_hw=(6, 5), **opts)
    assert second.executed_macs < dense_second.executed_macs
    h = first(x)
    lanes = -(-batch // native.vector_width()) * native.vector_width()
    assert native.batch_layout(h, lanes) is not None
    ref_h = _reference(x, w1, None, win1, roi1, (1, 1), (1, 1, 1, 1), (1, 1), None, None, True, 2)
    torch.testing.assert_close(h.double(), ref_h, rtol=1e-4, atol=1e-4)
    ref = _reference(ref_h.float(), w2, None, win2, roi2, (1, 1), (1, 1, 1, 1), (1, 1), None, None, False, 1)
    torch.testing.assert_close(second(h).double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second(h.contiguous()).double(), ref, rtol=1e-4, atol=1e-4)


@needs_native
@pytest.mark.parametrize("relu,affine,c_out", [(True, True, 33), (False, True, 16), (True, False, 21)])
def test_residual_is_added_before_the_relu(relu, affine, c_out):
    """``relu(affine(conv) + residual)`` at computed and uncomputed positions, any residual layout."""
    g = torch.Generator().manual_seed(c_out)
    c_in, hw, batch = 3, (9, 10), 3
    x = torch.randn(batch, c_in, *hw, generator=g)
    w = torch.randn(c_out, c_in, 3, 3, generator=g)
    scale = torch.randn(c_out, generator=g) if affine else None
    shift = torch.randn(c_out, generator=g) if affine else None
    roi = _random_rois(c_out, *hw, g)
    mask = torch.zeros(c_out, *hw)
    for ch, (y0, y1, x0, x1) in enumerate(roi.tolist()):
        mask[ch, y0:y1, x0:x1] = 1.0
    window = (torch.rand(c_out, *hw, generator=g) + 0.5) * mask
    opts = dict(conv_hw=hw, input_hw=hw, stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1), scale=scale, shift=shift)
    conv = native.NativeConv(w, None, window, roi, relu=relu, residual=True, **opts)
    residual = torch.randn(batch, c_out + 4, *hw, generator=g)[:, 2:2 + c_out]  # non-contiguous NCHW slice
    ref = _reference(x, w, None, window, roi, (1, 1), (1, 1, 1, 1), (1, 1), scale, shift, False, 1) + residual.double()
    ref = ref.clamp(min=0) if relu else ref
    got = conv(x.contiguous(memory_format=torch.channels_last), residual)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    assert (ref < 0).any() != relu and (got == 0).any() == relu  # the ReLU acted (or not) after the sum
    with pytest.raises(ValueError, match="adds a float32 residual of shape"):
        conv(x)
    with pytest.raises(ValueError, match="residual addition needs pool=1"):
        native.NativeConv(w, None, window, roi, pool=2, residual=True, **opts)
    with pytest.raises(ValueError, match="built without a residual"):
        native.NativeConv(w, None, window, roi, **opts)(x, residual)


@needs_native
def test_input_support_reads_only_nonzero_channels():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 20, 12, 12, generator=g)
    support = torch.randint(0, 12, (20, 4), generator=g)
    support[:, 1] = torch.maximum(support[:, 0] + 1, support[:, 1])
    support[:, 3] = torch.maximum(support[:, 2] + 1, support[:, 3])
    support[5] = torch.tensor([4, 4, 0, 12])  # an all-zero channel
    for c, (y0, y1, x0, x1) in enumerate(support.tolist()):  # zero outside each box
        keep = torch.zeros(12, 12)
        keep[y0:y1, x0:x1] = 1
        x[:, c] *= keep
    w = torch.randn(24, 20, 3, 3, generator=g)
    roi = _random_rois(24, 12, 12, g)
    window = torch.ones(24, 12, 12)
    opts = dict(conv_hw=(12, 12), input_hw=(12, 12), stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1))
    sparse = native.NativeConv(w, None, window, roi, support=support, **opts)
    full = native.NativeConv(w, None, window, roi, **opts)
    xl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(sparse(xl), full(xl), rtol=1e-5, atol=1e-5)


def _layer(c_in, c_out, k=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = random_rois_(TargetConv2d(c_in, c_out, k, padding="same", **kwargs), seed, s_range=(0.05, 0.4))
    return layer.eval()


@pytest.mark.parametrize("mode", ["dense", "blocks", "tiles", "native"])
def test_affine_relu_pool_epilogue_in_every_executor(mode):
    if mode == "native":
        require_native()
    layer = _layer(6, 20, bias=True, seed=1)
    g = torch.Generator().manual_seed(1)
    scale, shift = torch.randn(20, generator=g), torch.randn(20, generator=g)
    x = torch.randn(3, 6, 11, 13, generator=g)
    roi = layer.rois(11, 13)
    geometry = dict(in_channels=6, kernel_size=layer.kernel_size, kernel_extent=layer.kernel_extent,
                    stride=layer.stride, batch=3, cost=CostModel(channel_quantum=1, copy_cost=0.0, call_cost=0.0))
    plan = {"dense": dense_plan(20), "native": native_plan(20),
            "blocks": plan_blocks(roi, **geometry),
            "tiles": plan_tiles(roi, output_hw=(11, 13), grid=(2, 2), align=2, **geometry)}[mode]
    frozen = FrozenTargetConv2d(layer, (11, 13), plan, relu=True, pool=2, scale=scale, shift=shift)
    with torch.no_grad():
        ref = F.max_pool2d(torch.relu(layer(x) * scale[:, None, None] + shift[:, None, None]), 2)
        got = frozen(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # outside every ROI a channel is relu(shift): the consumer must not skip it
    support = frozen.output_support()
    assert bool(((support[:, 1] - support[:, 0]) == 5)[shift > 0].all())


def test_bad_scale_and_shift_are_rejected():
    layer = _layer(2, 4)
    with pytest.raises(ValueError, match="scale must be a 1-D tensor of 4"):
        FrozenTargetConv2d(layer, (8, 8), scale=torch.ones(3))
    with pytest.raises(ValueError, match="shift must be a 1-D tensor of 4"):
        FrozenTargetConv2d(layer, (8, 8), shift=torch.ones(4, 1))


@needs_native
def test_native_plan_rejects_what_it_cannot_run():
    layer = TargetConv2d(4, 4, 3, groups=2, padding="same")
    with pytest.raises(ValueError, match="groups=2"):
        FrozenTargetConv2d(layer, (8, 8), native_plan(4))
    with pytest.raises(ValueError, match="original channel order"):
        FrozenTargetConv2d(_layer(2, 4), (8, 8), native_plan(4), permute_output=True)


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(TargetConv2d(1, 24, 5, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
                        TargetConv2d(24, 20, 3, padding="same", padding_mode="reflect", bias=True), nn.ReLU(),
                        TargetConv2d(20, 8, 3, padding=1, stride=2), nn.Flatten())
    for i, m in enumerate(net):
        if isinstance(m, TargetConv2d):
            random_rois_(m, seed + i, s_range=(0.05, 0.3))
    return net.eval()


@needs_native
@pytest.mark.parametrize("batch", [1, 5])
def test_freeze_chooses_native_and_matches_eval(batch):
    net = _net()
    x = torch.rand(batch, 1, 20, 20)
    frozen = freeze(net, x, repeats=1)
    layers = [m for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)]
    if batch > 1:  # by modelled work (at batch 1 the timed choice may go either way on a busy machine)
        modelled = freeze(net, x, measure=False)
        assert any(m.plan.mode == "native" for m in modelled.modules() if isinstance(m, FrozenTargetConv2d))
    for m in layers:  # a timed native plan was faster than dense
        if m.plan.mode == "native" and "dense" in m.timings:
            assert m.timings[m.plan.label] <= m.timings["dense"]
    with torch.no_grad():
        ref, got = net(x), frozen(x)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4


@needs_native
def test_whole_map_rois_fall_back_to_dense_when_not_faster():
    layer = TargetConv2d(16, 16, 3, padding="same")  # initial windows: every ROI is the whole map
    frozen = freeze(nn.Sequential(layer), torch.rand(2, 16, 12, 12), measure=False)
    assert frozen[0].plan.mode == "dense"


def test_tkn_native_0_uses_the_pytorch_executors():
    code = (
        "import torch, sys; sys.path.insert(0, 'tests/engine'); sys.path.insert(0, 'tests')\n"
        "from tkn.engine import native, freeze, FrozenTargetConv2d\n"
        "from test_engine_native import _net\n"
        "net = _net(); x = torch.rand(2, 1, 20, 20)\n"
        "f = freeze(net, x, repeats=1)\n"
        "modes = {m.plan.mode for m in f.modules() if isinstance(m, FrozenTargetConv2d)}\n"
        "err = float((f(x) - net(x)).abs().max() / net(x).abs().max())\n"
        "print(native.available(), '|', native.reason(), '|', 'native' in modes, '|', err < 1e-4)\n"
    )
    root = Path(__file__).resolve().parents[2]
    full = dict(os.environ, PYTHONPATH=str(root), TKN_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300,
                         cwd=root, check=True).stdout
    available, why, used, exact = (s.strip() for s in out.strip().splitlines()[-1].split("|"))
    assert (available, used, exact) == ("False", "False", "True")
    assert "TKN_NATIVE=0" in why


@needs_native
def test_cache_is_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    native._reset()
    try:
        assert native.available(), native.reason()
        [directory] = [p for p in (tmp_path / "native").iterdir() if p.is_dir()]
        lib = directory / "roi_conv.so"
        good = lib.read_bytes()
        lib.unlink()  # (a new file: this process still maps the old one)
        lib.write_bytes(b"not a library")  # a truncated or damaged build
        native._reset()
        assert native.available(), native.reason()
        assert lib.read_bytes() != b"not a library"
        assert (directory / "roi_conv.sha256").read_text() == native._digest(lib)
        (directory / "roi_conv.sha256").unlink()  # an interrupted build
        native._reset()
        assert native.available() and lib.stat().st_size == len(good)
    finally:
        monkeypatch.delenv("TKN_CACHE")
        native._reset()


def _head_net(seed=0, between=()):
    torch.manual_seed(seed)
    net = nn.Sequential(TargetConv2d(2, 12, 3, padding="same"), nn.ReLU(), *between, nn.Flatten(),
                        nn.Linear(12 * 10 * 10, 7))
    random_rois_(net[0], seed, s_range=(0.05, 0.2))
    return net.eval()


@pytest.mark.parametrize("use_native", [False, True])
def test_linear_after_a_frozen_layer_reads_only_the_rois(use_native):
    if use_native:
        require_native()
    net = _head_net()
    x = torch.rand(3, 2, 10, 10)
    frozen = freeze(net, x, measure=False, native=use_native)
    sparse = [m for m in frozen.modules() if isinstance(m, FrozenSparseLinear)]
    assert len(sparse) == 1 and sparse[0].columns.numel() < 0.5 * 1200
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), net(x), rtol=1e-4, atol=1e-5)
        y = torch.randn(2, 2, 10, 10)
        torch.testing.assert_close(frozen(y), net(y), rtol=1e-4, atol=1e-5)


def test_linear_stays_dense_when_zeros_do_not_survive():
    net = _head_net(between=(nn.Sigmoid(),))  # sigmoid(0) = 0.5: every input feature is non-zero
    frozen = freeze(net, torch.rand(2, 2, 10, 10), measure=False)
    assert not any(isinstance(m, FrozenSparseLinear) for m in frozen.modules())
    with torch.no_grad():
        x = torch.rand(2, 2, 10, 10)
        torch.testing.assert_close(frozen(x), net(x), rtol=1e-4, atol=1e-5)
    frozen = freeze(_head_net(), torch.rand(2, 2, 10, 10), measure=False, input_sparsity=False)
    assert not any(isinstance(m, FrozenSparseLinear) for m in frozen.modules())


def test_sparse_linear_rejects_bad_columns():
    with pytest.raises(ValueError, match=r"columns must lie in \[0, 6\)"):
        FrozenSparseLinear(nn.Linear(6, 2), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="6 features"):
        FrozenSparseLinear(nn.Linear(6, 2), torch.tensor([1]))(torch.zeros(2, 5))


@needs_native
def test_native_plan_in_doubt_is_timed_against_dense(monkeypatch):
    monkeypatch.setattr(sys.modules["tkn.engine.freeze"], "NATIVE_SURE", 0.0)  # time every layer
    net = _net()
    x = torch.rand(2, 1, 20, 20)
    frozen = freeze(net, x, repeats=1)
    layers = [m for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)]
    assert all(set(m.timings) >= {"dense", "native", "native-batch"} for m in layers)
    for m in layers:
        fastest = min(set(m.timings) - {"dense"}, key=m.timings.__getitem__)
        faster = m.timings[fastest] <= 0.95 * m.timings["dense"]
        assert m.plan.label == (fastest if faster else "dense")
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), net(x), rtol=1e-4, atol=1e-6)


@needs_native
def test_output_buffer_is_reused_only_once_released():
    import copy
    import pickle

    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 8, 3, 3, generator=g)
    roi = torch.tensor([[0, 64, 0, 64]] * 32)
    conv = native.NativeConv(w, None, torch.ones(32, 64, 64), roi, conv_hw=(64, 64), input_hw=(64, 64),
                             stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1))  # a 1 MiB output per sample
    x1, x2 = (torch.randn(2, 8, 64, 64, generator=g).contiguous(memory_format=torch.channels_last) for _ in "ab")
    y1 = conv(x1)
    kept = y1.clone()
    y2 = conv(x2)  # y1 is still held: a new buffer
    assert y1.data_ptr() != y2.data_ptr()
    torch.testing.assert_close(y1, kept)
    ptr = y2.data_ptr()
    del y2
    y3 = conv(x2)  # released: the buffer comes back
    assert y3.data_ptr() == ptr
    torch.testing.assert_close(y3, F.conv2d(x2, w, padding=1), rtol=1e-4, atol=1e-4)
    for clone in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        torch.testing.assert_close(clone(x1), kept)


@needs_native
@pytest.mark.parametrize("channels_last", [None, False])
def test_frozen_resnet_runs_channels_last_when_native(channels_last):
    """Residual adds between native layers: the frozen model converts its input once and keeps channels_last
    everywhere (default), or stays in the model's layout when asked; the outputs are the same either way."""
    from tkn.benchmark import synthetic_rois_
    from tkn.models import create_model

    torch.manual_seed(0)
    model = synthetic_rois_(create_model("tresnet18", in_channels=3, input_size=(32, 32)), seed=1).eval()
    x = torch.rand(3, 3, 32, 32)
    frozen = freeze(model, x, measure=False, channels_last=channels_last)
    convs = [m for m in frozen.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and any(m.plan.mode == "native" for m in frozen.modules() if isinstance(m, FrozenTargetConv2d))
    expect_cl = channels_last is None
    spatial = [c for c in convs if c.kernel_size != (1, 1)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) == expect_cl for c in spatial)
    assert bool(frozen._forward_pre_hooks) == expect_cl
    with torch.no_grad():
        want = model(x)
        for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, :]):
            torch.testing.assert_close(frozen(inp), want, rtol=1e-4, atol=1e-5)


@needs_native
def test_a_library_of_another_abi_version_is_refused(monkeypatch):
    """A wrapper never calls a library built for another argument list (it falls back, saying why)."""
    built = native.ABI_VERSION
    monkeypatch.setattr(native, "ABI_VERSION", 99)
    native._reset()
    try:
        assert not native.available() and f"ABI version {built}, this tkn needs 99" in native.reason()
    finally:
        monkeypatch.undo()
        native._reset()
    assert native.available(), native.reason()


@needs_native
@pytest.mark.parametrize("pool", [1, 2])
def test_native_plan_strategy_reaches_the_kernel(pool):
    """Each lane strategy of a native plan runs as itself (also through the pool alignment) and equals dense."""
    layer = _layer(native.vector_width(), 20, seed=pool)
    x = torch.rand(5, native.vector_width(), 10, 10)
    dense = FrozenTargetConv2d(layer, (10, 10), dense_plan(20), relu=True, pool=pool)
    for strategy in native.STRATEGIES:
        fl = FrozenTargetConv2d(layer, (10, 10), native_plan(20, strategy), relu=True, pool=pool)
        assert fl.plan.strategy == fl._native.strategy == strategy
        assert fl.plan.label == ("native" if strategy == "groups" else f"native-{strategy}")
        with torch.no_grad():
            torch.testing.assert_close(fl(x), dense(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="strategy must be one of 'groups', 'batch', 'reduce', got 'lanes'"):
        native_plan(20, "lanes")
    with pytest.raises(ValueError, match=f"'reduce' strategy needs input channels in multiples of "
                                         f"{native.vector_width()}, got 3"):
        FrozenTargetConv2d(_layer(3, 20), (10, 10), native_plan(20, "reduce"))
    with pytest.raises(ValueError, match="residual addition is fused by the 'groups' strategy only"):
        FrozenTargetConv2d(layer, (10, 10), native_plan(20, "batch"), residual=True)


@needs_native
def test_frozen_layer_calls_its_kernel_directly_only_where_the_operator_would_agree():
    """Inference calls the packed kernel without the operator's dispatch; a gradient to record, buffers changed
    in place or replaced by other values go through ``torch.ops.tkn.roi_conv2d`` (which repacks)."""
    import copy
    import pickle

    layer = _layer(native.vector_width(), 20, seed=3)
    fl = FrozenTargetConv2d(layer, (10, 10), native_plan(20, "reduce"), relu=True, pool=2)
    x = torch.rand(3, native.vector_width(), 10, 10)
    dense = FrozenTargetConv2d(layer, (10, 10), dense_plan(20), relu=True, pool=2)
    with torch.no_grad():
        assert fl._direct_native(x, None) is fl._native
        op = torch.ops.tkn.roi_conv2d(x, *fl._op_arguments(), None, *map(list, fl._op_geometry[:3]),
                                      *fl._op_geometry[3:6])
        assert torch.equal(fl(x), op)
        torch.testing.assert_close(fl(x), dense(x), rtol=1e-4, atol=1e-5)
    # copies, pickles and memory-format conversions keep the direct call; a conversion to other values does not
    for other in (copy.deepcopy(fl), pickle.loads(pickle.dumps(fl)), copy.deepcopy(fl).to(
            memory_format=torch.channels_last)):
        assert other._direct_native(x, None) is other._native
    assert copy.deepcopy(fl).double()._direct_native(x, None) is None
    # a gradient to record: the operator and its autograd formula
    xg = x.clone().requires_grad_()
    assert fl._direct_native(xg, None) is None
    assert fl(xg).grad_fn is not None
    # buffers changed in place: the operator repacks them
    with torch.no_grad():
        fl.weight.mul_(2)
        dense.weight.mul_(2)
        assert fl._direct_native(x, None) is None
        torch.testing.assert_close(fl(x), dense(x), rtol=1e-4, atol=1e-5)


@needs_native
@pytest.mark.parametrize("strategy", native.STRATEGIES)
def test_frozen_learned_windows_equal_eval_with_every_strategy(strategy, monkeypatch):
    """Windows that `tkn train` learned (small, scattered ROIs; tkn.windowfile), every layer forced onto one
    lane strategy where it applies: the frozen model equals eval at batch 1, an odd batch and a batch of
    several vectors."""
    from tkn.windowfile import load_windows

    monkeypatch.setattr(sys.modules["tkn.engine.freeze"], "NATIVE_MODELLED", float("inf"))  # never dense
    model, shape, _ = load_windows("tkn6-mnist-12.9x")
    x = torch.rand(33, *shape, generator=torch.Generator().manual_seed(1))
    frozen = freeze(model, x, native=(strategy,), measure=False)
    layers = [m for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)]
    runs = [m.plan.strategy == strategy for m in layers if not native.strategy_unsupported(strategy, m.in_channels)]
    assert runs and all(runs)
    with torch.no_grad():
        for batch in (1, 7, 33):
            ref = model(x[:batch])
            torch.testing.assert_close(frozen(x[:batch]), ref, rtol=1e-4, atol=1e-5)


@needs_native
def test_freeze_backends_choose_the_executors():
    net = _net()
    x = torch.rand(3, 1, 20, 20)
    modes = {}
    for backend in ("native", "torch"):
        frozen = freeze(net, x, backend=backend, measure=False)
        modes[backend] = {m.plan.mode for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)}
        with torch.no_grad():
            torch.testing.assert_close(frozen(x), net(x), rtol=1e-4, atol=1e-6)
    assert "native" in modes["native"] and "native" not in modes["torch"]
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'native', 'triton', 'torch', got 'cuda'"):
        freeze(net, x, backend="cuda")
    with pytest.raises(ValueError, match="backend='native' with native=False"):
        freeze(net, x, backend="native", native=False)


@pytest.mark.parametrize("use_native", [False, True])
def test_one_channel_maps_keep_plain_strides(use_native):
    """A frozen layer with one output channel returns plain NCHW strides (not channels_last ones: PyTorch's CPU
    convolution returned garbage rows for such one-channel inputs at horizontal stride 2 and output width 1),
    and a channels_last frozen model leaves one-channel weights as they are."""
    if use_native:
        require_native()
    torch.manual_seed(0)
    net = nn.Sequential(TargetConv2d(16, 1, 3, padding=1), nn.Conv2d(1, 3, (1, 6), stride=(1, 2)), nn.ReLU(),
                        TargetConv2d(3, 1, 1))
    for i, m in enumerate(m for m in net if isinstance(m, TargetConv2d)):
        random_rois_(m, i, s_range=(0.1, 0.3))
    net = net.eval()
    x = torch.randn(5, 16, 5, 7)
    frozen = freeze(net, x[:1], measure=False, native=use_native, candidates=[CostModel(1, 0.0, 0.0)], grids=())
    assert frozen[0].plan.mode == ("native" if use_native else "blocks")
    with torch.no_grad():
        y = frozen[0](x.contiguous(memory_format=torch.channels_last))
        assert y.stride() == (35, 35, 7, 1)
        assert frozen[1].weight.stride() == (6, 6, 6, 1)
        for batch in (1, 3, 5):
            torch.testing.assert_close(frozen(x[:batch]), net(x[:batch]), rtol=1e-4, atol=1e-5)


@needs_native
def test_plain_convolution_of_one_channel_gets_plain_strides():
    """In a channels_last frozen model a plain convolution returning one channel hands on channels_last strides;
    the next one-channel convolution receives them as plain NCHW strides (a pre-hook; the same memory)."""
    torch.manual_seed(0)
    net = nn.Sequential(TargetConv2d(16, 4, 3, padding=1), nn.Conv2d(4, 1, 1), nn.Conv2d(1, 2, (1, 6), stride=(1, 2)))
    random_rois_(net[0], 0, s_range=(0.05, 0.2))
    net = net.eval()
    x = torch.randn(5, 16, 5, 7)
    frozen = freeze(net, x[:1], measure=False)
    assert frozen[0].plan.mode == "native" and frozen._forward_pre_hooks  # a channels_last model
    seen = []
    frozen[2].register_forward_pre_hook(lambda m, args: seen.append(args[0].stride()))
    with torch.no_grad():
        for batch in (1, 3, 5):
            torch.testing.assert_close(frozen(x[:batch]), net(x[:batch]), rtol=1e-4, atol=1e-5)
    assert seen == [(35, 35, 7, 1)] * 3
