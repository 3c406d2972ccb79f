"""``tkn demo --quick`` runs the whole pipeline and its report agrees with the checkpoints it wrote."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    from tkn import flops
    from tkn.checkpoint import model_from_checkpoint
    from tkn.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress", "--json", "--l2", "3e-3", "--beta", "4"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "REDUCED schedule" in captured.err
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    assert "Reduced schedule" in md and "| test error (%)" in md
    assert (tmp_path / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("dn10", "tdn10"):
        row = report["models"][name]
        model, payload = model_from_checkpoint(tmp_path / name / "best.pt")
        count = flops.count(model, (1, 56, 56))
        assert (row["params"], row["macs"]) == (count.params, count.macs)
        assert row["test_error"] == payload["best"]["test_error"]
        assert row["latency_s"] > 0 and row["throughput"] > 0
    assert report["models"]["tdn10"]["speedup_macs"] == pytest.approx(
        report["models"]["dn10"]["macs"] / report["models"]["tdn10"]["macs"])
    assert report["schedule"]["epochs"] == 1 and report["data"] == "tlmnist-5k"
    # --l2/--beta reach TDN10's layers (l2 x beta^block) and its label; DN10 keeps its recipe
    tdn10, _ = model_from_checkpoint(tmp_path / "tdn10" / "best.pt")
    from tkn import target_layers

    assert sorted({round(layer.l2, 12) for _, layer in target_layers(tdn10)}) == [3e-3, 1.2e-2, 4.8e-2]
    assert report["tdn10_label"] == "TDN10 (Cauchy, L2 0.003, β 4)" and report["tdn10_label"][:-1] in md
