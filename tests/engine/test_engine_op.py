"""``torch.ops.tkn.roi_conv2d``: the operator's values for every strategy, its fake implementation (opcheck), and
frozen models through ``torch.export.export`` and ``torch.compile(fullgraph=True)``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tkn.engine import FrozenTargetConv2d, freeze, native
from tkn.engine import op as roi_op
from tkn.layers import TargetConv2d
from tkn.windowfile import load_windows
from helpers_engine import random_rois_

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.reason()}")


def _arguments(c_in=16, c_out=20, hw=(9, 10), batch=3, seed=0, pool=2, affine=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, *hw, generator=g)
    w = torch.randn(c_out, c_in, 3, 3, generator=g)
    roi = torch.randint(0, min(hw), (c_out, 4), generator=g)
    roi[:, 1] = torch.maximum(roi[:, 0] + 1, roi[:, 1]).clamp(max=hw[0])
    roi[:, 3] = torch.maximum(roi[:, 2] + 1, roi[:, 3]).clamp(max=hw[1])
    mask = torch.zeros(c_out, *hw)
    for c, (y0, y1, x0, x1) in enumerate(roi.tolist()):
        mask[c, y0:y1, x0:x1] = 1
    window = (torch.rand(c_out, *hw, generator=g) + 0.5) * mask
    scale = torch.randn(c_out, generator=g) if affine else None
    shift = torch.randn(c_out, generator=g) if affine else None
    bias = torch.randn(c_out, generator=g)
    return x, w, window, roi.to(torch.int64), bias, scale, shift, pool


@needs_native
@pytest.mark.parametrize("strategy", native.STRATEGIES)
@pytest.mark.parametrize("batch", [1, 3])
def test_operator_equals_its_reference_and_passes_opcheck(strategy, batch):
    x, w, window, roi, bias, scale, shift, pool = _arguments(batch=batch)
    args = (x, w, window, roi, bias, scale, shift, None, None, [1, 1], [1, 1, 1, 1], [1, 1], True, pool, strategy)
    got = torch.ops.tkn.roi_conv2d(*args)
    ref = roi_op.reference_roi_conv2d(x, w, window, roi, bias, scale, shift, None, [1, 1], [1, 1, 1, 1], [1, 1],
                                      True, pool)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    torch.library.opcheck(torch.ops.tkn.roi_conv2d.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_operator_gradients_pass_gradcheck():
    """The registered autograd formula against finite differences (float64), for every differentiable argument;
    with ReLU and pool on whole-map ROIs and windows away from zero (no ties at the pool's maximum)."""
    x, w, window, roi, bias, scale, shift, _ = _arguments(c_in=3, c_out=4, hw=(6, 7), batch=2)
    d = [t.double().requires_grad_(True) for t in (x, w, window, bias, scale, shift)]
    residual = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)

    def plain(x, w, window, bias, scale, shift, residual):
        return torch.ops.tkn.roi_conv2d(x, w, window, roi, bias, scale, shift, None, residual, [1, 1], [1, 1, 1, 1],
                                        [1, 1], False, 1, "groups")

    assert torch.autograd.gradcheck(plain, (*d, residual))
    whole = torch.tensor([[0, 6, 0, 7]] * 4)
    positive = (torch.rand(4, 6, 7, dtype=torch.float64) + 0.5).requires_grad_(True)

    def pooled(x, w, window, bias):
        return torch.ops.tkn.roi_conv2d(x, w, window, whole, bias, None, None, None, None, [1, 1], [1, 1, 1, 1],
                                        [1, 1], True, 2, "groups")

    assert torch.autograd.gradcheck(pooled, (d[0], d[1], positive, d[3]))


@needs_native
def test_native_forward_backpropagates_like_the_dense_formula():
    """float32 on the native kernel: the gradients equal autograd through conv2d · window → ReLU → max-pool."""
    x, w, window, roi, bias, _, _, pool = _arguments(affine=False)
    xa, wa = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = torch.ops.tkn.roi_conv2d(xa, wa, window, roi, bias, None, None, None, None, [1, 1], [1, 1, 1, 1], [1, 1],
                                 True, pool, "reduce")
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    xb, wb = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = torch.nn.functional.max_pool2d((torch.nn.functional.conv2d(xb, wb, bias, padding=1) * window).relu(), pool)
    ref.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wa.grad, wb.grad, rtol=1e-4, atol=1e-5)


def test_operator_runs_the_reference_where_the_kernel_cannot():
    """Without the native kernel (or for float64) the operator computes the same values with PyTorch."""
    x, w, window, roi, bias, scale, shift, pool = _arguments()
    args = (x.double(), w.double(), window.double(), roi, bias.double(), scale.double(), shift.double(), None, None,
            [1, 1], [1, 1, 1, 1], [1, 1], False, pool, "groups")
    got = torch.ops.tkn.roi_conv2d(*args)
    y = torch.nn.functional.conv2d(x.double(), w.double(), bias.double(), padding=1) * window.double()
    y = y * scale.double()[:, None, None] + shift.double()[:, None, None]
    torch.testing.assert_close(got, torch.nn.functional.max_pool2d(y, pool), rtol=1e-10, atol=1e-10)


@needs_native
def test_frozen_model_exports_with_the_operator():
    model, shape, _ = load_windows("tkn6-mnist-12.9x")
    x = torch.rand(5, *shape)
    frozen = freeze(model, x, measure=False)
    assert any(m.plan.mode == "native" for m in frozen.modules() if isinstance(m, FrozenTargetConv2d))
    exported = torch.export.export(frozen, (x,))
    assert "torch.ops.tkn.roi_conv2d" in exported.graph_module.code
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)


@needs_native
def test_frozen_model_compiles_in_one_graph():
    torch.manual_seed(0)
    net = nn.Sequential(TargetConv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2), TargetConv2d(32, 8, 3), nn.Flatten(),
                        nn.Linear(8 * 5 * 5, 3))
    for i, layer in enumerate((net[0], net[3])):
        random_rois_(layer, i, s_range=(0.05, 0.3))
    net.eval()
    x = torch.rand(4, 16, 10, 10)
    frozen = freeze(net, x, measure=False)
    assert {m.plan.mode for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)} == {"native"}
    torch._dynamo.reset()
    compiled = torch.compile(frozen, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-5)


def test_triton_backend_equals_eval_under_the_interpreter(monkeypatch):
    """freeze(backend="triton") on a targetized CNN with small, scattered ROIs: every target layer runs the Triton
    kernel through torch.ops.tkn.roi_conv2d (here under Triton's CPU interpreter) and the model equals eval."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # tests/conftest.py set it before Triton was imported
    import tkn
    from tkn.engine import triton_roi

    assert triton_roi.available(), triton_roi.reason()
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1, bias=True), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 5 * 5, 4))
    net = tkn.targetize(cnn, min_roi=1)
    for i, layer in enumerate(layer for _, layer in tkn.target_layers(net)):
        random_rois_(layer, i, s_range=(0.02, 0.2))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.rand(3, 3, 11, 10)
    frozen = freeze(net, x, backend="triton")
    plans = [m.plan.label for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)]
    assert plans == ["triton", "triton"]
    with torch.no_grad():
        for batch in (1, 3):
            torch.testing.assert_close(frozen(x[:batch]), net(x[:batch]), rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='triton' but the Triton kernel cannot run here"):
            freeze(net, x, backend="triton")
