"""FrozenTargetConv2d: the block and tile executors compute the target layer's values (float64 loops, eval).

Both executions of a block are covered: ``unfold`` + matmul when ``C_in × kH × kW <= GEMM_MAX_K`` (2 or 1
input channels below) and the ``channels_last`` crop convolution otherwise.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tkn import functional as TF
from tkn.engine import FrozenTargetConv2d
from tkn.engine.modules import GEMM_MAX_K
from tkn.ops.plan import CostModel, dense_plan, plan_blocks, plan_tiles
from tkn.layers import TargetConv2d
from helpers_engine import FINE, random_rois_
from reference import target_conv2d_ref

KINDS = ["blocks", "tiles"]


def _plan(layer: TargetConv2d, hw, cost=FINE, batch=2, kind="blocks", align=1):
    out_hw = layer.output_size(*hw)
    roi = layer.rois(*out_hw)
    geometry = dict(in_channels=layer.in_channels // layer.groups, kernel_size=layer.kernel_size,
                    kernel_extent=layer.kernel_extent, stride=layer.stride, batch=batch, cost=cost)
    if kind == "dense":
        return dense_plan(layer.out_channels)
    if kind == "tiles":
        return plan_tiles(roi, output_hw=out_hw, grid=(2, 3), align=align, **geometry)
    return plan_blocks(roi, **geometry)


def _check(layer: TargetConv2d, x: torch.Tensor, cost=FINE, kind="blocks") -> FrozenTargetConv2d:
    layer.eval()
    frozen = FrozenTargetConv2d(layer, tuple(x.shape[-2:]), _plan(layer, x.shape[-2:], cost, x.shape[0], kind))
    assert frozen.plan.mode == kind
    with torch.no_grad():
        ref, out = layer(x), frozen(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * (ref.abs().max().item() if ref.numel() else 1.0))
    return frozen


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("in_channels", [2, 5])
@pytest.mark.parametrize("window", ["cauchy", "gaussian"])
def test_matches_float64_loops_at_the_borders(window, in_channels, kind):
    """Kernel halo read from the input: exact values at ROI borders and map borders, zero outside the ROIs."""
    layer = random_rois_(TargetConv2d(in_channels, 5, 3, window=window).double(), seed=3, s_range=(0.1, 0.4))
    x = torch.randn(2, in_channels, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    frozen = FrozenTargetConv2d(layer, (9, 7), _plan(layer, (9, 7), kind=kind))
    assert frozen._gemm == (in_channels * 9 <= GEMM_MAX_K)
    expected, rois = target_conv2d_ref(x.numpy(), layer.weight.detach().numpy(), layer.m.detach().numpy(),
                                       layer.s.detach().numpy(), window, padding=(1, 1, 1, 1))
    assert len(frozen.blocks) > 1
    assert any(r[0] > 0 or r[2] > 0 for r in rois) and any(r[1] < 9 or r[3] < 7 for r in rois)
    with torch.no_grad():
        np.testing.assert_allclose(frozen(x).numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("hw", [(11, 13), (8, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_eval_over_random_rois(kernel, hw, seed, kind):
    torch.manual_seed(seed)
    layer = random_rois_(TargetConv2d(6, 24, kernel), seed=seed)
    _check(layer, torch.randn(3, 6, *hw), kind=kind)


@pytest.mark.parametrize("kwargs", [
    {"stride": 2, "padding": 1},
    {"dilation": 2},
    {"padding": "valid"},
    {"padding": (0, 2)},
    {"bias": True},
    {"padding_mode": "reflect"},
    {"kernel_size": (3, 5)},
])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("in_channels", [2, 4])  # 2 x 3 x 5 <= GEMM_MAX_K: matmul; 4 channels: convolution
def test_geometry_options(kwargs, in_channels, kind):
    kwargs = {"kernel_size": 3, **kwargs}
    layer = random_rois_(TargetConv2d(in_channels, 12, **kwargs), seed=5)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    _check(layer, torch.randn(2, in_channels, 13, 10), kind=kind)


def test_groups_fall_back_to_dense_plan():
    layer = random_rois_(TargetConv2d(4, 8, 3, groups=2), seed=2).eval()
    x = torch.randn(2, 4, 9, 9)
    frozen = FrozenTargetConv2d(layer, (9, 9))
    assert frozen.plan.mode == "dense"
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), layer(x), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        FrozenTargetConv2d(layer, (9, 9), _plan(layer, (9, 9)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [0, 1, 16])
def test_batch_sizes_and_cost_models(batch, kind):
    layer = random_rois_(TargetConv2d(8, 32, 3), seed=7)
    x = torch.randn(batch, 8, 15, 15)
    for cost in (FINE, CostModel(), CostModel(channel_quantum=16, call_cost=1e8)):
        _check(layer, x, cost, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("in_channels", [1, 5])
def test_non_contiguous_and_channels_last_inputs(in_channels, kind):
    layer = random_rois_(TargetConv2d(in_channels, 16, 3), seed=9)
    base = torch.randn(2, in_channels, 12, 14)
    _check(layer, base.transpose(2, 3).contiguous().transpose(2, 3), kind=kind)  # odd strides
    _check(layer, base.contiguous(memory_format=torch.channels_last), kind=kind)
    _check(layer, torch.randn(2, in_channels, 24, 14)[:, :, ::2], kind=kind)  # a strided view


@pytest.mark.parametrize("kind", ["dense", *KINDS])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("pool", [1, 2, 3])
@pytest.mark.parametrize("in_channels", [1, 6])
def test_fused_relu_and_max_pool(kind, relu, pool, in_channels):
    """The epilogue equals max_pool2d(relu(layer(x))), odd map sizes included (the pool drops the remainder)."""
    layer = random_rois_(TargetConv2d(in_channels, 20, 3, bias=True), seed=pool).eval()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, in_channels, 13, 11)
    plan = _plan(layer, (13, 11), kind=kind, align=pool)
    frozen = FrozenTargetConv2d(layer, (13, 11), plan, relu=relu, pool=pool)
    with torch.no_grad():
        ref = layer(x)
        ref = F.relu(ref) if relu else ref
        ref = F.max_pool2d(ref, pool) if pool > 1 else ref
        out = frozen(x)
    assert out.shape == ref.shape == (3, 20, 13 // pool, 11 // pool)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    if kind != "dense" and pool > 1:
        assert all(b.y0 % pool == 0 and b.x0 % pool == 0 and b.y1 % pool == 0 and b.x1 % pool == 0
                   for b in frozen.blocks)


def test_bad_epilogue_and_tile_options_are_rejected():
    layer = random_rois_(TargetConv2d(3, 8, 3), seed=0)
    with pytest.raises(ValueError, match="pool must be a positive int"):
        FrozenTargetConv2d(layer, (8, 8), pool=0)
    with pytest.raises(ValueError, match="larger than the layer's output"):
        FrozenTargetConv2d(layer, (4, 4), pool=5)
    with pytest.raises(ValueError, match="permute_output must be False"):
        FrozenTargetConv2d(layer, (8, 8), _plan(layer, (8, 8), kind="tiles"), permute_output=True)


def test_empty_and_full_rois():
    layer = TargetConv2d(3, 6, 3)
    with torch.no_grad():
        layer.m.fill_(0.5)
        layer.s.fill_(4.0)  # every ROI covers the whole map
    _check(layer, torch.randn(2, 3, 7, 7))


def test_in_perm_and_permuted_output():
    layer = random_rois_(TargetConv2d(6, 10, 3), seed=4).eval()
    x = torch.randn(2, 6, 9, 9)
    plan = _plan(layer, (9, 9))
    in_perm = [3, 0, 5, 1, 4, 2]
    frozen = FrozenTargetConv2d(layer, (9, 9), plan, in_perm=in_perm, permute_output=True)
    with torch.no_grad():
        ref = layer(x)
        out = frozen(x[:, in_perm])
    torch.testing.assert_close(out, ref[:, plan.perm], rtol=1e-4, atol=1e-6)


def test_wrong_input_size_is_rejected():
    layer = TargetConv2d(2, 4, 3)
    frozen = FrozenTargetConv2d(layer, (8, 8))
    with pytest.raises(ValueError, match="planned for inputs of size"):
        frozen(torch.randn(1, 2, 9, 8))
    with pytest.raises(ValueError, match="input must be"):
        frozen(torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="TargetConv2d"):
        FrozenTargetConv2d(torch.nn.Conv2d(2, 4, 3), (8, 8))


def _supported_input(support: torch.Tensor, n: int, hw, seed: int) -> torch.Tensor:
    """Random input whose channel c is zero outside ``support[c]`` (as a producing target layer's output is)."""
    x = torch.randn(n, len(support), *hw, generator=torch.Generator().manual_seed(seed))
    return x * TF.roi_mask(support, *hw).to(x.dtype)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_input_support_skips_only_zero_channels(kind, stride):
    """Blocks read a channel range instead of all inputs; the result is the full layer's, to float rounding."""
    cin, hw = 48, (20, 18)
    layer = random_rois_(TargetConv2d(cin, 24, 3, stride=stride, padding=1, bias=True), seed=11,
                         s_range=(0.05, 0.2)).eval()
    g = torch.Generator().manual_seed(2)
    lo = torch.randint(0, 14, (cin, 2), generator=g)
    # channels ordered by position (as freeze orders a producer's output): rows grow with the index
    lo[:, 0] = torch.sort(lo[:, 0]).values
    support = torch.stack([lo[:, 0], lo[:, 0] + 5, lo[:, 1], lo[:, 1] + 5], 1)
    support[5] = torch.tensor([3, 3, 0, 0])  # an empty box: that channel is zero everywhere
    x = _supported_input(support, 3, hw, 0)
    frozen = FrozenTargetConv2d(layer, hw, _plan(layer, hw, kind=kind), input_support=support)
    ranges = [r for r in frozen.input_ranges if r is not None]
    assert ranges and all((hi - lo) % 8 == 0 and hi - lo < cin for lo, hi in ranges)
    with torch.no_grad():
        ref, out = layer(x), frozen(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(ValueError, match="input_support must be"):
        FrozenTargetConv2d(layer, hw, _plan(layer, hw, kind=kind), input_support=support[:, :3])


def test_tile_output_order_and_output_support():
    layer = random_rois_(TargetConv2d(4, 16, 3), seed=3).eval()
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()
    frozen = FrozenTargetConv2d(layer, (12, 12), _plan(layer, (12, 12), kind="tiles", align=2), output_order=order,
                                relu=True, pool=2)
    x = torch.randn(2, 4, 12, 12)
    with torch.no_grad():
        ref = F.max_pool2d(F.relu(layer(x)), 2)[:, order]
        out = frozen(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    # outside its support box each returned channel is exactly zero
    outside = ~TF.roi_mask(frozen.output_support(), 6, 6).bool()
    assert out.permute(1, 0, 2, 3)[outside.unsqueeze(1).expand(-1, 2, -1, -1)].abs().max() == 0
    with pytest.raises(ValueError, match="output_order must be a permutation"):
        FrozenTargetConv2d(layer, (12, 12), _plan(layer, (12, 12)), output_order=order)
