"""Windows, clipping and ROIs against the float64 references of tests/reference.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tkn
from tkn import functional as TF
from reference import clip_ref, input_sparse_macs_ref, roi_ref, window_ref


@pytest.mark.parametrize("kind", ["gaussian", "cauchy"])
@pytest.mark.parametrize("length", [1, 2, 7, 28, 33])
def test_window_matches_formula(kind, length):
    g = torch.Generator().manual_seed(length)
    m = torch.rand(6, generator=g, dtype=torch.float64) * 1.4 - 0.2
    s = torch.rand(6, generator=g, dtype=torch.float64) * 2 + 0.05
    got = tkn.window(length, m, s, kind)
    assert got.shape == (6, length) and got.dtype == torch.float64
    for c in range(6):
        np.testing.assert_allclose(got[c].numpy(), window_ref(length, m[c].item(), s[c].item(), kind), rtol=1e-12)


def test_window_initialisation_values():
    # m = 0.5, s = 1: 1 at the centre, f(z = 1) at the borders (z = 0.5 / 0.5 = 1 at x = 0 and x = 1).
    w = tkn.window(1001, torch.tensor([0.5]), torch.tensor([1.0]), "cauchy")[0]
    assert w[500].item() == pytest.approx(1.0)
    assert w[0].item() == pytest.approx(0.5, abs=2e-3)
    g = tkn.window(1001, torch.tensor([0.5]), torch.tensor([1.0]), "gaussian")[0]
    assert g[0].item() == pytest.approx(math.exp(-0.5), abs=2e-3)


def test_window_accepts_lists_and_case():
    a = tkn.window(5, [0.3, 0.6], [0.5, 1.0], "Gaussian")
    b = tkn.window(5, torch.tensor([0.3, 0.6]), torch.tensor([0.5, 1.0]), "gaussian")
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((5, [0.5], [1.0], "laplace"), ValueError, "window must be one of"),
        ((0, [0.5], [1.0], "cauchy"), ValueError, "length must be a positive int"),
        ((5, [[0.5]], [[1.0]], "cauchy"), ValueError, r"shape \(C,\)"),
        ((5, [0.5, 0.2], [1.0], "cauchy"), ValueError, r"shape \(C,\)"),
        ((5, torch.tensor([1]), torch.tensor([1]), "cauchy"), TypeError, "floating point"),
    ],
)
def test_window_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        tkn.window(*args)


def test_window_gradcheck():
    m = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.4, 1.3], dtype=torch.float64, requires_grad=True)
    for kind in TF.WINDOWS:
        assert torch.autograd.gradcheck(lambda m, s: tkn.window(9, m, s, kind), (m, s))


@pytest.mark.parametrize("size", [(7, 7), (8, 13), (28, 28), (5, 31)])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (5, 3)])
def test_rois_and_clipping_match_reference(size, kernel):
    g = torch.Generator().manual_seed(size[0] * 100 + size[1] + kernel[0])
    c = 40
    m = torch.rand(c, 2, generator=g) * 1.6 - 0.3          # some outside [0, 1]
    s = torch.rand(c, 2, generator=g) ** 2 * 5.0 + 1e-4     # some tiny, some above SCALE_MAX
    got = TF.rois(m, s, size, kernel)
    mc, sc = TF.clip_params(m.double(), s.double(), size, kernel)
    assert got.dtype == torch.int64 and got.shape == (c, 4)
    for ch in range(c):
        for axis in range(2):
            mr, sr = clip_ref(m[ch, axis].item(), s[ch, axis].item(), kernel[axis], size[axis], TF.SCALE_MAX)
            assert mc[ch, axis].item() == pytest.approx(mr, abs=1e-15)
            assert sc[ch, axis].item() == pytest.approx(sr, abs=1e-15)
            lo, hi = roi_ref(mr, sr, size[axis])
            assert got[ch, 2 * axis].item() == lo and got[ch, 2 * axis + 1].item() == hi
            # before it is cut at the map's border, an ROI is never narrower than the kernel
            raw = math.ceil((mr + sr / math.sqrt(2)) * size[axis]) - math.floor((mr - sr / math.sqrt(2)) * size[axis])
            assert raw >= kernel[axis]


def test_roi_at_initialisation_covers_the_map():
    m = torch.full((3, 2), 0.5)
    s = torch.ones(3, 2)
    for size in [(1, 1), (2, 9), (28, 28), (57, 31)]:
        assert TF.rois(m, s, size, (3, 3)).tolist() == [[0, size[0], 0, size[1]]] * 3


def test_roi_mask_is_the_rectangle():
    roi = torch.tensor([[1, 3, 0, 2], [0, 4, 2, 5], [2, 2, 0, 5]])
    mask = TF.roi_mask(roi, 4, 5)
    expected = np.zeros((3, 4, 5), bool)
    expected[0, 1:3, 0:2] = True
    expected[1, 0:4, 2:5] = True
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_roi_macs_match_a_naive_count():
    """Every pixel of every ROI (empty and inverted ones included) costs in/groups x kH x kW MACs."""
    g = torch.Generator().manual_seed(5)
    roi = torch.randint(0, 9, (30, 4), generator=g)  # some with hi <= lo: empty
    for in_per_group, kernel in [(1, (1, 1)), (3, (3, 3)), (8, (5, 3))]:
        per_channel = []
        for y0, y1, x0, x1 in roi.tolist():
            pixels = sum(1 for y in range(y0, y1) for x in range(x0, x1))
            per_channel.append(pixels * in_per_group * kernel[0] * kernel[1])
        assert TF.roi_macs(roi, in_per_group, kernel) == sum(per_channel)
        assert (TF.roi_areas(roi) * in_per_group * kernel[0] * kernel[1]).tolist() == per_channel
        assert TF.roi_areas(roi).tolist() == TF.roi_mask(roi.clamp(0, 9), 9, 9).sum((1, 2)).tolist()
    assert TF.roi_macs(torch.zeros(0, 4, dtype=torch.int64), 3, (3, 3)) == 0


def test_clip_passes_gradient_inside_and_stops_outside():
    m = torch.tensor([[0.5, 1.5]], requires_grad=True)
    s = torch.tensor([[0.5, 1e-6]], requires_grad=True)
    mc, sc = TF.clip_params(m, s, (10, 10), (3, 3))
    (mc.sum() + sc.sum()).backward()
    assert m.grad.tolist() == [[1.0, 0.0]]
    assert s.grad.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    "padding, stride, expected",
    [
        ("same", (1, 1), (1, 1, 1, 1)),
        ("valid", (2, 2), (0, 0, 0, 0)),
        (2, (1, 1), (2, 2, 2, 2)),
        ((1, 3), (2, 1), (3, 3, 1, 1)),
    ],
)
def test_resolve_padding(padding, stride, expected):
    assert TF.resolve_padding(padding, (3, 3), stride, (1, 1)) == expected


def test_same_padding_even_kernel_is_asymmetric_like_torch():
    # PyTorch puts the odd pixel of 'same' padding on the right/bottom.
    assert TF.resolve_padding("same", (4, 2), (1, 1), (1, 1)) == (0, 1, 1, 2)
    x = torch.randn(1, 1, 6, 7)
    w = torch.randn(1, 1, 4, 2)
    ref = torch.nn.functional.conv2d(x, w, padding="same")
    ours = torch.nn.functional.conv2d(TF.pad_input(x, (0, 1, 1, 2), "zeros"), w)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    "padding, stride, match",
    [
        ("same", (2, 2), "padding='same' requires stride 1"),
        ("full", (1, 1), "padding must be"),
        (-1, (1, 1), "padding must be"),
        ((1, 2, 3), (1, 1), "padding must be"),
    ],
)
def test_resolve_padding_errors(padding, stride, match):
    with pytest.raises(ValueError, match=match):
        TF.resolve_padding(padding, (3, 3), stride, (1, 1))


def _random_boxes(g: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    ys = torch.randint(0, h + 1, (n, 2), generator=g).sort(1).values
    xs = torch.randint(0, w + 1, (n, 2), generator=g).sort(1).values
    return torch.cat([ys, xs], 1)


@pytest.mark.parametrize("seed", range(8))
def test_input_sparse_macs_matches_the_product_count(seed):
    """Every geometry the engine runs (strides, dilations, pads, a pooled extent, empty boxes) against the count
    of products one by one."""
    g = torch.Generator().manual_seed(seed)
    kernel = tuple(int(v) for v in torch.randint(1, 4, (2,), generator=g))
    stride = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=g))
    dilation = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=g))
    pad = tuple(int(v) for v in torch.randint(0, 3, (2,), generator=g))
    h, w = 9, 8
    ho = (h + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    roi, support = _random_boxes(g, 5, ho, wo), _random_boxes(g, 4, h, w)
    extent = (ho - seed % 2, wo)
    got = TF.input_sparse_macs(roi, support, kernel, stride=stride, dilation=dilation, pad=pad, extent=extent)
    assert got.dtype == torch.float64
    assert int(got) == input_sparse_macs_ref(roi.tolist(), support.tolist(), kernel, stride, dilation, pad, extent)


@pytest.mark.parametrize("pool", [1, 2, 3])
def test_pooled_rois_bound_the_pooled_cells_a_roi_reaches(pool):
    """Against the pool run on the ROI masks: the box is the bounding box of the pooled cells that read a ROI
    pixel (the map cut to whole pool windows, as a max pool of stride ``pool`` does), empty boxes for empty
    ROIs."""
    g = torch.Generator().manual_seed(pool)
    h, w = 11, 9
    roi = torch.cat([_random_boxes(g, 12, h, w), torch.tensor([[3, 3, 0, 9], [0, 11, 5, 5]])])
    hp, wp = h // pool, w // pool
    got = TF.pooled_rois(roi, pool, hp, wp)
    cells = torch.nn.functional.max_pool2d(TF.roi_mask(roi, h, w).float()[:, None], pool)[:, 0] > 0
    for box, cell in zip(got.tolist(), cells):
        rows, cols = cell.any(1).nonzero().flatten(), cell.any(0).nonzero().flatten()
        expected = ([int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1] if len(rows) else None)
        if expected is None:  # nothing reached (an empty ROI, or one in the rows the pool drops): an empty box
            assert box[1] <= box[0] or box[3] <= box[2]
        else:
            assert box == expected


def test_input_sparse_macs_with_whole_supports_is_the_roi_count():
    g = torch.Generator().manual_seed(3)
    roi = _random_boxes(g, 6, 7, 7)
    whole = torch.tensor([[0, 7, 0, 7]]).expand(5, 4)
    # a 1x1 kernel never reads the pad: every product is counted
    assert int(TF.input_sparse_macs(roi, whole, (1, 1))) == TF.roi_macs(roi, 5, (1, 1))
    # a 3x3 kernel reads the pad at the border only
    inner = torch.tensor([[1, 6, 1, 6], [2, 4, 3, 5]])
    assert int(TF.input_sparse_macs(inner, whole, (3, 3), pad=(1, 1))) == TF.roi_macs(inner, 5, (3, 3))
    assert int(TF.input_sparse_macs(roi, whole, (3, 3), pad=(1, 1))) <= TF.roi_macs(roi, 5, (3, 3))


def test_input_sparse_macs_continuous_is_differentiable():
    """With real box ends (the budget's surrogate): the integer count at integer ends (stride 1), and gradients
    that gradcheck confirms away from the kinks."""
    roi = torch.tensor([[1, 6, 0, 5], [2, 3, 2, 7]])
    support = torch.tensor([[0, 4, 1, 6], [3, 7, 0, 2], [4, 6, 0, 7]])
    exact = TF.input_sparse_macs(roi, support, (3, 3), pad=(1, 1))
    soft = TF.input_sparse_macs(roi.double(), support.double(), (3, 3), pad=(1, 1), integer=False)
    assert float(soft) == float(exact)
    r = (roi.double() + 0.3).requires_grad_()
    s = (support.double() + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: TF.input_sparse_macs(a, b, (3, 3), pad=(1, 1), integer=False), (r, s))
    grad_r, = torch.autograd.grad(TF.input_sparse_macs(r, support.double(), (3, 3), pad=(1, 1), integer=False), r)
    assert bool((grad_r[:, [1, 3]] >= 0).all()) and bool((grad_r[:, [0, 2]] <= 0).all())  # wider ROIs cost more


def test_input_sparse_macs_rejects_bad_boxes():
    with pytest.raises(ValueError, match=r"roi and support must be \(C, 4\) boxes, got \(4,\) and \(1, 4\)"):
        TF.input_sparse_macs(torch.tensor([0, 1, 0, 1]), torch.tensor([[0, 1, 0, 1]]), (3, 3))
