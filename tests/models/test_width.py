"""The ``width`` multiplier of CNN6/TKN6 and DN10/TDN10: exact params and MACs from the layer formulas."""
from __future__ import annotations

import math

import pytest
import torch

from tkn.flops import count
from tkn.models import create_model
from tkn.training import resolve_config
from tkn.training.components import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Channel counts written out by hand: max(1, round(c * width)) of CNN6's 256, 256, 128 | 328, 192
# and of DN10's growth rate 12.
CNN6_CHANNELS = {
    1.0: ((256, 256, 128), (328, 192)),
    0.5: ((128, 128, 64), (164, 96)),
    0.25: ((64, 64, 32), (82, 48)),
    0.3: ((77, 77, 38), (98, 58)),  # 76.8, 76.8, 38.4 | 98.4, 57.6
}
DN10_GROWTH = {1.0: 12, 0.5: 6, 0.25: 3, 0.3: 4}  # 0.3 * 12 = 3.6
WIDTHS = [0.5, 0.25, 0.3]
SIZES = [28, 56]


def conv(h: int, w: int, cin: int, cout: int, k: int) -> tuple[int, int]:
    """Same-padded, bias-free convolution: (params, MACs) = (k*k*cin*cout, H*W*k*k*cin*cout)."""
    return k * k * cin * cout, h * w * k * k * cin * cout


def fc(fin: int, fout: int) -> tuple[int, int]:
    """Biased linear layer: (fin*fout + fout, fin*fout)."""
    return fin * fout + fout, fin * fout


def bn(channels: int, elements: int) -> tuple[int, int]:
    """Batch norm: 2 affine parameters per channel, one MAC per output element."""
    return 2 * channels, elements


def total(parts: list[tuple[int, int]]) -> tuple[int, int]:
    return sum(p for p, _ in parts), sum(m for _, m in parts)


def cnn6_counts(size: int, convs: tuple[int, int, int], hidden: tuple[int, int], classes: int = 10):
    """CNN6: 5x5 convs, 2x2 max pool after the first two, FC hidden[0] - FC hidden[1] - FC classes."""
    h = size
    parts, cin = [], 1
    for i, cout in enumerate(convs):
        parts.append(conv(h, h, cin, cout, 5))
        cin = cout
        if i < 2:
            h //= 2
    parts += [fc(convs[2] * h * h, hidden[0]), fc(hidden[0], hidden[1]), fc(hidden[1], classes)]
    return total(parts)


def dn10_counts(size: int, growth: int, classes: int = 10):
    """DN10: stem 3x3 to 2g; 3 blocks of 2 x [BN, 3x3 conv g]; transitions BN + 1x1 (no compression) + pool."""
    h, c = size, 2 * growth
    parts = [conv(h, h, 1, c, 3)]
    for block in range(3):
        for _ in range(2):
            parts += [bn(c, c * h * h), conv(h, h, c, growth, 3)]
            c += growth
        if block < 2:
            parts += [bn(c, c * h * h), conv(h, h, c, c, 1)]
            h //= 2
    parts += [bn(c, c * h * h), fc(c, classes)]
    return total(parts)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("width", [1.0, *WIDTHS])
def test_cnn6_counts_match_the_layer_formulas(width, size):
    convs, hidden = CNN6_CHANNELS[width]
    report = count(create_model("cnn6", input_size=size, width=width), (1, size, size))
    assert (report.params, report.macs) == cnn6_counts(size, convs, hidden)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("width", [1.0, *WIDTHS])
def test_dn10_counts_match_the_layer_formulas(width, size):
    report = count(create_model("dn10", input_size=size, width=width), (1, size, size))
    assert (report.params, report.macs) == dn10_counts(size, DN10_GROWTH[width])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("width", WIDTHS)
def test_targeted_twins_add_four_params_per_target_channel_and_start_dense(width, size):
    convs, hidden = CNN6_CHANNELS[width]
    cases = [
        ("tkn6", cnn6_counts(size, convs, hidden), sum(convs)),
        ("tdn10", dn10_counts(size, DN10_GROWTH[width]), 6 * DN10_GROWTH[width]),
    ]
    for name, (params, macs), target_channels in cases:
        report = count(create_model(name, input_size=size, width=width), (1, size, size))
        # at initialisation every ROI covers its whole map: the MACs are the dense twin's
        assert (report.params, report.macs) == (params + 4 * target_channels, macs), name


def test_width_one_is_the_paper_model_and_keeps_the_spec():
    model = create_model("tkn6", width=1)
    assert "width" not in model.spec["kwargs"]
    assert count(model, (1, 28, 28)).params == 4_586_642 + 4 * 640
    assert count(create_model("cnn6", width=1.0), (1, 28, 28)).macs == 368_406_912


@pytest.mark.parametrize("name", ["cnn6", "tkn6", "dn10", "tdn10", "dn40"])
def test_width_is_in_the_spec_and_rebuilds(name):
    model = create_model(name, width=0.3, input_size=16).eval()
    assert model.spec["kwargs"]["width"] == 0.3 and model.width == 0.3
    rebuilt = create_model(model.spec["name"], **model.spec["kwargs"]).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_tiny_width_keeps_one_channel_per_layer():
    model = create_model("cnn6", width=1e-3)
    assert [m.out_channels for m in model.features if hasattr(m, "out_channels")] == [1, 1, 1]
    assert create_model("dn10", width=1e-3).growth_rate == 1


@pytest.mark.parametrize("bad", [0, -0.5, math.nan, math.inf, "0.5", True, None])
def test_bad_width_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"width must be a finite number > 0.*got"):
        create_model("cnn6", width=bad)


def test_models_without_a_width_multiplier_refuse_one():
    with pytest.raises(ValueError, match=r"model 'stn' has no width multiplier.*cnn6.*dn10"):
        create_model("stn", width=0.5, in_channels=3, input_size=32)
    assert create_model("stn", width=1.0, in_channels=3, input_size=32).spec["name"] == "stn"


def test_width_reaches_the_model_from_a_training_config():
    cfg = resolve_config(None, {"model": "cnn6"}, ["width=0.5"])
    assert cfg.width == 0.5
    model = build_model(cfg, 10, (1, 28, 28))
    assert (model.width, model.spec["kwargs"]["width"]) == (0.5, 0.5)
    assert count(model, (1, 28, 28)).macs == cnn6_counts(28, *CNN6_CHANNELS[0.5])[1]
    with pytest.raises(ValueError, match="width must be a finite number > 0, got 0"):
        resolve_config(None, {"model": "cnn6"}, ["width=0"])
