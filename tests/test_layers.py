"""AR layers and TargetConv2d against the naive float64 references, gradcheck, and errors."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn

import tkn
from tkn import functional as TF
from reference import clip_ref, target_conv2d_ref, window_ref


def _randomise(layer, seed, m_range=(-0.1, 1.1), s_range=(0.02, 1.2)):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.m.copy_(torch.rand(layer.m.shape, generator=g) * (m_range[1] - m_range[0]) + m_range[0])
        layer.s.copy_(torch.rand(layer.s.shape, generator=g) * (s_range[1] - s_range[0]) + s_range[0])
    return layer


# -- AttentiveRegularization1d / 2d ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "cauchy"])
def test_ar1d_matches_reference(kind):
    ar = _randomise(tkn.AttentiveRegularization1d(5, window=kind, dtype=torch.float64), 1)
    assert ar.m.shape == (5, 1) and ar.s.shape == (5, 1)
    x = torch.randn(3, 5, 11, dtype=torch.float64)
    y = ar(x)
    for c in range(5):
        m, s = clip_ref(ar.m[c, 0].item(), ar.s[c, 0].item(), 1, 11, TF.SCALE_MAX)
        np.testing.assert_allclose(y[:, c].detach().numpy(), x[:, c].numpy() * window_ref(11, m, s, kind), rtol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "cauchy"])
@pytest.mark.parametrize("hw", [(9, 9), (6, 13)])
def test_ar2d_matches_reference(kind, hw):
    ar = _randomise(tkn.AttentiveRegularization2d(4, window=kind, dtype=torch.float64), 2)
    x = torch.randn(2, 4, *hw, dtype=torch.float64)
    y = ar(x).detach().numpy()
    for c in range(4):
        my, sy = clip_ref(ar.m[c, 0].item(), ar.s[c, 0].item(), 1, hw[0], TF.SCALE_MAX)
        mx, sx = clip_ref(ar.m[c, 1].item(), ar.s[c, 1].item(), 1, hw[1], TF.SCALE_MAX)
        f = np.outer(window_ref(hw[0], my, sy, kind), window_ref(hw[1], mx, sx, kind))
        np.testing.assert_allclose(y[:, c], x[:, c].numpy() * f, rtol=1e-12)


def test_ar_initialisation_and_repr():
    ar = tkn.AttentiveRegularization2d(3)
    assert torch.all(ar.m == 0.5) and torch.all(ar.s == 1.0)
    assert repr(ar) == "AttentiveRegularization2d(3, window='cauchy')"
    with torch.no_grad():
        ar.m.zero_()
    ar.reset_parameters()
    assert torch.all(ar.m == 0.5)


def test_ar_gradcheck():
    ar = _randomise(tkn.AttentiveRegularization2d(2, window="gaussian", dtype=torch.float64), 3, (0.2, 0.8), (0.3, 1.0))
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def f(x, m, s):
        return torch.func.functional_call(ar, {"m": m, "s": s}, (x,))

    params = (ar.m.detach().clone().requires_grad_(), ar.s.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize(
    "layer, x, exc, match",
    [
        (tkn.AttentiveRegularization1d(3), torch.randn(2, 3, 4, 4), ValueError, r"rank 3 \(N, C, L\)"),
        (tkn.AttentiveRegularization2d(3), torch.randn(2, 4, 5, 5), ValueError,
         "has 4 channels but the layer expects 3"),
        (tkn.AttentiveRegularization2d(3), np.zeros((2, 3, 5, 5)), TypeError, "must be a torch.Tensor"),
        (tkn.AttentiveRegularization2d(3), torch.zeros(2, 3, 5, 5, dtype=torch.int64), TypeError, "floating point"),
    ],
)
def test_ar_bad_input(layer, x, exc, match):
    with pytest.raises(exc, match=match):
        layer(x)


def test_ar_constructor_errors():
    with pytest.raises(ValueError, match="window must be one of"):
        tkn.AttentiveRegularization2d(3, window="box")
    with pytest.raises(ValueError, match="channels must be a positive int"):
        tkn.AttentiveRegularization1d(0)


# -- TargetConv2d -----------------------------------------------------------------------------------
CASES = [
    # in, out, kernel, stride, padding, dilation, groups, hw
    (3, 5, 3, 1, "same", 1, 1, (9, 9)),
    (2, 4, 5, 1, "same", 1, 1, (8, 11)),
    (4, 6, 1, 1, "same", 1, 1, (7, 6)),
    (3, 4, (3, 2), 1, "same", 1, 1, (8, 9)),
    (3, 4, 3, 2, 1, 1, 1, (9, 10)),
    (4, 4, 3, 1, "same", 2, 2, (10, 9)),
    (2, 3, 3, 1, "valid", 1, 1, (7, 8)),
    (4, 8, 3, (2, 1), (0, 2), (1, 2), 4, (11, 9)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}")
@pytest.mark.parametrize("kind", ["gaussian", "cauchy"])
def test_target_conv_matches_naive_reference(case, kind):
    cin, cout, k, stride, padding, dilation, groups, hw = case
    layer = _randomise(
        tkn.TargetConv2d(cin, cout, k, stride, padding, dilation, groups, window=kind, dtype=torch.float64),
        zlib.crc32(repr(case).encode()) % 1000,  # not hash(): that changes with PYTHONHASHSEED
    )
    x = torch.randn(2, cin, *hw, dtype=torch.float64)
    ref, ref_rois = target_conv2d_ref(
        x.numpy(), layer.weight.detach().numpy(), layer.m.detach().numpy(), layer.s.detach().numpy(), kind,
        layer.stride, (layer.pad[2], layer.pad[3], layer.pad[0], layer.pad[1]), layer.dilation, groups,
    )
    assert layer.rois(*ref.shape[-2:]).tolist() == [list(r) for r in ref_rois]
    for execution in ("dense", "sliced"):
        layer.execution = execution
        np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-12, err_msg=execution)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_sliced_equals_dense_batches_and_noncontiguous(batch):
    layer = _randomise(tkn.TargetConv2d(6, 16, 3), 7, s_range=(0.05, 0.6))
    x = torch.randn(batch, 12, 15, 13)[:, ::2]  # non-contiguous channel slice
    assert batch == 0 or not x.is_contiguous()
    dense = layer(x)
    layer.execution = "sliced"
    torch.testing.assert_close(layer(x), dense, rtol=1e-5, atol=1e-6)
    assert dense.shape == (batch, 16, 15, 13)


def test_sliced_with_reflect_padding_reads_the_halo():
    layer = _randomise(tkn.TargetConv2d(2, 3, 3, padding=1, padding_mode="reflect", dtype=torch.float64), 8)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False, dtype=torch.float64)
    conv.weight.data.copy_(layer.weight.data)
    expected = conv(x) * layer.attention(8, 8) * TF.roi_mask(layer.rois(8, 8), 8, 8)
    for execution in ("dense", "sliced"):
        layer.execution = execution
        torch.testing.assert_close(layer(x), expected)


def test_bias_is_added_before_the_window():
    layer = _randomise(tkn.TargetConv2d(2, 3, 3, bias=True, dtype=torch.float64), 9)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    ref, _ = target_conv2d_ref(x.numpy(), layer.weight.detach().numpy(), layer.m.detach().numpy(),
                               layer.s.detach().numpy(), "cauchy", padding=(1, 1, 1, 1))
    f = (layer.attention(7, 7) * TF.roi_mask(layer.rois(7, 7), 7, 7)).detach().numpy()
    ref += layer.bias.detach().numpy()[None, :, None, None] * f[None]
    for execution in ("dense", "sliced"):
        layer.execution = execution
        np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_initialisation_covers_the_map_and_equals_conv_times_window():
    torch.manual_seed(0)
    layer = tkn.TargetConv2d(3, 8, 5)
    assert torch.all(layer.m == 0.5) and torch.all(layer.s == 1.0)
    assert layer.rois(28, 28).tolist() == [[0, 28, 0, 28]] * 8
    assert layer.macs(28, 28) == 28 * 28 * 3 * 25 * 8
    # He initialisation: std sqrt(2 / fan_in)
    big = tkn.TargetConv2d(64, 256, 3)
    assert big.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.02)
    assert big.bias is None


def test_tiny_scales_are_clipped_to_the_kernel_and_stay_finite():
    layer = tkn.TargetConv2d(2, 4, 5)
    with torch.no_grad():
        layer.s.fill_(1e-9)
        layer.m.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5], [0.03, 0.97]]))
    # s is clipped to 5 / (sqrt(2) * 20), so the half-width s / sqrt(2) is 0.125 (2.5 pixels):
    # m = 0.5 -> [floor(7.5), ceil(12.5)) = [7, 13); m = 0 -> [0, 3); m = 0.03 -> [floor(-1.9), ceil(3.1)) = [0, 4)
    assert layer.rois(20, 20).tolist() == [[0, 3, 0, 3], [17, 20, 17, 20], [7, 13, 7, 13], [0, 4, 16, 20]]
    y = layer(torch.randn(2, 2, 20, 20))
    assert torch.isfinite(y).all() and (y != 0).any()
    y.sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.m.grad).all()


def test_gradcheck_weight_and_window_params():
    layer = _randomise(tkn.TargetConv2d(2, 3, 3, dtype=torch.float64), 11, (0.2, 0.8), (0.4, 1.0))
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}

    for execution in ("dense", "sliced"):
        layer.execution = execution

        def f(x, w, m, s):
            return torch.func.functional_call(layer, {"weight": w, "m": m, "s": s}, (x,))

        assert torch.autograd.gradcheck(f, (x, params["weight"], params["m"], params["s"]))


def test_sliced_gradients_equal_dense_gradients():
    layer = _randomise(tkn.TargetConv2d(4, 8, 3, dtype=torch.float64), 12, s_range=(0.1, 0.7))
    x = torch.randn(3, 4, 12, 12, dtype=torch.float64, requires_grad=True)
    grads = {}
    for execution in ("dense", "sliced"):
        layer.execution = execution
        layer.zero_grad()
        x.grad = None
        (layer(x) ** 2).sum().backward()
        grads[execution] = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(grads["dense"], grads["sliced"]):
        torch.testing.assert_close(a, b)


def test_attention_is_window_outer_product_of_clipped_params():
    layer = _randomise(tkn.TargetConv2d(1, 3, 3, dtype=torch.float64), 13)
    f = layer.attention(10, 7)
    for c in range(3):
        my, sy = clip_ref(layer.m[c, 0].item(), layer.s[c, 0].item(), 3, 10, TF.SCALE_MAX)
        mx, sx = clip_ref(layer.m[c, 1].item(), layer.s[c, 1].item(), 3, 7, TF.SCALE_MAX)
        np.testing.assert_allclose(f[c].detach().numpy(), np.outer(window_ref(10, my, sy, "cauchy"),
                                                                    window_ref(7, mx, sx, "cauchy")), rtol=1e-12)


def test_device_dtype_passthrough_and_repr():
    layer = tkn.TargetConv2d(3, 4, 3, dtype=torch.float64, device="cpu", l2=2e-4, window="gaussian")
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    assert layer.m.shape == (4, 2) and layer.s.shape == (4, 2) and layer.weight.shape == (4, 3, 3, 3)
    assert repr(layer) == (
        "TargetConv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding='same', bias=False, "
        "window='gaussian', l2=0.0002)"
    )
    assert layer.l2 == 2e-4 and layer.window == "gaussian"


def test_state_dict_round_trip():
    a = _randomise(tkn.TargetConv2d(3, 4, 3), 14)
    b = tkn.TargetConv2d(3, 4, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(a(x), b(x))
    assert set(a.state_dict()) == {"weight", "m", "s"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window="box"), "window must be one of"),
        (dict(l2=-1.0), "l2 must be a finite non-negative number"),
        (dict(l2=float("nan")), "l2 must be a finite non-negative number"),
        (dict(groups=2), r"divisible by groups"),
        (dict(stride=2), "padding='same' requires stride 1"),
        (dict(padding="full"), "padding must be"),
        (dict(padding_mode="mirror"), "padding_mode must be one of"),
        (dict(kernel_size=0), "kernel_size must be a positive int"),
        (dict(execution="turbo"), "execution must be"),
    ],
)
def test_target_conv_constructor_errors(kwargs, match):
    args = dict(in_channels=3, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tkn.TargetConv2d(**args)


def test_target_conv_forward_errors():
    layer = tkn.TargetConv2d(3, 4, 5, padding="valid")
    with pytest.raises(ValueError, match=r"rank 4 \(N, C_in, H, W\)"):
        layer(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="has 2 channels but the layer expects 3"):
        layer(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="too small for kernel"):
        layer(torch.randn(1, 3, 4, 8))
    with torch.no_grad():
        layer.s[1, 0] = float("nan")
    with pytest.raises(ValueError, match="s must be finite"):
        layer(torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        layer.s.fill_(1.0)
        layer.m[0, 1] = float("inf")
    with pytest.raises(ValueError, match="m must be finite"):
        layer(torch.randn(1, 3, 8, 8))


def _small_tkn():
    torch.manual_seed(0)
    model = nn.Sequential(tkn.TargetConv2d(1, 8, 3), nn.ReLU(), tkn.TargetConv2d(8, 4, 3, window="gaussian"))
    for layer in model[0], model[2]:
        _randomise(layer, 15, s_range=(0.2, 0.8))
    return model, torch.randn(2, 1, 12, 12)


def test_jit_trace_matches_eager():
    model, x = _small_tkn()
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))


def test_compile_full_graph_matches_eager():
    model, x = _small_tkn()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    model, x = _small_tkn()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_correlated_gaussian_window():
    ar = tkn.AttentiveRegularization2d(2, window="gaussian", correlated=True, dtype=torch.float64)
    assert torch.equal(ar.rho, torch.zeros(2, dtype=torch.float64))
    plain = tkn.AttentiveRegularization2d(2, window="gaussian", dtype=torch.float64)
    torch.testing.assert_close(ar.attention(6, 9), plain.attention(6, 9))  # rho = 0: separable
    with torch.no_grad():
        ar.rho.copy_(torch.tensor([0.5, -2.0]))  # the second is clipped to -RHO_MAX
        ar.m.copy_(torch.tensor([[0.4, 0.6], [0.5, 0.5]]))
        ar.s.copy_(torch.tensor([[0.5, 0.8], [1.0, 0.7]]))
    f = ar.attention(6, 9).detach().numpy()
    for c, rho in enumerate([0.5, -TF.RHO_MAX]):
        for i in range(6):
            for j in range(9):
                zy = ((i + 0.5) / 6 - ar.m[c, 0].item()) / (ar.s[c, 0].item() / 2)
                zx = ((j + 0.5) / 9 - ar.m[c, 1].item()) / (ar.s[c, 1].item() / 2)
                assert f[c, i, j] == pytest.approx(np.exp(-0.5 * (zy * zy - 2 * rho * zy * zx + zx * zx)), rel=1e-12)
    with pytest.raises(ValueError, match="correlated=True needs window='gaussian'"):
        tkn.AttentiveRegularization2d(2, correlated=True)
