"""Target layer + ReLU + max-pool computed per ROI block in training: same values and gradients as the three
operations in a row (float64), and a view that leaves the model untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tkn import functional as TF
from tkn.layers import TargetConv2d
from tkn.models import create_model
from tkn.ops import fast_conv
from tkn.ops.fast_conv import fast_target_conv2d
from tkn.training.fusion import FusedTargetBlock, fusable_pool, fused_training_view

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_window_params(c_out: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    m = (torch.rand(c_out, 2, dtype=torch.float64, generator=gen) * 1.2 - 0.1).requires_grad_()
    s = (torch.rand(c_out, 2, dtype=torch.float64, generator=gen) * 0.4 + 0.02).requires_grad_()
    return m, s


@pytest.mark.parametrize("hw,pool,kwargs", [
    ((12, 12), 2, {}),
    ((13, 11), 2, {}),             # odd maps: the last row / column is dropped by the pool
    ((15, 15), 3, {}),
    ((12, 10), 1, {}),             # ReLU alone
    ((14, 14), 2, {"stride": 2, "padding": 1}),
])
def test_relu_pool_epilogue_equals_the_three_operations(hw, pool, kwargs, monkeypatch):
    blocks = []
    original = fast_conv._Assemble.apply
    monkeypatch.setattr(fast_conv._Assemble, "apply", lambda *a: blocks.append(len(a[1])) or original(*a))
    gen = torch.Generator().manual_seed(hw[0] * 10 + pool)
    x = torch.randn(3, 2, *hw, dtype=torch.float64, generator=gen).requires_grad_()
    w = torch.randn(12, 2, 3, 3, dtype=torch.float64, generator=gen).requires_grad_()
    b = torch.randn(12, dtype=torch.float64, generator=gen).requires_grad_()
    m, s = _random_window_params(12, gen)

    def reference(*a):
        y = F.relu(TF.target_conv2d(*a, **kwargs))
        return F.max_pool2d(y, pool) if pool > 1 else y

    def fused(*a):
        return fast_target_conv2d(*a, relu=True, pool=pool, dense_fraction=10.0, **kwargs)

    results = []
    for fn in (reference, fused):
        for t in (x, w, b, m, s):
            t.grad = None
        y = fn(x, w, m, s, b)
        g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        (y * g).sum().backward()
        results.append([y.detach()] + [t.grad.clone() for t in (x, w, b, m, s)])
    for name, want, got in zip(["y", "x", "weight", "bias", "m", "s"], *results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=lambda msg, n=name: f"{n}: {msg}")
    assert blocks and blocks[0] >= 1  # the block path ran
    assert results[0][0].abs().sum() > 0  # not a trivially zero output


def test_pool_larger_than_the_map_is_refused():
    x = torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="pool=4 is larger"):
        fast_target_conv2d(x, torch.randn(2, 1, 3, 3), torch.full((2, 2), 0.5), torch.full((2, 2), 0.5), pool=4)


def test_fusable_pool():
    assert fusable_pool(nn.MaxPool2d(2)) == 2
    assert fusable_pool(nn.MaxPool2d((3, 3))) == 3
    assert fusable_pool(nn.MaxPool2d(3, stride=2)) is None
    assert fusable_pool(nn.MaxPool2d(2, padding=1)) is None
    assert fusable_pool(nn.MaxPool2d(2, ceil_mode=True)) is None
    assert fusable_pool(nn.AvgPool2d(2)) is None


def test_view_of_tkn6_shares_parameters_and_matches_the_model():
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=(28, 28), dropout=0.0).double().train()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, TargetConv2d)):
            layer.m.copy_(torch.rand(layer.m.shape, generator=gen, dtype=torch.float64) * 0.6 + 0.2)
            layer.s.copy_(torch.rand(layer.s.shape, generator=gen, dtype=torch.float64) * 0.2 + 0.05)
            layer.execution = "fast"
    keys = list(model.state_dict())
    kinds = [type(m).__name__ for m in model.features]
    view, fused = fused_training_view(model)
    assert fused == 3
    assert [type(m).__name__ for m in view.features] == [
        "FusedTargetBlock", "Identity", "Identity", "FusedTargetBlock", "Identity", "Identity",
        "FusedTargetBlock", "Identity"]
    # the model is untouched; the view holds the very same parameters
    assert [type(m).__name__ for m in model.features] == kinds and list(model.state_dict()) == keys
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64, generator=gen)
    target = torch.tensor([0, 3, 5, 9])
    grads = []
    for net in (model, view):
        model.zero_grad(set_to_none=True)
        out = net(x)
        F.cross_entropy(out, target).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-9, atol=1e-11)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-11)
    # train()/eval() on the view reach the shared leaves
    view.eval()
    assert not model.features[0].training and not model.head[5].training


def test_view_fuses_only_exact_runs():
    net = nn.Sequential(
        TargetConv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2),   # ReLU fused, this pool is not
        TargetConv2d(4, 4, 3), nn.Tanh(),                              # nothing fused
        nn.Sequential(TargetConv2d(4, 4, 3), nn.ReLU(inplace=True)),   # nested: ReLU fused
    )
    view, fused = fused_training_view(net)
    assert fused == 2
    assert isinstance(view[0], FusedTargetBlock) and view[0].pool == 1
    assert isinstance(view[2], nn.MaxPool2d) and view[3] is net[3] and isinstance(view[5][0], FusedTargetBlock)
    assert isinstance(net[1], nn.ReLU) and isinstance(net[5][1], nn.ReLU)
    x = torch.randn(2, 1, 17, 17)
    torch.testing.assert_close(view(x), net(x))
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    assert fused_training_view(plain) == (plain, 0)
