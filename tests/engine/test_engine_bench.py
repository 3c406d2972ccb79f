"""The benchmark harness and ``tkn bench``: synthetic ROIs, the dense baseline, the report."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch
from torch import nn

from tkn.cli import main
from tkn.convert import target_layers
from tkn import benchmark as B
from tkn.layers import TargetConv2d
from tkn.models import create_model


def test_synthetic_rois_follow_the_documented_distribution():
    model = B.synthetic_rois_(create_model("tkn6", input_size=28), seed=3)
    for i, (_, layer) in enumerate(target_layers(model)):
        g = torch.Generator().manual_seed(3 + i)
        m = torch.rand(layer.m.shape, generator=g, dtype=torch.float64) * 0.8 + 0.1
        s = torch.rand(layer.s.shape, generator=g, dtype=torch.float64) * 0.35 + 0.1
        torch.testing.assert_close(layer.m.detach().double(), m, rtol=0, atol=1e-7)
        torch.testing.assert_close(layer.s.detach().double(), s, rtol=0, atol=1e-7)
        assert 0.1 <= layer.m.min() and layer.m.max() <= 0.9 and 0.1 <= layer.s.min() and layer.s.max() <= 0.45


def test_dense_baseline_is_plain_convolution_with_the_same_weights():
    torch.manual_seed(0)
    net = nn.Sequential(TargetConv2d(2, 4, 3, bias=True), nn.ReLU(), TargetConv2d(4, 3, 5, padding=1))
    base = B.dense_baseline(net)
    assert [type(m) for m in base] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    x = torch.randn(2, 2, 9, 9)
    expected = torch.nn.functional.conv2d(
        torch.relu(torch.nn.functional.conv2d(x, net[0].weight, net[0].bias, padding=1)), net[2].weight, padding=1)
    torch.testing.assert_close(base(x), expected)
    assert isinstance(net[0], TargetConv2d)  # the original is untouched


def test_interleaved_times_each_callable_round_robin():
    calls = []

    def slow():
        calls.append("slow")
        time.sleep(0.02)

    out = B.interleaved({"fast": lambda: calls.append("fast"), "slow": slow}, repeats=3, warmup=1)
    assert calls == ["fast", "slow"] * 4
    assert set(out) == {"fast", "slow"}
    assert 0.02 <= out["slow"]["min"] <= out["slow"]["median"] < 1.0  # the sleep is measured, in seconds
    assert out["fast"]["median"] < 0.02 <= out["slow"]["min"]


#: Times (s) a scripted ``interleaved`` reports per variant: the minimum; the median is 10x, so that a
#: speed-up taken from the medians, or upside down, shows.
SCRIPTED = {"dense": 0.8, "target": 0.4, "frozen": 0.2, "fast": 0.5, "fast_unfused": 0.64}


@pytest.fixture
def scripted_times(monkeypatch):
    """``tkn.benchmark.interleaved`` replaced: each callable still runs once, the times are :data:`SCRIPTED`."""
    def fake(fns, repeats, warmup=1, min_block_s=0.0, device=None):
        for f in fns.values():
            f()
        return {k: {"min": SCRIPTED.get(k, 0.1), "median": 10 * SCRIPTED.get(k, 0.1),
                    "first_min": 2 * SCRIPTED.get(k, 0.1), "first_median": 20 * SCRIPTED.get(k, 0.1), "calls": 1}
                for k in fns}

    monkeypatch.setattr(B, "interleaved", fake)


def test_bench_command_json(capsys, scripted_times):
    code = main(["bench", "--input-size", "1,12,12", "--batch", "2", "--repeats", "1", "--no-memory", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    from tkn.flops import count

    model = B.synthetic_rois_(create_model("tkn6", input_size=12), seed=0)
    flops = count(model, (1, 12, 12))
    ratio = flops.dense_macs / flops.macs
    assert ratio > 1.2  # the synthetic ROIs leave work out
    [m] = report["models"]
    assert m["batch"] == 2 and m["flop_ratio"] == pytest.approx(ratio)
    assert m["frozen_max_rel_error"] < 1e-4
    assert m["speedup_vs_dense"] == pytest.approx(0.8 / 0.2)  # dense / frozen minima
    assert m["speedup_vs_target"] == pytest.approx(0.4 / 0.2)
    assert m["efficiency"] == pytest.approx(4.0 / ratio)
    assert m["throughput_per_s"] == pytest.approx({"dense": 2 / 0.8, "target": 2 / 0.4, "frozen": 2 / 0.2})
    assert report["layers"] == [] and report["train"] is None
    assert report["conditions_start"]["torch"] == torch.__version__
    assert report["freeze_options"] == {"input_sparsity": True, "fuse": True, "native": True}


def test_bench_ablation_flags_reach_freeze(capsys):
    code = main(["bench", "--input-size", "1,12,12", "--batch", "2", "--repeats", "1", "--no-memory", "--layers",
                 "--no-input-sparsity", "--no-fuse"])
    assert code == 0
    text = capsys.readouterr().out
    assert "freeze without input_sparsity, fuse" in text
    assert "relu" not in text.split("per layer")[1]  # no fused epilogue in any layer row


def test_bench_ablations_share_the_rounds(capsys):
    code = main(["bench", "--input-size", "1,12,12", "--batch", "2", "--repeats", "1", "--no-memory", "--ablations",
                 "--json"])
    assert code == 0
    times = json.loads(capsys.readouterr().out)["models"][0]["times_s"]
    assert set(times) == {"dense", "target", "frozen", *B.ABLATIONS}


def _tiny_tkn() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(TargetConv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), TargetConv2d(16, 16, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 6 * 6, 4))
    return B.synthetic_rois_(net, seed=1).eval()


def test_layer_rows_and_training_step(scripted_times):
    from tkn.flops import count

    net = _tiny_tkn()
    rows = B.bench_layers(net, (1, 12, 12), batch=2, repeats=1)
    assert [r["layer"] for r in rows] == ["0", "3"]
    counted = {row.name: row for row in count(net, (1, 12, 12)).layers}
    for r in rows:
        layer = net.get_submodule(r["layer"])
        h, w = counted[r["layer"]].output_shape[-2:]
        ratio = counted[r["layer"]].dense_macs / layer.macs(h, w)
        assert r["flop_ratio"] == pytest.approx(ratio) and ratio > 1
        assert r["speedup_vs_dense"] == pytest.approx(4.0) and r["efficiency"] == pytest.approx(4.0 / ratio)
    step = B.bench_train_step(net, (1, 12, 12), batch=2, repeats=1)
    assert step["speedup_vs_dense"] == pytest.approx(0.8 / 0.5)  # dense step / fast step
    assert step["speedup_unfused_vs_dense"] == pytest.approx(0.8 / 0.64)
    assert step["fused_epilogues"] == 2  # both target layers with their ReLU (the first with its pool)
    text = __import__("tkn.commands.bench", fromlist=["format_report"]).format_report({
        "model": "tiny", "input": [1, 12, 12], "rois": "synthetic", "repeats": 1,
        "conditions_start": B.conditions(), "conditions_end": B.conditions(), "models": [], "layers": rows,
        "train": step, "memory_mib": {"dense": 1.0, "frozen": None}, "memory_batch": 2})
    assert "per layer" in text and "one training step" in text and "frozen n/a" in text


def test_bench_command_errors(capsys):
    assert main(["bench", "--input-size", "1,12"]) == 2
    assert "C,H,W" in capsys.readouterr().err
    assert main(["bench", "--model", "cnn6", "--input-size", "1,12,12", "--no-memory"]) == 2
    assert "no target layers" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the measurement needs Linux's clear_refs")
def test_peak_memory_grows_with_the_batch():
    spec = {"model": "tkn6", "checkpoint": None, "input": [1, 32, 32], "seed": 0, "threads": 1, "variant": "dense"}
    small, large = (B.peak_memory({**spec, "batch": batch}) for batch in (2, 32))
    assert small is not None and large is not None  # None: the subprocess failed
    assert 0 < small < large


def test_write_rows_keeps_the_rows_and_the_conditions(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    B.write_rows(str(path), [{"target": 4.0, "measured": 4.1}])
    data = json.loads(path.read_text())
    assert data["rows"] == [{"target": 4.0, "measured": 4.1}]
    assert data["conditions"]["torch"] == torch.__version__ and data["conditions"]["cores"] == os.cpu_count()
