"""tkn.summary.layer_table and `tkn show --table/--json`: values checked against hand computations."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import tkn
from tkn.cli import main
from tkn.summary import format_table, layer_table, totals


def hand_layer() -> nn.Module:
    """One 2->3 channel 3x3 target layer on 12x12 with parameters chosen to hit every clip."""
    layer = tkn.TargetConv2d(2, 3, 3)
    with torch.no_grad():
        layer.m.copy_(torch.tensor([[0.25, 0.5], [1.3, -0.2], [0.5, 0.5]]))
        layer.s.copy_(torch.tensor([[0.5, 0.25], [0.01, 2.0], [9.0, 1.0]]))
    return nn.Sequential(layer)


def test_layer_table_matches_hand_computation():
    (row,) = layer_table(hand_layer(), (2, 12, 12))
    # Clipped parameters: m into [0, 1]; s into [3 / (sqrt(2) * 12), 4].
    s_min = 3 / (math.sqrt(2) * 12)
    m_y, m_x = [0.25, 1.0, 0.5], [0.5, 0.0, 0.5]
    s_y, s_x = [0.5, s_min, 4.0], [0.25, 2.0, 1.0]
    for key, values in (("m_y", m_y), ("m_x", m_x), ("s_y", s_y), ("s_x", s_x)):
        assert row[f"{key}_mean"] == pytest.approx(sum(values) / 3, abs=1e-6)
        assert row[f"{key}_min"] == pytest.approx(min(values), abs=1e-6)
        assert row[f"{key}_max"] == pytest.approx(max(values), abs=1e-6)
    # ROIs by hand: (0,8)x(3,9) = 48 px, (10,12)x(0,12) = 24 px, the whole 12x12 = 144 px.
    assert row["roi_area_min"] == pytest.approx(24 / 144)
    assert row["roi_area_max"] == pytest.approx(1.0)
    assert row["roi_area_mean"] == pytest.approx(216 / 432)
    assert row["macs_roi"] == 216 * 2 * 9
    assert row["macs_dense"] == 3 * 144 * 2 * 9
    assert row["speedup"] == pytest.approx(2.0)
    assert (row["input_size"], row["output_size"], row["kernel"]) == ([12, 12], [12, 12], [3, 3])
    assert (row["in_channels"], row["out_channels"], row["window"]) == (2, 3, "cauchy")


def test_geometry_follows_the_forward_pass(small_tkn):
    rows = layer_table(small_tkn, (16, 16))  # channels inferred from the first convolution
    assert [r["layer"] for r in rows] == ["0", "3"]
    assert [r["input_size"] for r in rows] == [[16, 16], [8, 8]]
    assert [r["output_size"] for r in rows] == [[16, 16], [8, 8]]
    second = small_tkn[3]
    roi = second.rois(8, 8)
    area = ((roi[:, 1] - roi[:, 0]) * (roi[:, 3] - roi[:, 2])).sum().item()
    assert rows[1]["macs_roi"] == area * 6 * 9
    t = totals(rows)
    assert t["macs_roi"] == rows[0]["macs_roi"] + rows[1]["macs_roi"]
    assert t["channels"] == 14
    text = format_table(rows)
    assert "total (target layers)" in text and len(text.splitlines()) == 5


def test_layer_selection_and_errors(small_tkn):
    assert [r["layer"] for r in layer_table(small_tkn, (1, 16, 16), layers=["3"])] == ["3"]
    with pytest.raises(ValueError, match="not target layers"):
        layer_table(small_tkn, (1, 16, 16), layers=["7"])
    with pytest.raises(ValueError, match="input_size"):
        layer_table(small_tkn, (16,))
    with pytest.raises(TypeError, match="model"):
        layer_table("not a model", (1, 16, 16))
    assert layer_table(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 8, 8)) == []


def test_show_json_equals_the_checkpoint_parameters(tdn10_checkpoint, capsys):
    path, model = tdn10_checkpoint
    assert main(["show", "--checkpoint", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "tdn10" and report["input_shape"] == [1, 16, 16]
    names = [n for n, _ in tkn.target_layers(model)]
    assert [r["layer"] for r in report["layers"]] == names
    # Hand-check the first layer: raw parameters are inside the clip range, so they are used as they are.
    first = dict(model.named_modules())[names[0]]
    row = report["layers"][0]
    assert row["output_size"] == [16, 16]
    assert row["m_x_mean"] == pytest.approx(first.m[:, 1].mean().item(), abs=1e-6)
    assert row["s_y_max"] == pytest.approx(first.s[:, 0].max().item(), abs=1e-6)
    assert row["m_y_min"] == pytest.approx(first.m[:, 0].min().item(), abs=1e-6)
    roi = first.rois(16, 16)
    area = ((roi[:, 1] - roi[:, 0]) * (roi[:, 3] - roi[:, 2])).to(torch.float64)
    assert row["roi_area_mean"] == pytest.approx(area.mean().item() / 256)
    assert report["total"]["macs_roi"] == sum(r["macs_roi"] for r in report["layers"])
    assert not (path.parent / "attention.png").exists()  # --json alone draws nothing


def test_show_table_prints_every_layer(tdn10_checkpoint, capsys):
    path, model = tdn10_checkpoint
    assert main(["show", "--checkpoint", str(path), "--table", "--layers", "blocks.1.layer1.conv3x3.2"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.layer1.conv3x3.2" in out and "blocks.0.layer1" not in out


def test_show_errors_are_one_line(tmp_path, capsys):
    assert main(["show", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt' does not exist" in err and "Traceback" not in err
    assert main(["show", "--model", "dn10", "--table"]) == 2
    assert "no target layers" in capsys.readouterr().err
