"""Frozen layers' state_dict: the same keys, shapes and values (original channel orders) for every plan, so a
frozen model's state loads into one frozen with other plans; the plan's packed tensors are derived again."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers_engine import FINE, random_rois_
from tkn.engine import FrozenTargetConv2d, freeze, native, native_plan
from tkn.layers import TargetConv2d
from tkn.ops.plan import dense_plan, plan_blocks, plan_tiles

pytestmark = pytest.mark.usefixtures("one_thread")

HW = (12, 12)


def _layer(seed: int) -> TargetConv2d:
    torch.manual_seed(seed)
    layer = TargetConv2d(6, 16, 3, bias=True)
    return random_rois_(layer, 3).eval()  # the same ROIs for every seed, other weights


def _plans(layer: TargetConv2d) -> dict[str, object]:
    roi = layer.rois(*HW)
    geometry = dict(in_channels=6, kernel_size=layer.kernel_size, kernel_extent=layer.kernel_extent,
                    stride=layer.stride, batch=2)
    plans = {"dense": dense_plan(16), "blocks": plan_blocks(roi, cost=FINE, **geometry),
             "tiles": plan_tiles(roi, output_hw=HW, grid=(2, 2), cost=FINE, **geometry)}
    if native.available():
        plans["native"] = native_plan(16)
    return plans


def _frozen(layer: TargetConv2d, plan, in_perm: list[int]) -> FrozenTargetConv2d:
    g = torch.Generator().manual_seed(5)
    scale, shift = torch.rand(16, generator=g) + 0.5, torch.rand(16, generator=g) - 0.5
    return FrozenTargetConv2d(layer, HW, plan, in_perm=in_perm, relu=True, pool=2, scale=scale, shift=shift,
                              permute_output=plan.mode == "blocks")


def _expected(layer: TargetConv2d, frozen: FrozenTargetConv2d, x: torch.Tensor) -> torch.Tensor:
    """What ``frozen`` returns for ``x`` (its input channels in ``frozen.in_perm`` order)."""
    original = torch.empty_like(x)
    original[:, frozen.in_perm] = x
    g = torch.Generator().manual_seed(5)
    scale, shift = torch.rand(16, generator=g) + 0.5, torch.rand(16, generator=g) - 0.5
    y = F.max_pool2d(torch.relu(layer(original) * scale[:, None, None] + shift[:, None, None]), 2)
    return y[:, frozen.plan.perm] if frozen.permute_output else y


def test_every_plan_has_the_same_state_and_loads_any_other():
    a, b = _layer(0), _layer(1)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(2)).tolist()
    x = torch.randn(2, 6, *HW)
    plans = _plans(a)
    frozen_a = {k: _frozen(a, p, perm) for k, p in plans.items()}
    frozen_b = {k: _frozen(b, p, perm) for k, p in plans.items()}
    states = {k: f.state_dict() for k, f in frozen_a.items()}
    keys = {k: [(n, tuple(t.shape)) for n, t in s.items()] for k, s in states.items()}
    assert all(v == keys["dense"] for v in keys.values())
    assert [n for n, _ in keys["dense"]] == ["weight", "bias", "window_map", "roi", "scale", "shift"]
    for s in states.values():  # the values too: the layer's own, in the original channel orders
        assert torch.equal(s["weight"], a.weight) and torch.equal(s["bias"], a.bias)
        assert torch.equal(s["roi"], a.rois(*HW))
    for source, state in states.items():
        for target, frozen in frozen_b.items():
            loaded = copy.deepcopy(frozen)  # a copy: frozen_b serves every source
            loaded.load_state_dict(state)
            with torch.no_grad():
                got, want = loaded(x), _expected(a, loaded, x)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, s=source, t=target: f"{s}->{t}: {m}")


def test_a_state_with_other_rois_or_zeros_is_refused():
    layer = _layer(0)
    frozen = _frozen(layer, _plans(layer)["blocks"], list(range(6)))
    state = frozen.state_dict()
    other = dict(state, roi=torch.zeros_like(state["roi"]))
    with pytest.raises(RuntimeError, match="roi: the state holds other ROIs"):
        frozen.load_state_dict(other)
    other = dict(state, shift=-state["shift"])  # relu(shift) non-zero in other channels: the supports would break
    with pytest.raises(RuntimeError, match="shift: outside the ROIs"):
        frozen.load_state_dict(other)


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(TargetConv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        TargetConv2d(16, 12, 3, bias=True), nn.ReLU(), TargetConv2d(12, 8, 3))
    for i, m in enumerate(m for m in net if isinstance(m, TargetConv2d)):
        random_rois_(m, 10 + i)  # the same ROIs for every seed
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-0.5, -0.1)  # relu(shift) = 0 for every seed: the same zeros outside the ROIs
    return net.eval()


@pytest.mark.parametrize("native_first", [True, False])
def test_frozen_models_exchange_their_state_across_plans(native_first, monkeypatch):
    """A model frozen with the native kernel and one frozen with PyTorch block/tile plans (channels permuted
    between layers) load each other's state and then compute the other model's function."""
    a, b = _net(0), _net(1)
    x = torch.randn(2, 3, 14, 14)
    options = dict(measure=False, candidates=[FINE], grids=(2,))
    with monkeypatch.context() as m:
        if not native_first:
            m.setattr(native, "available", lambda: False)
        first = freeze(a, x, **options)
    m2 = pytest.MonkeyPatch()
    if native_first:
        m2.setattr(native, "available", lambda: False)
    try:
        second = freeze(b, x, **options)
    finally:
        m2.undo()
    layers = [[type(m).__name__ + ":" + str(m.plan.mode) for m in f.modules() if isinstance(m, FrozenTargetConv2d)]
              for f in (first, second)]
    assert layers[0] != layers[1]  # other plans
    assert list(first.state_dict()) == list(second.state_dict())
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        ref = a(x)
        torch.testing.assert_close(second(x), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
