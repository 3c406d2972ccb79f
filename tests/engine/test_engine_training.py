"""The fast training path: values and gradients (input, weight, bias, m, s) equal the dense semantics in float64."""
from __future__ import annotations

import pytest
import torch

from tkn import functional as TF
from tkn.ops.fast_conv import fast_target_conv2d
from tkn.layers import TargetConv2d


def _grads(fn, x, w, b, m, s, g):
    for t in (x, w, b, m, s):
        t.grad = None
    y = fn(x, w, m, s, b)
    (y * g).sum().backward()
    return [y.detach().clone()] + [t.grad.clone() for t in (x, w, b, m, s)]


@pytest.mark.parametrize("kernel,hw,kwargs", [
    (3, (11, 9), {}),
    (5, (12, 12), {}),
    (1, (7, 10), {}),
    (3, (13, 11), {"stride": 2, "padding": 1}),
    (3, (12, 12), {"dilation": 2}),
    (3, (9, 9), {"padding": "valid"}),
])
@pytest.mark.parametrize("window", ["cauchy", "gaussian"])
def test_values_and_gradients_equal_dense(kernel, hw, kwargs, window, monkeypatch):
    from tkn.ops import fast_conv as training

    assembled = []
    original = training._Assemble.apply
    monkeypatch.setattr(training._Assemble, "apply", lambda *a: assembled.append(len(a[1])) or original(*a))
    # tiles of 3 pixels: several blocks, and channels split over tiles, even on these small maps
    monkeypatch.setattr(training, "train_grid", lambda h, w, tile=3: (max(1, round(h / 3)), max(1, round(w / 3))))
    gen = torch.Generator().manual_seed(kernel * 7 + hw[0])
    c_in, c_out = 3, 14
    x = torch.randn(2, c_in, *hw, dtype=torch.float64, generator=gen).requires_grad_()
    w = torch.randn(c_out, c_in, kernel, kernel, dtype=torch.float64, generator=gen).requires_grad_()
    b = torch.randn(c_out, dtype=torch.float64, generator=gen).requires_grad_()
    # some centres outside [0, 1] and some tiny scales: the clipping must be differentiated the same way
    m = (torch.rand(c_out, 2, dtype=torch.float64, generator=gen) * 1.2 - 0.1).requires_grad_()
    s = (torch.rand(c_out, 2, dtype=torch.float64, generator=gen) * 0.5 + 0.01).requires_grad_()
    y_dense = TF.target_conv2d(x, w, m, s, b, window=window, **kwargs)
    g = torch.randn(y_dense.shape, dtype=torch.float64, generator=gen)
    dense = _grads(lambda *a: TF.target_conv2d(*a, window=window, **kwargs), x, w, b, m, s, g)
    fast = _grads(lambda *a: fast_target_conv2d(*a, window=window, dense_fraction=10.0, **kwargs),
                  x, w, b, m, s, g)
    for name, d, f in zip(["y", "x", "weight", "bias", "m", "s"], dense, fast):
        torch.testing.assert_close(f, d, rtol=1e-9, atol=1e-10, msg=lambda msg, n=name: f"{n}: {msg}")
    assert assembled and assembled[0] > 1  # the block path ran, with several blocks
    # the window parameters get gradients only through F inside the ROIs: some are exactly zero here
    assert fast[4].abs().sum() > 0


def test_layer_execution_fast_trains_like_dense():
    torch.manual_seed(0)
    layer = TargetConv2d(4, 24, 3, bias=True, execution="fast").double()
    with torch.no_grad():
        layer.m.uniform_(0.1, 0.9)
        layer.s.uniform_(0.1, 0.3)
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 24, 16, 16, dtype=torch.float64)
    results = {}
    for mode in ("dense", "fast"):
        layer.execution = mode
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = layer(x)
        (y * g).sum().backward()
        results[mode] = [y.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]
    for d, f in zip(results["dense"], results["fast"]):
        torch.testing.assert_close(f, d, rtol=1e-9, atol=1e-10)
    assert "fast" in repr(layer)


def test_input_without_grad_and_fallbacks():
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    m, s = torch.rand(6, 2), torch.full((6, 2), 0.2)
    x = torch.randn(2, 2, 10, 10)
    y = fast_target_conv2d(x, w, m, s, dense_fraction=10.0)
    y.sum().backward()
    assert w.grad is not None
    ref = TF.target_conv2d(x, w, m, s)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # groups and reflect padding run the dense reference
    wg = torch.randn(6, 1, 3, 3)
    torch.testing.assert_close(fast_target_conv2d(x, wg, m, s, groups=2), TF.target_conv2d(x, wg, m, s, groups=2))
    torch.testing.assert_close(fast_target_conv2d(x, w, m, s, padding_mode="reflect"),
                               TF.target_conv2d(x, w, m, s, padding_mode="reflect"))


def test_bad_execution_is_rejected():
    with pytest.raises(ValueError, match="execution"):
        TargetConv2d(2, 4, 3, execution="turbo")
