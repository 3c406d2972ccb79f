"""freeze() on CNNs written the usual way: epilogues and input sparsity found on the torch.fx graph."""
from __future__ import annotations

import operator

import json

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import tkn
from tkn.engine import FrozenTargetConv2d, freeze
from tkn.engine.graph import analyse, fold_batch_norm
from tkn.layers import TargetConv2d
from tkn.models import create_model
from helpers_engine import FINE, random_rois_, require_native

#: Block and tile plans only (the cost model's cheapest, untimed): the executors under test, not dense.
OPTIONS = dict(measure=False, candidates=[FINE], grids=(2, 3))


pytestmark = pytest.mark.usefixtures("one_thread")


def _rois(model: nn.Module, seed: int = 0) -> nn.Module:
    for i, m in enumerate(m for m in model.modules() if isinstance(m, TargetConv2d)):
        random_rois_(m, seed + i, s_range=(0.05, 0.4))
    return model


@torch.no_grad()
def _batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters away from the identity; half the shifts negative (a ReLU after
    the norm then leaves those channels zero outside the ROIs, the others not)."""
    g = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.3)
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.3 + 1.0)
        bn.bias.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 0.4 * torch.where(
            torch.arange(c) % 2 == 0, -1.0, 1.0))
    return model


def _rel_error(model: nn.Module, frozen: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref, out = model(x), frozen(x)
    assert out.shape == ref.shape
    return float((out - ref).abs().max() / ref.abs().max())


def _frozen_layers(frozen: nn.Module) -> dict[str, FrozenTargetConv2d]:
    return {n: m for n, m in frozen.named_modules() if isinstance(m, FrozenTargetConv2d)}


def _assert_supports_hold(model: nn.Module, frozen: nn.Module, x: torch.Tensor) -> int:
    """Every frozen layer's ``input_support`` claim checked on the original model's activations (values outside
    the boxes are exactly zero); returns how many layers had one."""
    layers, seen, checked = _frozen_layers(frozen), {}, 0
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(names[id(mod)], args[0]))
             for m in model.modules() if isinstance(m, TargetConv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for name, layer in layers.items():
        support = layer.input_support
        if support is None:
            continue
        checked += 1
        inp = seen[name] if layer.in_perm is None else seen[name][:, layer.in_perm]
        for c, (y0, y1, x0, x1) in enumerate(support.tolist()):
            outside = torch.ones(inp.shape[-2:], dtype=torch.bool)
            outside[y0:y1, x0:x1] = False
            assert (inp[:, c][:, outside] == 0).all(), (name, c)
    return checked


class Functional(nn.Module):
    """Two target layers; the first one's ReLU written in one of the usual forms."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.a = TargetConv2d(3, 16, 3)
        self.relu = nn.ReLU(inplace=True)
        self.b = TargetConv2d(16, 8, 3)

    def forward(self, x):
        y = self.a(x)
        if self.form == "F.relu":
            y = F.relu(y)
        elif self.form == "F.relu_inplace":
            y = F.relu(y, inplace=True)
        elif self.form == "torch.relu":
            y = torch.relu(y)
        elif self.form == "method":
            y = y.relu()
        elif self.form == "method_":
            y = y.relu_()
        else:
            y = self.relu(y)
        return self.b(y)


@pytest.mark.parametrize("form", ["F.relu", "F.relu_inplace", "torch.relu", "method", "method_", "module"])
def test_functional_relu_forms_are_fused(form):
    torch.manual_seed(0)
    model = _rois(Functional(form)).eval()
    x = torch.randn(2, 3, 14, 14)
    frozen = freeze(model, x, **OPTIONS)
    layers = _frozen_layers(frozen)
    assert layers["a"].relu and not layers["b"].relu
    # a function or method removed from the graph: a rewritten GraphModule; a module: replaced by nn.Identity
    assert isinstance(frozen, fx.GraphModule) == (form != "module")
    assert not any(isinstance(m, nn.ReLU) for m in frozen.modules())
    # the ReLU output is zero outside a's ROIs: b reads only the channels its blocks need
    assert layers["b"].input_support is not None
    assert _rel_error(model, frozen, x) <= 1e-5
    assert _assert_supports_hold(model, frozen, x) == 1


class ConvBnPool(nn.Module):
    """conv -> BN -> ReLU -> F.max_pool2d -> conv -> BN (the second norm ends the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = TargetConv2d(3, 16, 3), nn.BatchNorm2d(16)
        self.b, self.bn_b = TargetConv2d(16, 12, 3, bias=True), nn.BatchNorm2d(12)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn_a(self.a(x))), 2)
        return self.bn_b(self.b(x))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_batch_norm_folded_with_relu_and_functional_pool(dtype, tol):
    torch.manual_seed(1)
    model = _batch_norms(_rois(ConvBnPool())).to(dtype).eval()
    x = torch.randn(3, 3, 16, 16, dtype=dtype)
    frozen = freeze(model, x, **OPTIONS)
    a, b = _frozen_layers(frozen).values()
    assert (a.relu, a.pool, a.affine) == (True, 2, True)
    assert (b.relu, b.pool, b.affine) == (False, 1, True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert _rel_error(model, frozen, x) <= tol
    # channels with relu(shift) > 0 are non-zero everywhere: the support says so, and holds
    outside = a.fill if (a.permute_output or a.identity_order) else a.fill[a.inverse_perm]
    full = (a.output_support() == torch.tensor([0, 8, 0, 8])).all(1)
    assert bool(full[outside > 0].all())
    assert _assert_supports_hold(model, frozen, x) == 1
    # dense plans fold the norm too (no native plans: the kernel would take the second layer)
    dense = freeze(model, x, measure=False, candidates=(), grids=(), native=False)
    assert all(m.plan.mode == "dense" and m.affine for m in _frozen_layers(dense).values())
    assert _rel_error(model, dense, x) <= tol


def test_fold_batch_norm_matches_eval_mode():
    bn = _batch_norms(nn.BatchNorm2d(6)).double().eval()
    y = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    scale, shift = fold_batch_norm(bn)
    torch.testing.assert_close(y * scale[:, None, None] + shift[:, None, None], bn(y), rtol=1e-14, atol=1e-14)


class Residual(nn.Module):
    """Two BasicBlock-like blocks written with F.relu, an in-place addition and a strided 1x1 shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c1, self.n1 = TargetConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.n2 = TargetConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.n3 = TargetConv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.c4, self.n4 = TargetConv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.short = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = F.relu(self.n1(self.c1(x)))
        out = self.n2(self.c2(out))
        out += x
        x = F.relu(out)
        out = self.n4(self.c4(F.relu(self.n3(self.c3(x)))))
        return torch.relu(out + self.short(x)).mean(dim=(2, 3))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_residual_additions_keep_exact_values(dtype, tol):
    torch.manual_seed(2)
    model = _batch_norms(_rois(Residual()), seed=2).to(dtype).eval()
    x = torch.randn(2, 3, 12, 12, dtype=dtype)
    frozen = freeze(model, x, **OPTIONS)
    layers = _frozen_layers(frozen)
    assert [layers[n].relu for n in ("c1", "c2", "c3", "c4")] == [True, False, True, False]
    assert all(layers[n].affine for n in layers)  # every norm folded, also those before an addition
    assert _rel_error(model, frozen, x) <= tol
    assert _assert_supports_hold(model, frozen, x) == 2  # c2 and c4 read only what c1 and c3 leave non-zero


def test_tresnet18_freezes_with_every_norm_folded():
    torch.manual_seed(3)
    model = _batch_norms(_rois(create_model("tresnet18", in_channels=3, input_size=16, num_classes=5)), 3).eval()
    x = torch.rand(2, 3, 16, 16)
    frozen = freeze(model, x, **OPTIONS)
    layers = _frozen_layers(frozen)
    assert len(layers) == 16
    # conv1: BN + ReLU; conv2: BN, and where it runs native also the residual addition and the block's ReLU
    native = {n for n in layers if layers[n].plan.mode == "native"}
    assert {"layer1.0.conv2", "layer2.1.conv2"} <= native and "layer4.1.conv2" not in native  # 2x2 maps: dense
    for n, layer in layers.items():
        fused_add = n.endswith("conv2") and n in native
        assert (layer.affine, layer.residual, layer.relu) == (True, fused_add, n.endswith("conv1") or fused_add), n
    adds = [n for n in frozen.graph.nodes if n.op == "call_function" and n.target in (operator.add, operator.iadd)]
    assert len(adds) == sum(n.endswith("conv2") and n not in native for n in layers)
    # the stem's and the shortcut projections' batch norms are folded into their plain convolutions
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16 + 1 + 3
    assert _rel_error(model, frozen, x) <= 1e-5
    # every conv2 reads only where its conv1 left non-zeros, except on layer4's 2x2 maps (ROIs cover them)
    assert _assert_supports_hold(model, frozen, x) == 6


class Dense(nn.Module):
    """A small DenseNet-like block: each layer's output concatenated to its input; a residual sum at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.t1 = TargetConv2d(4, 8, 3)
        self.t2 = TargetConv2d(12, 8, 3)
        self.t3 = TargetConv2d(20, 8, 3)
        self.t4 = TargetConv2d(8, 8, 3)
        self.t5 = TargetConv2d(8, 6, 3)

    def forward(self, x):
        x = torch.cat([x, F.relu(self.t1(x))], 1)
        x = torch.cat((x, self.t2(x).relu()), dim=1)
        y = self.t3(x)
        return self.t5(y + self.t4(y))


def test_concatenation_keeps_each_inputs_zero_boxes():
    torch.manual_seed(4)
    model = _rois(Dense(), seed=4).eval()
    x = torch.randn(2, 4, 12, 12)
    frozen = freeze(model, x, **OPTIONS)
    layers = _frozen_layers(frozen)
    support = layers["t3"].input_support
    full = torch.tensor([0, 12, 0, 12])
    assert (support[:4] == full).all()  # the network's input: non-zero anywhere
    assert torch.equal(support[4:12], layers["t1"].output_support())
    assert torch.equal(support[12:], layers["t2"].output_support())
    assert layers["t5"].input_support is not None  # t3 + t4: zero outside the union of their ROIs
    assert _rel_error(model, frozen, x) <= 1e-5
    assert _assert_supports_hold(model, frozen, x) == 4


class Untraceable(nn.Module):
    """Python control flow on an input value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(TargetConv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), TargetConv2d(8, 4, 3))
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        if float(x.abs().max()) > 100.0:
            raise ValueError("input out of range")
        return F.relu(self.norm(self.body(x)))


def test_untraceable_model_is_frozen_layer_by_layer():
    torch.manual_seed(5)
    model = _batch_norms(_rois(Untraceable(), seed=5), seed=5).eval()
    x = torch.randn(2, 3, 12, 12)
    assert analyse(model, x) is None
    frozen = freeze(model, x, **OPTIONS)
    assert type(frozen) is Untraceable
    first, second = _frozen_layers(frozen).values()
    assert (first.relu, first.pool, first.shift, first.permute_output) == (False, 1, None, False)
    assert [type(m) for m in frozen.body][1:3] == [nn.ReLU, nn.MaxPool2d]
    assert second.shift is None and second.input_support is None and isinstance(frozen.norm, nn.BatchNorm2d)
    assert _rel_error(model, frozen, x) <= 1e-5


def test_tkn_paper_models_take_the_graph_path():
    model = _rois(create_model("tkn6", input_size=12)).eval()
    x = torch.rand(2, 1, 12, 12)
    assert analyse(model, x) is not None
    frozen = freeze(model, x, **OPTIONS)
    assert [m.relu for m in _frozen_layers(frozen).values()] == [True, True, True]
    assert [m.pool for m in _frozen_layers(frozen).values()] == [2, 2, 1]
    assert _rel_error(model, frozen, x) <= 1e-5


def test_a_layer_called_twice_is_not_fused():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.t = TargetConv2d(4, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return F.relu(self.bn(self.t(F.relu(self.bn(self.t(x))))))

    model = _batch_norms(_rois(Twice(), seed=6), seed=6).eval()
    x = torch.randn(2, 4, 10, 10)
    frozen = freeze(model, x, **OPTIONS)
    assert all(m.shift is None and not m.relu for m in _frozen_layers(frozen).values())
    assert _rel_error(model, frozen, x) <= 1e-5


def test_bench_runs_tresnet18_with_its_synthetic_scale_range(capsys):
    from tkn.cli import main

    code = main(["bench", "--model", "tresnet18", "--input-size", "3,16,16", "--batch", "2", "--repeats", "1",
                 "--no-memory", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["models"][0]
    assert result["frozen_max_rel_error"] <= 1e-5
    plans = result["plans"]
    # conv1: ReLU fused; conv2 running native: the residual addition and the ReLU after it fused
    assert len(plans) == 16 and sum(p["relu"] and not p["residual"] for p in plans) == 8
    assert all(p["residual"] == (p["relu"] and p["layer"].endswith("conv2")) for p in plans)


def _small_central_rois_(model: nn.Module) -> None:
    """Small ROIs near the centre in every target layer (seeded by layer index): the native plans win without
    timing."""
    for i, m in enumerate(m for m in model.modules() if isinstance(m, TargetConv2d)):
        random_rois_(m, i, s_range=(0.03, 0.08))
        with torch.no_grad():
            m.m.mul_(0.2).add_(0.4)


class SharedReluBlock(nn.Module):
    """A BasicBlock written as torchvision writes it: one ``nn.ReLU`` module called twice, ``out += identity``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = TargetConv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = TargetConv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


def test_torchvision_style_blocks_with_a_shared_relu_are_fused():
    torch.manual_seed(5)
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    model = nn.Sequential(stem, SharedReluBlock(16, 16), SharedReluBlock(16, 32, stride=2))
    _small_central_rois_(model)
    model = _batch_norms(model, 7).eval()
    x = torch.rand(3, 3, 24, 24)
    frozen = freeze(model, x, **OPTIONS)
    layers = _frozen_layers(frozen)
    assert len(layers) == 4 and all(layer.plan.mode == "native" for layer in layers.values())
    # conv1: BN + the shared ReLU's first call; conv2: BN, the addition and the ReLU's second call
    assert all(layer.affine and layer.relu and layer.residual == n.endswith("conv2") for n, layer in layers.items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    # both calls of each block's shared ReLU are fused; the stem's ReLU (a plain convolution's) stays
    relu_calls = [n.target for n in frozen.graph.nodes
                  if n.op == "call_module" and isinstance(frozen.get_submodule(n.target), nn.ReLU)]
    assert relu_calls == ["0.2"]
    assert _rel_error(model, frozen, x) <= 1e-5


class ProjectionFirstBlock(SharedReluBlock):
    """The same block computing its shortcut before its main path (the projection runs first)."""

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


@pytest.mark.parametrize("block", [SharedReluBlock, ProjectionFirstBlock])
def test_residual_addition_of_two_target_layers_goes_to_one(block):
    """A targetized 1x1 projection shortcut: both addends of the block's addition are target layers (after their
    norms). The one that runs first takes the addition and the ReLU into its kernel; the other becomes its
    addend (a plain frozen layer)."""
    require_native()
    torch.manual_seed(5)
    model = tkn.targetize(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), block(16, 32, stride=2)),
                          include=lambda name, conv: name != "0")
    _small_central_rois_(model)
    model = _batch_norms(model, 7).eval()
    x = torch.rand(3, 3, 23, 23)
    frozen = freeze(model, x, **OPTIONS)
    layers = _frozen_layers(frozen)
    assert set(layers) == {"1.conv1", "1.conv2", "1.downsample.0"}
    assert all(layer.plan.mode == "native" and layer.affine for layer in layers.values())
    first = "1.conv2" if block is SharedReluBlock else "1.downsample.0"
    assert {n for n, layer in layers.items() if layer.residual} == {first}
    assert layers[first].relu and not layers["1.downsample.0" if first == "1.conv2" else "1.conv2"].relu
    assert _rel_error(model, frozen, x) <= 1e-5


class ViewHead(nn.Module):
    """A classifier head written with ``x.view(x.size(0), -1)`` (traceable, or not with ``check``)."""

    def __init__(self, check: bool = False) -> None:
        super().__init__()
        self.check = check
        self.conv = TargetConv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 11 * 11, 5)

    def forward(self, x):
        if self.check and x.dim() != 4:  # a Python check on the input: torch.fx cannot trace it
            raise ValueError("expected a 4-D input")
        y = F.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def _view_head(check: bool) -> ViewHead:
    torch.manual_seed(2)
    model = ViewHead(check)
    random_rois_(model.conv, 3, s_range=(0.03, 0.1))  # small ROIs: never a dense plan
    return model.eval()


@pytest.mark.parametrize("native", [False, True])
def test_view_of_a_frozen_map_becomes_a_reshape(native):
    """Frozen layers may return channels_last maps (tile and native plans; a native model runs channels_last),
    on which the model's ``view`` would fail: the rewritten graph calls ``reshape`` (same values)."""
    if native:
        require_native()
    model, x = _view_head(False), torch.randn(3, 16, 11, 11)
    frozen = freeze(model, x, native=native, **OPTIONS)
    assert _frozen_layers(frozen)["conv"].plan.mode == ("native" if native else "blocks")
    methods = [n.target for n in frozen.graph.nodes if n.op == "call_method"]
    assert "reshape" in methods and "view" not in methods
    for batch in (1, 3):
        assert _rel_error(model, frozen, x[:batch]) <= 1e-5


def test_untraceable_view_of_a_frozen_map_gets_contiguous_maps():
    """No graph to rewrite: the frozen model fails on the example in channels_last, so its frozen layers return
    contiguous maps and it keeps the model's memory format."""
    require_native()
    model, x = _view_head(True), torch.randn(3, 16, 11, 11)
    frozen = freeze(model, x, **OPTIONS)
    layer = _frozen_layers(frozen)["conv"]
    assert layer.plan.mode == "native" and layer.contiguous_output
    assert not frozen._forward_pre_hooks and frozen.fc.weight.is_contiguous()
    for batch in (1, 3):
        assert _rel_error(model, frozen, x[:batch]) <= 1e-5
