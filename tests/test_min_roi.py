"""``min_roi``: ROIs narrower than the kernel, against the float64 reference, in every execution and the counter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tkn
from reference import target_conv2d_ref
from tkn.budget import max_speedup
from tkn.models import create_model


def _narrow(layer, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.m.copy_(torch.rand(layer.m.shape, generator=g, dtype=torch.float64).to(layer.m.dtype))
        layer.s.copy_((torch.rand(layer.s.shape, generator=g, dtype=torch.float64) * 0.1 + 0.01).to(layer.s.dtype))
    return layer


@pytest.mark.parametrize("min_roi", [1, 2, 3])
@pytest.mark.parametrize("execution", ["dense", "sliced", "fast"])
def test_narrow_rois_read_the_whole_halo(min_roi, execution):
    layer = _narrow(tkn.TargetConv2d(3, 16, 5, min_roi=min_roi, dtype=torch.float64), seed=min_roi)
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64)
    ref, ref_rois = target_conv2d_ref(x.numpy(), layer.weight.detach().numpy(), layer.m.detach().numpy(),
                                      layer.s.detach().numpy(), "cauchy", padding=(2, 2, 2, 2), min_roi=min_roi)
    rois = layer.rois(13, 11)
    assert rois.tolist() == [list(r) for r in ref_rois]
    widths = torch.cat([rois[:, 1] - rois[:, 0], rois[:, 3] - rois[:, 2]])
    assert int(widths.min()) < 5, "the scales chosen must give ROIs narrower than the 5x5 kernel"
    layer.execution = execution
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_min_roi_sets_the_scale_floor():
    layer = tkn.TargetConv2d(1, 2, 5, min_roi=2)
    assert layer.roi_floor == (2, 2)
    assert tkn.TargetConv2d(1, 2, 5, dilation=2).roi_floor == (9, 9)
    with torch.no_grad():
        layer.s.fill_(1e-6)
    _, s = layer.clipped(20, 10)
    torch.testing.assert_close(s[0], torch.tensor([2 / (2 ** 0.5 * 20), 2 / (2 ** 0.5 * 10)]))
    assert "min_roi=2" in repr(layer)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_min_roi_is_validated(bad):
    with pytest.raises(ValueError, match="min_roi must be None"):
        tkn.TargetConv2d(1, 2, 3, min_roi=bad)
    with pytest.raises(ValueError, match="min_roi must be None"):
        tkn.targetize(nn.Conv2d(1, 2, 3), min_roi=bad)


def test_targetize_and_builders_pass_min_roi():
    net = tkn.targetize(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2)),
                        min_roi=2)
    assert [layer.min_roi for _, layer in tkn.target_layers(net)] == [2, 2]
    for name in ("tkn6", "tdn10", "tstn", "tresnet18"):
        kwargs = {"in_channels": 3, "input_size": 32, "num_classes": 43} if name == "tstn" else {}
        model = create_model(name, min_roi=1, **kwargs)
        assert {layer.min_roi for _, layer in tkn.target_layers(model)} == {1}
        assert model.spec["kwargs"]["min_roi"] == 1


@pytest.mark.parametrize("min_roi,size", [(None, 28), (3, 28), (2, 28), (1, 56)])
def test_every_scale_at_its_floor_gives_floor_wide_rois_up_to_rounding(min_roi, size):
    """At the floor an ROI spans exactly ``k`` pixels only when its ends fall on pixel borders (floating point
    decides there); otherwise ``k + 1``. The counter agrees with those widths, and never beats ``max_speedup``."""
    model = create_model("tkn6", input_size=size, min_roi=min_roi)
    top = max_speedup(model, (1, size, size))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in tkn.target_layers(model):
            layer.m.copy_(torch.rand(layer.m.shape, generator=g) * 0.5 + 0.25)
            layer.s.fill_(1e-4)  # clipped up to the floor
    report = tkn.flops.count(model, (1, size, size))
    fixed = report.dense_macs - sum(r.dense_macs for r in report.layers if r.roi_fraction is not None)
    by_width = fixed
    for (_, layer), hw in zip(tkn.target_layers(model), [size, size // 2, size // 4]):
        roi = layer.rois(hw, hw)
        wy, wx = roi[:, 1] - roi[:, 0], roi[:, 3] - roi[:, 2]
        k = layer.roi_floor[0]
        assert set(wy.tolist()) <= {k, k + 1} and set(wx.tolist()) <= {k, k + 1}
        by_width += int((wy * wx).sum()) * layer.in_channels * 25
    assert report.macs == by_width
    assert report.dense_macs / report.macs <= top


def test_max_speedup_by_hand_for_tkn6():
    # CNN6 at 28x28: conv1 1->256 on 28x28, conv2 256->256 on 14x14, conv3 256->128 on 7x7 (5x5 kernels), FC rest
    fc = 128 * 7 * 7 * 328 + 328 * 192 + 192 * 10
    dense = 256 * 28 * 28 * 25 + 256 * 14 * 14 * 256 * 25 + 128 * 7 * 7 * 256 * 25 + fc
    floor = 256 * 9 * 25 + 256 * 9 * 256 * 25 + 128 * 9 * 256 * 25 + fc  # every ROI 3x3
    assert max_speedup(create_model("tkn6", input_size=28, min_roi=3), (1, 28, 28)) == pytest.approx(dense / floor)
