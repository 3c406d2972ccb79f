"""Figures of tkn.viz and `tkn show`: files exist, have a sane size, and show something."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from tkn import viz
from tkn.cli import main

mpimg = pytest.importorskip("matplotlib.image")


def check_png(path, min_side: int = 200, max_side: int = 6000) -> np.ndarray:
    """Read a PNG back and assert it is a real picture: sane size, many distinct colours."""
    assert path.is_file() and path.stat().st_size > 5_000
    image = mpimg.imread(str(path))
    h, w = image.shape[:2]
    assert min_side <= h <= max_side and min_side <= w <= max_side
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05  # not uniform
    packed = np.round(rgb * 255).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    assert len(np.unique(packed)) > 50  # colour maps, not just black text on white
    return image


def test_mosaic_places_every_map():
    maps = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
    image, offsets = viz.mosaic(maps, columns=2)
    assert image.shape == (3 * 3 - 1, 2 * 4 - 1)
    assert offsets == [(0, 0), (0, 4), (3, 0), (3, 4), (6, 0)]
    for c, (oy, ox) in enumerate(offsets):
        assert torch.equal(image[oy:oy + 2, ox:ox + 3], maps[c].double())
    assert torch.isnan(image[2]).all() and torch.isnan(image[:, 3]).all()  # gaps
    assert torch.isnan(image[6:, 4:]).all()  # the unused last tile
    with pytest.raises(ValueError, match="maps"):
        viz.mosaic(torch.zeros(2, 3))


def test_attention_figure_png(small_tkn, tmp_path):
    fig = viz.attention_figure(small_tkn, (1, 16, 16), title="test")
    assert len(fig.axes) == 2 * 2 + 4  # two panels per layer + their colour bars
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    roi = small_tkn[0].rois(16, 16)
    area = int(((roi[:, 1] - roi[:, 0]) * (roi[:, 3] - roi[:, 2])).sum())
    assert any(t.startswith("0\n6 channels") and f"{area * 9 / 1e3:.2f}K" in t for t in titles)
    # one ROI rectangle per channel, at the ROI's position in the mosaic
    rects = fig.axes[0].patches
    assert len(rects) == 6
    y0, y1, x0, x1 = roi[0].tolist()
    assert rects[0].get_xy() == (x0 - 0.5, y0 - 0.5) and rects[0].get_width() == x1 - x0
    check_png(viz.save_figure(fig, tmp_path / "att.png"))


def test_activation_figure_png(small_tkn, tmp_path):
    image = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    fig = viz.activation_figure(small_tkn, image, max_channels=4)
    assert "predicted class" in fig.get_suptitle()
    check_png(viz.save_figure(fig, tmp_path / "act.png"))
    with pytest.raises(ValueError, match="image"):
        viz.activation_figure(small_tkn, torch.rand(2, 1, 16, 16))


def test_sweep_figure_png(tmp_path):
    rows = [
        {"kind": "baseline", "model": "dn10", "l2": None, "beta": None, "test_error": 2.0, "speedup": 1.0},
        {"kind": "tkn", "l2": 1e-3, "beta": 1.0, "test_error": 1.8, "speedup": 1.4},
        {"kind": "tkn", "l2": 1e-2, "beta": 1.0, "test_error": 2.6, "speedup": 3.1},
        {"kind": "tkn", "l2": 1e-3, "beta": 2.0, "test_error": 1.9, "speedup": 1.9},
        {"kind": "tkn", "l2": 1e-2, "beta": 2.0, "test_error": None, "speedup": None},
    ]
    fig = viz.sweep_figure(rows)
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines()}
    assert list(curves["TKN, β = 1"].get_xdata()) == [1.4, 3.1]  # sorted by speed-up
    assert list(curves["TKN, β = 2"].get_ydata()) == [1.9]  # the unfinished run is skipped
    assert list(curves["dense baseline (dn10)"].get_xdata()) == [1.0]
    check_png(viz.save_figure(fig, tmp_path / "sweep.png"))
    with pytest.raises(ValueError, match="speedup"):
        viz.sweep_figure([{"kind": "tkn", "test_error": 1.0}])


def test_save_figure_rejects_unknown_suffix(small_tkn, tmp_path):
    fig = viz.sweep_figure([])
    with pytest.raises(ValueError, match=".png"):
        viz.save_figure(fig, tmp_path / "figure.txt")


def test_show_writes_figures_next_to_the_checkpoint(tdn10_checkpoint, tmp_path, capsys):
    path, _ = tdn10_checkpoint
    assert main(["show", "--checkpoint", str(path), "--max-channels", "6"]) == 0
    assert f"wrote {path.parent / 'attention.png'}" in capsys.readouterr().out
    check_png(path.parent / "attention.png")
    sample = tmp_path / "digit.npy"
    np.save(sample, np.random.default_rng(0).random((20, 20)).astype(np.float32))  # resized to 16x16
    out = tmp_path / "act.png"
    assert main(["show", "--checkpoint", str(path), "--sample", str(sample), "--out", str(out), "--layers",
                 "blocks.0.layer1.conv3x3.2", "blocks.2.layer2.conv3x3.2"]) == 0
    check_png(out)


def test_show_input_index_needs_data(tdn10_checkpoint, capsys):
    path, _ = tdn10_checkpoint
    assert main(["show", "--checkpoint", str(path), "--sample", "3", "--out", "x.png"]) == 2
    assert "--data" in capsys.readouterr().err


def test_score_map_figure_png(small_tkn, tmp_path):
    from tkn.rescale import score_map

    image = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(4))
    scores = score_map(small_tkn, image, 16, stride=8)
    fig = viz.score_map_figure(image, scores, 16, 8, classes=[1, 3])
    best = scores.softmax(0)[3].argmax().item()
    assert f"best at (y={8 * (best // 4)}, x={8 * (best % 4)})" in fig.axes[2].get_title()
    check_png(viz.save_figure(fig, tmp_path / "score.png"), min_side=150)
    with pytest.raises(ValueError, match="scores"):
        viz.score_map_figure(image, scores[0], 16, 8)


def test_load_sample_reads_png_and_resizes(tmp_path):
    from tkn.commands.show import load_sample

    values = np.linspace(0.0, 1.0, 20 * 24, dtype=np.float32).reshape(20, 24)
    mpimg.imsave(tmp_path / "ramp.png", values, cmap="gray", vmin=0.0, vmax=1.0)
    image, label = load_sample(str(tmp_path / "ramp.png"), None, (1, 20, 24))
    assert image.shape == (1, 20, 24) and label.endswith("ramp.png")
    np.testing.assert_allclose(image[0].numpy(), values, atol=2 / 255)  # 8-bit PNG through a 256-entry colour map
    three, _ = load_sample(str(tmp_path / "ramp.png"), None, (3, 10, 12))  # grey to 3 channels, half size
    assert three.shape == (3, 10, 12) and torch.equal(three[0], three[2])
    # bilinear halving averages 2x2 blocks of the ramp
    np.testing.assert_allclose(three[0].numpy(), values.reshape(10, 2, 12, 2).mean((1, 3)), atol=3 / 255)


def test_frontier_figure_draws_narrower_tkns_as_their_own_curve():
    def row(kind, width, target, error, b1, b64):
        return {"kind": kind, "width": width, "target_speedup": target, "test_error": error, "macs": 1e6,
                "latency_b1_s": b1, "time_b64_s": b64}

    rows = [row("dense", 1.0, None, 2.0, 4e-3, 0.128), row("dense", 0.5, None, 2.5, 2e-3, 0.032),
            row("tkn", 1.0, 4.0, 2.2, 3e-3, 0.032), row("tkn", 1.0, 10.0, 3.0, 2e-3, 0.0128),
            row("tkn", 0.5, 3.0, 2.98, 1e-3, 0.0128)]  # at R=10's time, just under it
    rows[2].update(budget="latency", latency_batch=64, test_error_std=0.3)  # a summary row over seeds
    rows[3]["config"] = {"budget": "latency", "latency_batch": 1}  # a run's row
    fig = viz.frontier_figure(rows, [("latency_b1_s", 1), ("time_b64_s", 64)])
    b1, b64 = fig.axes
    curves = [line for line in b64.lines if not line.get_label().startswith("_")]  # not the error bars' caps
    assert [line.get_label() for line in curves] == ["dense, narrower (width w)", "TKN, speed-up budget R",
                                                     "TKN at width 0.5, budget R over its width"]
    composite = curves[2]
    assert list(composite.get_xdata()) == [0.2] and list(composite.get_ydata()) == [2.98]  # ms per image
    assert list(curves[1].get_xdata()) == [0.2, 0.5]  # sorted by time
    assert any(t.get_text().startswith("w=0.5 R=3\n") for t in b1.texts)
    labels = {t.get_text().split("\n")[0] for t in b64.texts}
    assert {"R=4@b64", "R=10@b1", "w=0.5 R=3", "w=1", "w=0.5"} == labels
    for ax in (b1, b64):  # labels of close points are moved apart
        fig.canvas.draw()
        boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ax.texts]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    (bars,) = b64.containers  # error bars of the TKN curve, the one with a spread
    segments = bars.lines[2][0].get_segments()  # sorted by time: R=10 (no spread), then R=4
    assert [seg[:, 1].tolist() for seg in segments] == [[3.0, 3.0], pytest.approx([2.2 - 0.3, 2.2 + 0.3])]
