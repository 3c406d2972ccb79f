"""``tkn demo --quick`` runs the whole pipeline and its report agrees with the checkpoints it wrote."""
from __future__ import annotations

import json
import re

import pytest


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    from tkn import flops, target_layers
    from tkn.checkpoint import model_from_checkpoint
    from tkn.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress", "--json", "--target-speedup", "2.5",
                 "--min-roi", "3"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "REDUCED schedule" in captured.err
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    assert "Reduced schedule" in md and "| test error (%)" in md
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report["dense"], report["targeted"]) == ("cnn6", "tkn6")
    assert report["attention_figure"] == str(tmp_path / "attention.png")
    for name in ("cnn6", "tkn6"):
        row = report["models"][name]
        model, payload = model_from_checkpoint(tmp_path / name / "last.pt")
        count = flops.count(model, (1, 28, 28))
        assert (row["params"], row["macs"]) == (count.params, count.macs)
        assert row["test_error"] == payload["metrics"]["test_error"]
        assert row["latency_s"] > 0 and row["throughput"] > 0
    dense, tkn6 = report["models"]["cnn6"], report["models"]["tkn6"]
    assert tkn6["speedup_macs"] == pytest.approx(dense["macs"] / tkn6["macs"])
    assert tkn6["speedup_batch1"] == pytest.approx(dense["latency_s"] / tkn6["latency_s"])
    assert tkn6["speedup_throughput"] == pytest.approx(tkn6["throughput"] / dense["throughput"])
    # the budget is met on this two-step schedule too, and --min-roi reaches the layers
    assert 2.5 <= tkn6["speedup_macs"] <= 2.5 * 1.2
    model, _ = model_from_checkpoint(tmp_path / "tkn6" / "last.pt")
    assert {layer.min_roi for _, layer in target_layers(model)} == {3}
    assert report["schedule"]["epochs"] == 1 and report["data"] == "tlmnist28-5k"
    assert report["targeted_label"] == "TKN6 (Cauchy, budget 2.5x MACs, min ROI 3 px)"
    assert report["targeted_label"][:-1] in md


@pytest.mark.slow
def test_demo_with_a_latency_budget_reports_predicted_next_to_measured(tmp_path, capsys, monkeypatch):
    """The default budget of the demo: a measured speed-up (LatencyBudget). The engine's calibration is replaced
    by a made-up latency model (seconds per MAC) so that the test does not depend on this machine's timing."""
    from tkn.cli import main
    from tkn.convert import target_layers
    from tkn.flops import count
    from tkn.latency import LatencyModel, LayerTable

    def calibrate(model, input_size, batch_size=64, **_):
        rows = {r.name: r for r in count(model, tuple(input_size)).layers}
        tables = {n: LayerTable([rows[n].dense_macs / 64, rows[n].dense_macs], [1e-9 * rows[n].dense_macs / 64,
                                                                                 1e-9 * rows[n].dense_macs])
                  for n, _ in target_layers(model)}
        return LatencyModel(batch_size, 1e-4 + sum(t.seconds[-1] for t in tables.values()), 1e-4, tables)

    monkeypatch.setattr("tkn.latency.calibrate", calibrate)
    assert main(["demo", "--quick", "--budget", "latency", "--out", str(tmp_path), "--no-progress", "--json",
                 "--target-speedup", "2.5"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    tkn6 = report["models"]["tkn6"]
    assert 2.5 <= tkn6["predicted_speedup"] <= 2.5 * 1.1
    # the training log says how long the latency model took (a cache hit is well under a second)
    assert re.search(r"latency model \S* ?ready in \d+\.\d s .*largest speed-up \d+\.\d\dx", captured.err)
    assert report["targeted_label"] == "TKN6 (Cauchy, measured 2.5x at batch 8, min ROI 3 px)"
    md = (tmp_path / "report.md").read_text()
    assert "predicted speed-up, batch 8 (LatencyBudget)" in md and f"{tkn6['predicted_speedup']:.2f}x" in md
    assert "tkn.LatencyBudget" in md
