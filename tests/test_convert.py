"""targetize, scale_penalty, clip_parameters_ and the public freeze entry point."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tkn
from tkn.layers import TargetConv2d


class Net(nn.Module):
    """Nested Sequential / ModuleDict, BatchNorm, 1x1 and strided convs, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleDict({
            "a": nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()),
            "b": nn.Sequential(nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)), nn.ReLU()),
        })
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = self.blocks["b"](self.blocks["a"](x))
        return self.head(x.mean((2, 3)))


def _convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, TargetConv2d))]


def test_targetize_replaces_every_conv_and_copies_weights():
    torch.manual_seed(0)
    net = Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tkn_net = tkn.targetize(net, window="gaussian", l2=3e-4)
    converted = _convs(tkn_net)
    assert [n for n, _ in converted] == ["stem.0", "blocks.a.0", "blocks.b.0.0"]
    assert all(type(m) is TargetConv2d for _, m in converted)
    for name, layer in converted:
        src = net.get_submodule(name)
        assert torch.equal(layer.weight, src.weight) and layer.weight is not src.weight
        assert (layer.bias is None) == (src.bias is None)
        if src.bias is not None:
            assert torch.equal(layer.bias, src.bias)
        assert layer.stride == src.stride and layer.dilation == src.dilation and layer.groups == src.groups
        assert layer.window == "gaussian" and layer.l2 == 3e-4
    # the source is untouched
    assert all(type(m) is nn.Conv2d for _, m in _convs(net))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_targetized_model_equals_conv_times_window_at_init():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    x = torch.randn(2, 2, 7, 9)
    tnet = tkn.targetize(net)
    # with m = 0.5, s = 1 every ROI is the whole map; the layers multiply by their windows
    f1 = tnet[0].attention(7, 9)
    f2 = tnet[2].attention(7, 9)
    expected = nn.functional.conv2d(torch.relu(net[0](x) * f1), net[2].weight, net[2].bias) * f2
    torch.testing.assert_close(tnet(x), expected)


def test_include_filter_and_names():
    seen = []

    def only_3x3(name, conv):
        seen.append(name)
        return conv.kernel_size == (3, 3)

    tnet = tkn.targetize(Net(), include=only_3x3)
    assert seen == ["stem.0", "blocks.a.0", "blocks.b.0.0"]
    kinds = {n: type(m).__name__ for n, m in _convs(tnet)}
    assert kinds == {"stem.0": "TargetConv2d", "blocks.a.0": "Conv2d", "blocks.b.0.0": "TargetConv2d"}


def test_shared_conv_stays_shared_and_bare_conv_converts():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU(), conv)
    tnet = tkn.targetize(net)
    assert tnet[0] is tnet[2] and isinstance(tnet[0], TargetConv2d)
    assert isinstance(tkn.targetize(nn.Conv2d(1, 2, 3)), TargetConv2d)


def test_subclasses_of_conv2d_are_left_alone():
    class WSConv(nn.Conv2d):
        pass

    tnet = tkn.targetize(nn.Sequential(WSConv(1, 2, 3), nn.Conv2d(2, 2, 3)))
    assert type(tnet[0]) is WSConv and type(tnet[1]) is TargetConv2d


def test_targetize_preserves_dtype_and_padding_mode():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular").double())
    layer = tkn.targetize(net)[0]
    assert layer.weight.dtype == torch.float64 and layer.padding_mode == "circular" and layer.padding == (1, 1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(model="not a module"), TypeError, "model must be a torch.nn.Module"),
        (dict(window="box"), ValueError, "window must be one of"),
        (dict(l2=-1), ValueError, "l2 must be a finite non-negative number"),
        (dict(include=3), TypeError, "include must be a callable"),
    ],
)
def test_targetize_errors(kwargs, exc, match):
    args = dict(model=Net())
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        tkn.targetize(**args)


def test_scale_penalty_is_l2_times_sum_of_squared_raw_scales():
    net = nn.Sequential(TargetConv2d(1, 3, 3, l2=1e-3), nn.ReLU(), TargetConv2d(3, 2, 3, l2=4e-3),
                        TargetConv2d(2, 2, 1))
    with torch.no_grad():
        net[0].s.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]))
        net[2].s.copy_(torch.tensor([[1.0, 2.0], [0.5, 0.25]]))
        net[3].s.fill_(7.0)  # l2 = 0: contributes nothing
    expected = 1e-3 * (0.01 + 0.04 + 0.09 + 0.16 + 0.25 + 0.36) + 4e-3 * (1 + 4 + 0.25 + 0.0625)
    penalty = tkn.scale_penalty(net)
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    torch.testing.assert_close(net[0].s.grad, 2e-3 * net[0].s.detach())
    assert tkn.scale_penalty(nn.Linear(2, 2)).item() == 0.0


def test_clip_parameters_projects_raw_values():
    layer = TargetConv2d(1, 2, 3)
    with torch.no_grad():
        layer.m.copy_(torch.tensor([[-0.5, 0.3], [1.7, 1.0]]))
        layer.s.copy_(torch.tensor([[-1.0, 0.3], [9.0, 2.0]]))
    tkn.clip_parameters_(layer)
    assert layer.m.tolist() == [[0.0, pytest.approx(0.3)], [1.0, 1.0]]
    assert layer.s[0, 0].item() > 0 and layer.s[1, 0].item() == 4.0 and layer.s[1, 1].item() == 2.0


def test_freeze_matches_eval_and_leaves_source():
    torch.manual_seed(2)
    net = tkn.targetize(Net())
    g = torch.Generator().manual_seed(3)
    for _, layer in tkn.target_layers(net):
        with torch.no_grad():
            layer.m.copy_(torch.rand(layer.m.shape, generator=g))
            layer.s.copy_(torch.rand(layer.s.shape, generator=g) * 0.5 + 0.1)
    x = torch.randn(3, 3, 16, 16)
    net.eval()
    frozen = tkn.freeze(net, x)
    torch.testing.assert_close(frozen(x), net(x), rtol=1e-4, atol=1e-5)
    assert not frozen.training
    assert all(isinstance(m, TargetConv2d) for _, m in tkn.target_layers(net))
    assert not tkn.target_layers(frozen)
