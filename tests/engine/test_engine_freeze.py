"""freeze() on whole networks: channel permutations moved through the model, tracing, plan choice.

These tests cover the PyTorch planner (block and tile plans): the native kernel is hidden from them
(its plans keep the channel order; they are tested in ``test_engine_native.py``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tkn.engine import FrozenTargetConv2d, freeze, native
from tkn.engine.graph import analyse
from tkn.layers import TargetConv2d
from tkn.ops.plan import CostModel
from helpers_engine import FINE, random_rois_


@pytest.fixture(autouse=True)
def _pytorch_planner(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        TargetConv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        TargetConv2d(16, 12, 3, bias=True), nn.ReLU(),
        nn.Conv2d(12, 10, 1), TargetConv2d(10, 8, 3), nn.Flatten(), nn.Linear(8 * 7 * 7, 5),
    )
    for i, (_, m) in enumerate((n, m) for n, m in net.named_modules() if isinstance(m, TargetConv2d)):
        random_rois_(m, seed + i)
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return net.eval()


class Untraceable(nn.Module):
    """A forward with a Python check on the input: torch.fx cannot trace it."""

    def __init__(self, side_output: bool = False) -> None:
        super().__init__()
        self.body = _net(3)
        self.side_output = side_output

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError("bad input")
        if not self.side_output:
            return self.body(x)
        a = self.body[0](x)
        # an operation on the first layer's output that hooks cannot see
        rest = self.body[1:](a)
        return rest + a[:, :5].mean(dim=(2, 3))


def _assert_same(model, frozen, x):
    with torch.no_grad():
        ref, out = model(x), frozen(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def _layers(frozen):
    return [m for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)]


def test_permutations_move_through_bn_pool_and_into_linear():
    net = _net()
    x = torch.randn(4, 3, 14, 14)
    routes = analyse(net, x).routes
    assert {k: (r.consumer, r.kind, r.batch_norms) for k, r in routes.items()} == {
        "0": ("4", "conv", ["1"]), "4": ("6", "conv", []), "7": ("9", "linear", [])}
    frozen = freeze(net, x, measure=False, candidates=[FINE], grids=())
    layers = _layers(frozen)
    assert len(layers) == 3 and all(m.plan.mode == "blocks" and m.permute_output for m in layers)
    assert all(m.plan.perm != list(range(m.out_channels)) for m in layers)
    _assert_same(net, frozen, x)
    _assert_same(net, frozen, torch.randn(4, 3, 14, 14))  # not only the example


def test_untraceable_model_is_frozen_layer_by_layer():
    """Without a graph each target layer is replaced where it is: nothing fused, permuted or skipped."""
    model = Untraceable().eval()
    x = torch.randn(2, 3, 14, 14)
    assert analyse(model, x) is None
    frozen = freeze(model, x, measure=False, candidates=[FINE], grids=())
    layers = _layers(frozen)
    assert len(layers) == 3 and all(m.plan.mode == "blocks" for m in layers)
    assert not any(m.permute_output or m.relu or m.pool > 1 or m.affine or m.in_perm for m in layers)
    assert all(m.input_support is None for m in layers)
    assert [type(m).__name__ for m in frozen.body][1:4] == ["BatchNorm2d", "ReLU", "MaxPool2d"]
    _assert_same(model, frozen, x)
    _assert_same(model, frozen, torch.randn(2, 3, 14, 14))


def test_graph_false_freezes_layer_by_layer():
    net = _net()
    x = torch.randn(2, 3, 14, 14)
    frozen = freeze(net, x, measure=False, candidates=[FINE], grids=(), graph=False)
    assert not any(m.permute_output or m.relu or m.pool > 1 or m.in_perm for m in _layers(frozen))
    assert type(frozen[1]) is nn.BatchNorm2d and type(frozen[9]) is nn.Linear
    _assert_same(net, frozen, x)


def test_consumer_outside_any_graph_sees_the_original_order():
    model = Untraceable(side_output=True).eval()
    x = torch.randn(2, 3, 14, 14)
    frozen = freeze(model, x, measure=False, candidates=[FINE], grids=())
    assert not any(m.permute_output for m in _layers(frozen))
    _assert_same(model, frozen, x)


def test_original_model_is_untouched_and_frozen_has_no_grad():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    frozen = freeze(net, torch.randn(2, 3, 14, 14), measure=False, candidates=[FINE], grids=())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen.training


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_jit_trace_gives_the_same_outputs():
    net = _net(1)
    x = torch.randn(3, 3, 14, 14)
    frozen = freeze(net, x, measure=False, candidates=[FINE], grids=())
    traced = torch.jit.trace(frozen, x)
    _assert_same(net, traced, x)
    _assert_same(net, traced, torch.randn(3, 3, 14, 14))


def test_measured_freeze_matches_eval():
    net = _net(2)
    x = torch.randn(2, 3, 14, 14)
    frozen = freeze(net, x, repeats=1)
    assert all(m.timings for m in _layers(frozen))
    _assert_same(net, frozen, x)


def test_full_map_rois_plan_dense_or_one_full_block():
    """When every ROI covers the map there is nothing to skip: dense by the cost model; measured, dense or a plan
    doing no more than dense's work (one full-map block, tiles partitioning the map, or a native plan, whose
    ``"batch"`` strategy also skips the products with the zero pad: timing picks among near-equals)."""
    layer = TargetConv2d(16, 32, 3)
    with torch.no_grad():
        layer.s.fill_(4.0)
    net = nn.Sequential(layer).eval()
    x = torch.randn(8, 16, 12, 12)
    assert _layers(freeze(net, x, measure=False))[0].plan.mode == "dense"
    chosen = _layers(freeze(net, x, repeats=2))[0]
    assert chosen.dense_macs() == 32 * 12 * 12 * 16 * 9  # padding 1: a 12x12 output
    assert chosen.plan.mode == "dense" or chosen.executed_macs() <= chosen.dense_macs()
    _assert_same(net, chosen, x)


def test_single_layer_and_input_size():
    layer = random_rois_(TargetConv2d(2, 8, 3), seed=1).eval()
    frozen = freeze(layer, torch.randn(1, 2, 10, 10), input_size=(12, 9), measure=False)
    assert isinstance(frozen, FrozenTargetConv2d) and frozen.input_hw == (12, 9)
    x = torch.randn(2, 2, 12, 9)
    _assert_same(layer, frozen, x)


def test_bad_arguments():
    net = _net()
    with pytest.raises(TypeError, match="model"):
        freeze("net", torch.randn(1, 3, 14, 14))
    with pytest.raises(TypeError, match="example_input"):
        freeze(net, [1, 2])
    with pytest.raises(ValueError, match="input_size"):
        freeze(net, torch.randn(1, 3, 14, 14), input_size=(14,))
    with pytest.raises(ValueError, match="repeats"):
        freeze(net, torch.randn(1, 3, 14, 14), repeats=0)


def _fusion_net(shared_relu: bool = False) -> nn.Sequential:
    torch.manual_seed(4)
    relu = nn.ReLU()
    net = nn.Sequential(
        TargetConv2d(3, 16, 3), relu, nn.MaxPool2d(2),            # ReLU + pool fused
        TargetConv2d(16, 12, 3), relu if shared_relu else nn.ReLU(),
        nn.MaxPool2d(2, stride=1),                                 # overlapping pool: ReLU fused, pool kept
        TargetConv2d(12, 8, 3), nn.MaxPool2d(3),                   # pool without ReLU fused
        nn.Flatten(), nn.Linear(8 * 2 * 2, 5),
    )
    for i, m in enumerate(x for x in net if isinstance(x, TargetConv2d)):
        random_rois_(m, 10 + i)
    return net.eval()


@pytest.mark.parametrize("grids", [(), (2,)])
def test_relu_and_max_pool_are_fused_into_target_layers(grids):
    net = _fusion_net()
    x = torch.randn(3, 3, 15, 15)  # odd: the first pool drops a row and a column
    frozen = freeze(net, x, measure=False, candidates=[FINE], grids=grids)
    layers = _layers(frozen)
    assert [(m.relu, m.pool) for m in layers] == [(True, 2), (True, 1), (False, 3)]
    assert [type(m).__name__ for m in frozen] == [
        "FrozenTargetConv2d", "Identity", "Identity", "FrozenTargetConv2d", "Identity", "MaxPool2d",
        "FrozenTargetConv2d", "Identity", "Flatten", "Linear"]
    _assert_same(net, frozen, x)
    _assert_same(net, frozen, torch.randn(3, 3, 15, 15))


def test_shared_followers_are_fused_per_call_and_disabled_fusion_is_respected():
    shared = _fusion_net(shared_relu=True)
    x = torch.randn(2, 3, 15, 15)
    frozen = freeze(shared, x, measure=False, candidates=[FINE], grids=())
    # one nn.ReLU module called after two target layers: each call is fused where it is; the module is not
    # replaced (it could have other calls), so the result is the rewritten fx graph
    assert [(m.relu, m.pool) for m in _layers(frozen)] == [(True, 2), (True, 1), (False, 3)]
    assert isinstance(frozen, torch.fx.GraphModule)
    assert not any(n.op == "call_module" and isinstance(frozen.get_submodule(n.target), nn.ReLU)
                   for n in frozen.graph.nodes)
    _assert_same(shared, frozen, x)
    unfused = freeze(_fusion_net(), x, measure=False, fuse=False)
    assert [(m.relu, m.pool) for m in _layers(unfused)] == [(False, 1)] * 3
    assert not any(isinstance(m, nn.Identity) for m in unfused)


def test_tkn6_freeze_with_default_candidates_matches_eval():
    """The whole default path on the paper's TKN6: measured choice among dense, blocks and tiles, fused epilogues."""
    from tkn.benchmark import synthetic_rois_
    from tkn.models import create_model

    model = synthetic_rois_(create_model("tkn6", input_size=(24, 24))).eval()
    x = torch.randn(2, 1, 24, 24)
    frozen = freeze(model, x, repeats=1)
    layers = _layers(frozen)
    assert [(m.relu, m.pool) for m in layers] == [(True, 2), (True, 2), (True, 1)]
    assert all(len(m.timings) >= 3 for m in layers)  # dense + several block / tile candidates were timed
    _assert_same(model, frozen, x)


def _sparse_net() -> nn.Sequential:
    """Small ROIs on a wide map: each block of the second layer meets few of the first layer's ROIs."""
    torch.manual_seed(6)
    net = nn.Sequential(TargetConv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(),
                        TargetConv2d(32, 16, 3), nn.ReLU(), TargetConv2d(16, 8, 3))
    for i, m in enumerate(x for x in net if isinstance(x, TargetConv2d)):
        random_rois_(m, 20 + i, s_range=(0.05, 0.15))
    return net.eval()


@pytest.mark.parametrize("input_sparsity", [True, False])
def test_input_sparsity_between_directly_chained_layers(input_sparsity):
    net = _sparse_net()
    x = torch.randn(2, 1, 40, 40)
    frozen = freeze(net, x, measure=False, candidates=[FINE], grids=(2,), input_sparsity=input_sparsity)
    first, second, third = _layers(frozen)
    assert first.plan.mode != "dense" and second.plan.mode != "dense"
    reads = [r for r in second.input_ranges if r is not None]
    assert bool(reads) == input_sparsity  # ranges of the first layer's (position-ordered) channels
    if input_sparsity and first.plan.mode == "tiles":
        assert first.permute_output and sorted(first.plan.perm) == list(range(32))
    _assert_same(net, frozen, x)
    _assert_same(net, frozen, torch.randn(2, 1, 40, 40))


def test_no_input_sparsity_through_a_batch_norm():
    """A batch norm between two target layers adds its shift everywhere: the zeros are gone."""
    net = _net()
    frozen = freeze(net, torch.randn(2, 3, 14, 14), measure=False, candidates=[FINE], grids=(2,))
    layers = _layers(frozen)
    assert all(r is None for r in getattr(layers[1], "input_ranges", [None]))
    _assert_same(net, frozen, torch.randn(2, 3, 14, 14))


@pytest.mark.parametrize("graph", [True, False])
def test_tile_plan_feeding_a_grouped_layer_keeps_its_channel_order(graph):
    """A tile plan emits its channels sorted by ROI position for a consumer that can take any input order; a
    grouped convolution cannot (its groups fix which input channels each output reads): it gets them in order."""
    torch.manual_seed(1)
    net = nn.Sequential(TargetConv2d(3, 8, 3, padding=1), nn.ReLU(), TargetConv2d(8, 4, 3, padding=1, groups=2)).eval()
    random_rois_(net[0], 1, s_range=(0.02, 0.1))
    x = torch.randn(2, 3, 24, 24)
    frozen = freeze(net, x, measure=False, graph=graph, candidates=[CostModel(8, 0.0, 0.0)], grids=(2, 3, 4))
    assert frozen[0].plan.mode == "tiles" and frozen[0].identity_order and frozen[2].in_perm is None
    _assert_same(net, frozen, x)
