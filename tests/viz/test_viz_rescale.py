"""Resolution transfer (paper section 5): windows and ROIs at new sizes, frozen models at new sizes, score maps."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tkn
from tkn.rescale import attention_at, grid_positions, rois_at, score_map


def direct_windows(layer: tkn.TargetConv2d, h: int, w: int) -> torch.Tensor:
    """F_att at h x w from the docs/semantics.md formulas: clip by hand, then tkn.window per axis, outer product."""
    ky, kx = layer.kernel_extent
    m = layer.m.detach().to(torch.float64).clamp(0, 1)
    s = layer.s.detach().to(torch.float64)
    lo_y, lo_x = ky / (math.sqrt(2) * h), kx / (math.sqrt(2) * w)
    s_y = s[:, 0].clamp(lo_y, max(4.0, lo_y))
    s_x = s[:, 1].clamp(lo_x, max(4.0, lo_x))
    fy = tkn.window(h, m[:, 0], s_y, layer.window)
    fx = tkn.window(w, m[:, 1], s_x, layer.window)
    return fy[:, :, None] * fx[:, None, :]


def direct_rois(layer: tkn.TargetConv2d, h: int, w: int) -> list[list[int]]:
    """ROIs at h x w by the docs/semantics.md rule, in plain Python floats."""
    ky, kx = layer.kernel_extent
    out = []
    for (my, mx), (sy, sx) in zip(layer.m.tolist(), layer.s.tolist()):
        row = []
        for m, s, n, k in ((my, sy, h, ky), (mx, sx, w, kx)):
            m = min(max(m, 0.0), 1.0)
            s = min(max(s, k / (math.sqrt(2) * n)), max(4.0, k / (math.sqrt(2) * n)))
            row += [max(0, math.floor((m - s / math.sqrt(2)) * n)), min(n, math.ceil((m + s / math.sqrt(2)) * n))]
        out.append(row)
    return out


@pytest.fixture
def layer() -> tkn.TargetConv2d:
    layer = tkn.TargetConv2d(2, 4, 3)
    with torch.no_grad():
        layer.m.copy_(torch.tensor([[0.2, 0.7], [0.5, 0.5], [1.2, -0.1], [0.9, 0.35]]))
        layer.s.copy_(torch.tensor([[0.3, 0.2], [0.05, 0.6], [0.4, 5.0], [0.25, 0.1]]))
    return layer


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (56, 56), (112, 40), (9, 31)])
def test_windows_at_a_new_size_equal_direct_windows(layer, size):
    got = attention_at(layer, *size)
    assert got.shape == (4, *size)
    torch.testing.assert_close(got.to(torch.float64), direct_windows(layer, *size), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (56, 56), (112, 40)])
def test_rois_at_a_new_size_equal_direct_rois(layer, size):
    assert rois_at(layer, *size).tolist() == direct_rois(layer, *size)


def test_relative_windows_cover_the_same_fraction(layer):
    # Channel 0 is well above its clip at both sizes: doubling the map doubles its ROI (up to pixel snapping).
    small, big = rois_at(layer, 28, 28)[0].tolist(), rois_at(layer, 56, 56)[0].tolist()
    assert all(abs(2 * a - b) <= 1 for a, b in zip(small, big))
    # Sampled windows at 56 agree with the 28 ones at the matching pixel centres up to sampling.
    f28, f56 = attention_at(layer, 28, 28)[0], attention_at(layer, 56, 56)[0]
    assert torch.allclose(f28, nn.functional.avg_pool2d(f56[None, None], 2)[0, 0], atol=0.05)


def test_attention_at_rejects_bad_input(layer):
    with pytest.raises(ValueError, match="height"):
        attention_at(layer, 0, 5)
    with pytest.raises(TypeError, match="TargetConv2d"):
        attention_at(nn.Conv2d(1, 1, 3), 5, 5)


def test_freeze_at_a_new_size(small_tkn):
    """freeze(..., input_size=) plans for another resolution; it computes what the model computes there."""
    example = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    frozen = tkn.freeze(small_tkn, example, input_size=(24, 40))
    x = torch.rand(3, 1, 24, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), small_tkn(x), rtol=1e-5, atol=1e-5)


def test_score_map_equals_per_crop_outputs(small_tkn):
    image = torch.rand(1, 37, 45, generator=torch.Generator().manual_seed(2))
    got = score_map(small_tkn, image, 16, stride=(7, 5), batch_size=4)
    ys, xs = grid_positions((37, 45), 16, (7, 5))
    assert ys.tolist() == [0, 7, 14, 21] and xs.tolist() == [0, 5, 10, 15, 20, 25]
    assert got.shape == (5, 4, 6)
    with torch.no_grad():
        for i, y in enumerate(ys.tolist()):
            for j, x in enumerate(xs.tolist()):
                expected = small_tkn(image[None, :, y:y + 16, x:x + 16])[0]
                torch.testing.assert_close(got[:, i, j], expected, rtol=1e-5, atol=1e-6)


def test_score_map_with_a_frozen_model_and_rectangular_windows(small_tkn):
    image = torch.rand(1, 30, 30, generator=torch.Generator().manual_seed(3))
    frozen = tkn.freeze(small_tkn, torch.zeros(1, 1, 16, 12))
    got = score_map(frozen, image[None], (16, 12), stride=7)
    assert got.shape == (5, 3, 3)
    with torch.no_grad():
        expected = small_tkn(image[None, :, 14:30, 7:19])[0]
    torch.testing.assert_close(got[:, 2, 1], expected, rtol=1e-5, atol=1e-5)


def test_score_map_errors(small_tkn):
    with pytest.raises(ValueError, match="larger than the image"):
        score_map(small_tkn, torch.rand(1, 10, 10), 16)
    with pytest.raises(ValueError, match="image"):
        score_map(small_tkn, torch.rand(2, 1, 20, 20), 16)
    with pytest.raises(TypeError, match="floating"):
        score_map(small_tkn, torch.zeros(1, 20, 20, dtype=torch.int64), 16)
    with pytest.raises(ValueError, match="stride"):
        score_map(small_tkn, torch.rand(1, 20, 20), 16, stride=0)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        score_map(nn.Identity(), torch.rand(1, 20, 20), 16)
