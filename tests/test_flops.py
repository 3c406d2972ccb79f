"""Params and the paper's FLOPs: exact counts from the layer formulas, the paper's tables, ROI-aware MACs, CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tkn.checkpoint import save_checkpoint
from tkn.cli import main
from tkn.convert import target_layers
from tkn.engine import freeze
from tkn.flops import FlopReport, count
from tkn.layers import TargetConv2d
from tkn.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


# -- independent references: the layer formulas written out by hand ---------------------------------


def conv_counts(h, w, cin, cout, k):
    """Same-padded, bias-free conv: (params, MACs)."""
    return k * k * cin * cout, h * w * k * k * cin * cout


def bn_counts(elements, channels):
    return 2 * channels, elements


def fc_counts(fin, fout):
    return fin * fout + fout, fin * fout


def cnn6_reference(h, w, cin, classes):
    p = m = 0
    for cout in (256, 256, 128):
        dp, dm = conv_counts(h, w, cin, cout, 5)
        p, m, cin = p + dp, m + dm, cout
        if cout == 256:
            h, w = h // 2, w // 2
    for fin, fout in ((128 * h * w, 328), (328, 192), (192, classes)):
        dp, dm = fc_counts(fin, fout)
        p, m = p + dp, m + dm
    return p, m


def densenet_reference(h, w, cin, growth, layers, bottleneck, compression, classes):
    """3 blocks; stem 3x3 to 2*growth; BN before every conv and at the end; transitions 1x1 + avg pool."""
    totals = [0, 0]

    def add(counts):
        totals[0] += counts[0]
        totals[1] += counts[1]

    c = 2 * growth
    add(conv_counts(h, w, cin, c, 3))
    for block in range(3):
        for _ in range(layers):
            cin3 = c
            if bottleneck:
                add(bn_counts(h * w * c, c))
                add(conv_counts(h, w, c, bottleneck * growth, 1))
                cin3 = bottleneck * growth
            add(bn_counts(h * w * cin3, cin3))
            add(conv_counts(h, w, cin3, growth, 3))
            c += growth
        if block < 2:
            out = int(c * compression)
            add(bn_counts(h * w * c, c))
            add(conv_counts(h, w, c, out, 1))
            c, h, w = out, h // 2, w // 2
    add(bn_counts(h * w * c, c))
    add(fc_counts(c, classes))
    return tuple(totals)


def stn_reference(h, w, cin, classes):
    p = m = 0

    def stages(h, w, cin, chans):
        nonlocal p, m
        for cout, k in zip(chans, (7, 5, 3)):
            for dp, dm in (conv_counts(h, w, cin, cout, k), bn_counts(h * w * cout, cout)):
                p, m = p + dp, m + dm
            cin, h, w = cout, h // 2, w // 2
        return cin * h * w

    flat = stages(h // 2, w // 2, cin, (16, 32, 64))  # localisation network on the 2x2-pooled input
    for dp, dm in (fc_counts(flat, 128), fc_counts(128, 64), fc_counts(64, 6)):
        p, m = p + dp, m + dm
    flat = stages(h, w, cin, (128, 128, 256))
    for dp, dm in (fc_counts(flat, 96), bn_counts(96, 96), fc_counts(96, classes)):
        p, m = p + dp, m + dm
    return p, m


REFERENCES = [
    ("cnn6", dict(), (1, 28, 28), cnn6_reference(28, 28, 1, 10)),
    ("cnn6", dict(input_size=56), (1, 56, 56), cnn6_reference(56, 56, 1, 10)),
    ("dn10", dict(), (1, 28, 28), densenet_reference(28, 28, 1, 12, 2, None, 1.0, 10)),
    ("dn10", dict(), (1, 56, 56), densenet_reference(56, 56, 1, 12, 2, None, 1.0, 10)),
    ("dn40", dict(in_channels=3, input_size=32), (3, 32, 32), densenet_reference(32, 32, 3, 36, 6, 2, 0.5, 10)),
    ("dn40", dict(input_size=48, num_classes=1), (1, 48, 48), densenet_reference(48, 48, 1, 36, 6, 2, 0.5, 1)),
    ("stn", dict(in_channels=3, input_size=32, num_classes=43), (3, 32, 32), stn_reference(32, 32, 3, 43)),
]


@pytest.mark.parametrize("name, kwargs, shape, expected", REFERENCES)
def test_counts_equal_the_layer_formulas(name, kwargs, shape, expected):
    report = count(create_model(name, **kwargs), shape)
    assert (report.params, report.macs) == expected


# (name, kwargs, input, paper params, paper FLOPs or None): Tables 2-6 of the paper.
PAPER = [
    ("cnn6", dict(), (1, 28, 28), 4.59e6, 368e6),
    ("tkn6", dict(), (1, 28, 28), 4.59e6, None),
    ("cnn6", dict(input_size=56), (1, 56, 56), 10.76e6, 1470e6),
    ("tkn6", dict(input_size=56), (1, 56, 56), 10.76e6, None),
    ("dn10", dict(), (1, 28, 28), 44.7e3, 11.3e6),
    ("dn10", dict(input_size=56), (1, 56, 56), 44.7e3, 45.2e6),
    ("tdn10", dict(), (1, 28, 28), 45.0e3, None),
    ("dn40", dict(in_channels=3, input_size=32), (3, 32, 32), 0.83e6, 357e6),
    ("tdn40", dict(in_channels=3, input_size=32), (3, 32, 32), 0.83e6, None),
    ("dn40", dict(input_size=48, num_classes=1), (1, 48, 48), 0.83e6, 802e6),
    ("stn", dict(in_channels=3, input_size=32, num_classes=43), (3, 32, 32), 1.18e6, 145e6),
]


@pytest.mark.parametrize("name, kwargs, shape, params, flops", PAPER)
def test_counts_match_the_paper(name, kwargs, shape, params, flops):
    report = count(create_model(name, **kwargs), shape)
    assert report.params == pytest.approx(params, rel=0.015)
    if flops is not None:
        assert report.macs == pytest.approx(flops, rel=0.015)


def test_tstn_within_five_percent_of_the_paper():
    report = count(create_model("tstn", in_channels=3, input_size=32, num_classes=43), (3, 32, 32))
    assert report.params == pytest.approx(1.18e6, rel=0.05)
    assert report.macs == pytest.approx(145e6, rel=0.05)


@pytest.mark.parametrize("name, base", [("tkn6", "cnn6"), ("tdn10", "dn10"), ("tdn40", "dn40"), ("tstn", "stn")])
def test_targeted_macs_at_initialisation_equal_the_baseline(name, base):
    kwargs = dict(in_channels=3, input_size=32)
    targeted = count(create_model(name, **kwargs))
    baseline = count(create_model(base, **kwargs))
    assert targeted.macs == targeted.dense_macs == baseline.macs
    rows = [row for row in targeted.layers if row.roi_fraction is not None]
    assert len(rows) == len(target_layers(create_model(name, **kwargs)))
    assert all(row.roi_fraction == 1.0 for row in rows)


def test_shrunk_scales_count_only_the_rois_hand_computed():
    torch.manual_seed(0)
    layer = TargetConv2d(4, 3, 3)
    with torch.no_grad():
        # On a 16x16 map: s = 0.25 -> half-width 0.25/sqrt(2) = 0.1768, rows/cols floor(5.17)=5 .. ceil(10.83)=11: 6 px.
        layer.s[0] = torch.tensor([0.25, 0.25])
        # s = (0.25, 1): 6 rows, all 16 columns. Channel 2 keeps s = 1: the whole map.
        layer.s[1] = torch.tensor([0.25, 1.0])
    report = count(layer, (4, 16, 16))
    per_pixel = 4 * 3 * 3
    assert report.macs == (6 * 6 + 6 * 16 + 16 * 16) * per_pixel
    assert report.dense_macs == 3 * 256 * per_pixel
    assert report.layers[0].roi_fraction == pytest.approx((36 + 96 + 256) / (3 * 256))


def test_shrinking_a_tkn6_saves_the_area_factor_of_each_layer():
    model = create_model("tkn6")
    dense = count(model)
    (n1, conv1), (n2, conv2), _ = target_layers(model)
    with torch.no_grad():
        conv1.s.fill_(0.4)  # 28x28 map: rows/cols floor(6.08)=6 .. ceil(21.92)=22 -> 16x16 of 784
        conv2.s.fill_(0.4)  # 14x14 map: floor(3.04)=3 .. ceil(10.96)=11 -> 8x8 of 196
    shrunk = count(model)
    saved1 = 256 * (784 - 256) * 1 * 25
    saved2 = 256 * (196 - 64) * 256 * 25
    assert shrunk.macs == dense.macs - saved1 - saved2
    assert shrunk.dense_macs == dense.macs
    fractions = {row.name: row.roi_fraction for row in shrunk.layers}
    assert fractions[n1] == pytest.approx(256 / 784) and fractions[n2] == pytest.approx(64 / 196)


class _MacsMethod(nn.Module):
    """A stand-in for an engine layer that reports its own cost through ``macs(height, width)``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 1, 3, 3))
        self.inner = nn.Conv2d(1, 2, 3, padding=1)  # must not be counted a second time

    def macs(self, height: int, width: int) -> int:
        return 1000 * height + width

    def forward(self, x):
        return self.inner(x)


class _RoiBuffer(nn.Module):
    """A stand-in for a frozen layer that only holds its fixed ROIs ``(C, 4)`` and a 4-D weight."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 3, 3, 3))
        self.register_buffer("roi", torch.tensor([[0, 2, 1, 4], [3, 5, 0, 5]]))

    def forward(self, x):
        return x.new_zeros(x.shape[0], 2, 5, 5)


def test_engine_layers_are_counted_by_duck_typing():
    report = count(nn.Sequential(_MacsMethod()), (1, 7, 9))
    assert [(row.name, row.macs, row.dense_macs) for row in report.layers] == [("0", 7009, 2 * 63 * 9)]
    report = count(nn.Sequential(_RoiBuffer()), (3, 5, 5))
    assert report.macs == (2 * 3 + 2 * 5) * 27  # ROI areas 2x3 and 2x5, 3 in-channels x 3x3 kernel


def test_frozen_model_costs_what_its_rois_cost():
    torch.manual_seed(0)
    model = create_model("tdn10")
    with torch.no_grad():
        for _, layer in target_layers(model):
            layer.s.uniform_(0.2, 0.9)
            layer.m.uniform_(0.2, 0.8)
    live = count(model)
    try:
        frozen = freeze(model, torch.zeros(1, 1, 28, 28))
    except NotImplementedError:  # the engine is being rebuilt in another part of the project
        pytest.skip("tkn.engine.freeze is not available")
    assert count(frozen, (1, 28, 28)).macs == live.macs < live.dense_macs


def _flop_counter_macs(model: nn.Module, shape) -> int:
    """Conv and matmul FLOPs of torch's own counter (2 per MAC); bmm (the STN's affine_grid) left out."""
    aten = torch.ops.aten
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *shape))
    counts = counter.get_flop_counts()["Global"]
    flops = sum(counts.get(op, 0) for op in (aten.convolution, aten.addmm, aten.mm))
    assert flops % 2 == 0
    return flops // 2


@pytest.mark.parametrize(
    "name, kwargs",
    [("cnn6", dict()), ("dn10", dict()), ("stn", dict(in_channels=3, input_size=32, num_classes=43))],
)
def test_conv_and_linear_macs_agree_with_torch_flop_counter(name, kwargs):
    model = create_model(name, **kwargs)
    report = count(model)
    conv_fc = sum(row.macs for row in report.layers if not row.type.startswith("BatchNorm"))
    assert conv_fc == _flop_counter_macs(model, report.input_size)
    bn = sum(row.macs for row in report.layers if row.type.startswith("BatchNorm"))
    assert bn == sum(math.prod(row.output_shape) for row in report.layers if row.type.startswith("BatchNorm"))


def test_count_restores_training_mode_and_checks_arguments():
    model = create_model("dn10").train()
    model.classifier.eval()
    count(model)
    assert model.training and not model.classifier.training
    with pytest.raises(TypeError, match="nn.Module"):
        count("dn10", (1, 28, 28))
    with pytest.raises(ValueError, match="input_size"):
        count(model, (28, 28))
    with pytest.raises(ValueError, match="input_size"):
        count(nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="does not accept"):
        count(create_model("cnn6"), (1, 32, 32))
    assert count(model, torch.zeros(5, 1, 28, 28).shape).macs == count(model, "1,28,28").macs


def test_report_serialises_and_prints():
    report = count(create_model("tdn10"))
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["params"] == report.params and data["macs"] == report.macs
    assert sum(row["macs"] for row in data["layers"]) == report.macs
    assert isinstance(report, FlopReport)
    table = report.format_table()
    assert f"{report.macs:,}" in table and f"{report.params:,}" in table and "blocks.0.layer1.conv3x3.2" in table


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_agrees_with_the_python_api(capsys):
    out = _run_json(capsys, ["flops", "--model", "stn", "--input-size", "3,32,32", "--num-classes", "43", "--json"])
    report = count(create_model("stn", in_channels=3, input_size=32, num_classes=43), (3, 32, 32))
    assert out["params"] == report.params and out["macs"] == report.macs
    assert out["input_size"] == [3, 32, 32] and out["baseline"] is None and out["speedup"] is None
    assert len(out["layers"]) == len(report.layers)


def test_cli_speedup_of_a_trained_checkpoint(capsys, tmp_path):
    model = create_model("tkn6", l2=1e-3, beta=4.0)
    with torch.no_grad():
        for _, layer in target_layers(model):
            layer.s.fill_(0.4)  # see test_shrinking_a_tkn6_saves_the_area_factor_of_each_layer
    path = save_checkpoint(tmp_path / "tkn6.pt", {"model": model.spec, "model_state": model.state_dict(), "epoch": 1})
    out = _run_json(capsys, ["flops", "--checkpoint", str(path), "--json"])
    report = count(model)
    assert out["model"] == "tkn6" and out["macs"] == report.macs
    assert out["baseline"]["name"] == "cnn6"
    assert out["baseline"]["macs"] == count(create_model("cnn6")).macs == report.dense_macs
    assert out["speedup"] == pytest.approx(report.dense_macs / report.macs)
    assert out["speedup"] > 1.0


def test_cli_table_and_errors(capsys):
    assert main(["flops", "--model", "tdn10"]) == 0
    text = capsys.readouterr().out
    assert "speed-up   1.00x" in text and "baseline   dn10" in text
    assert main(["flops", "--model", "resnet"]) == 2
    assert "known models" in capsys.readouterr().err
    assert main(["flops", "--model", "cnn6", "--input-size", "1,28"]) == 2
    assert "--input-size" in capsys.readouterr().err
    for argv in (["flops"], ["flops", "--model", "tkn6", "--checkpoint", "x.pt"]):  # exactly one model source
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "--model" in capsys.readouterr().err
