"""Windows, clipping and ROIs against the float64 references of tests/reference.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tkn
from tkn import functional as TF
from reference import clip_ref, roi_ref, window_ref


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
