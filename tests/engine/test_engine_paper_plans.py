"""The plans freeze chooses for TKN6 and TResNet-18 (modelled, ``measure=False``: deterministic), layer by
layer, with what is fused, permuted and skipped around them; and the frozen models equal ``eval()``."""
from __future__ import annotations

import pytest
import torch

from helpers_engine import needs_native
from tkn.engine import FrozenSparseLinear, FrozenTargetConv2d, freeze, native
from tkn.layers import TargetConv2d
from tkn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: ``(layer, repr, in_perm set, blocks reading a channel range, input support set)`` per frozen layer
TKN6_NATIVE = [
    ("features.0", "(1, 256, input_hw=(28, 28), plan=native, relu, pool=2)", False, 0, False),
    ("features.3", "(256, 256, input_hw=(14, 14), plan=native, relu, pool=2)", False, 0, True),
    ("features.6", "(256, 128, input_hw=(7, 7), plan=native, relu)", False, 0, True),
]
TKN6_TORCH = [
    ("features.0", "(1, 256, input_hw=(28, 28), plan=tiles, blocks=4, active=256, relu, pool=2, permuted output)",
     False, 0, False),
    ("features.3", "(256, 256, input_hw=(14, 14), plan=tiles, blocks=16, active=256, relu, pool=2, permuted output)",
     True, 16, True),
    ("features.6", "(256, 128, input_hw=(7, 7), plan=tiles, blocks=5, active=128, relu)", True, 0, True),
]
TKN6_REPLACED = ["features.1: Identity", "features.2: Identity", "features.4: Identity", "features.5: Identity",
                 "features.7: Identity", "head.1: FrozenSparseLinear"]


def _tresnet_native() -> list[tuple]:
    rows = []
    for stage, (cin, c, hw) in enumerate([(64, 64, 28), (64, 128, 28), (128, 256, 14), (256, 512, 7)], 1):
        out_hw = hw if stage == 1 else (hw + 1) // 2
        plan = "dense" if stage == 4 else "native"
        for block in (0, 1):
            first_in, first_hw = (cin, hw) if block == 0 else (c, out_hw)
            end = "" if stage == 4 else ", + residual, relu"
            rows.append((f"layer{stage}.{block}.conv1",
                         f"({first_in}, {c}, input_hw=({first_hw}, {first_hw}), plan={plan}, affine, relu)",
                         False, 0, False))
            rows.append((f"layer{stage}.{block}.conv2",
                         f"({c}, {c}, input_hw=({out_hw}, {out_hw}), plan={plan}, affine{end})", False, 0, True))
    return rows


TRESNET_REPLACED = ["bn1: Identity", "layer2.0.downsample.1: Identity", "layer3.0.downsample.1: Identity",
                    "layer4.0.downsample.1: Identity", "dropout: Identity"]


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TargetConv2d):
                m.m.copy_(torch.rand(m.m.shape, generator=g))
                m.s.copy_(torch.rand(m.s.shape, generator=g) * 0.3 + 0.05)
    return model, torch.randn(4, model.in_channels, *model.input_size, generator=g)


def _rows(frozen: torch.nn.Module) -> list[tuple]:
    return [(n, repr(m).removeprefix("FrozenTargetConv2d"), m.in_perm is not None,
             sum(1 for r in m.input_ranges if r), m.input_support is not None)
            for n, m in frozen.named_modules() if isinstance(m, FrozenTargetConv2d)]


def _replaced(frozen: torch.nn.Module) -> list[str]:
    return [f"{n}: {type(m).__name__}" for n, m in frozen.named_modules()
            if isinstance(m, (torch.nn.Identity, FrozenSparseLinear))]


def _check(model, frozen, x) -> None:
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(frozen(x), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@needs_native
def test_tkn6_native_plans():
    model, x = _model("tkn6")
    frozen = freeze(model, x, measure=False)
    assert _rows(frozen) == TKN6_NATIVE and _replaced(frozen) == TKN6_REPLACED
    assert type(frozen).__name__ == "CNN6"  # only modules were fused: the model keeps its class and checks
    _check(model, frozen, x)


def test_tkn6_pytorch_plans(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    model, x = _model("tkn6")
    frozen = freeze(model, x, measure=False)
    assert _rows(frozen) == TKN6_TORCH and _replaced(frozen) == TKN6_REPLACED
    _check(model, frozen, x)


@needs_native
def test_tresnet18_native_plans():
    model, x = _model("tresnet18")
    frozen = freeze(model, x, measure=False)
    assert _rows(frozen) == _tresnet_native() and _replaced(frozen) == TRESNET_REPLACED
    _check(model, frozen, x)
