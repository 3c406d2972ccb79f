"""`tkn sweep` on a tiny budget: one row per setting, values traceable to the runs it trained."""
from __future__ import annotations

import csv
import json

import pytest

from tkn import flops, target_layers
from tkn.checkpoint import model_from_checkpoint
from tkn.cli import main
from tkn.models import create_model


@pytest.mark.slow
def test_tiny_sweep_writes_one_row_per_setting(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "tdn10", "--data", "mnist-5k", "--l2", "0.05", "--beta", "1", "3",
            "--epochs", "1", "--max-train-samples", "16", "--max-test-samples", "16", "--set", "batch_size=16",
            "--set", "deterministic=false",
            "--out", str(out), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["data"] for r in rows} == {"mnist-5k"}
    assert [(r["kind"], r["model"], r["l2"], r["beta"]) for r in rows] == [
        ("tkn", "tdn10", "0.05", "1.0"), ("tkn", "tdn10", "0.05", "3.0"), ("baseline", "dn10", "", "")]
    assert json.loads((out / "sweep.json").read_text()) == report["rows"]
    assert (out / "sweep.png").stat().st_size > 5_000

    dense = flops.count(create_model("dn10").eval(), (1, 28, 28)).macs
    for row, beta in zip(report["rows"][:2], (1.0, 3.0)):
        model, payload = model_from_checkpoint(out / f"l2-0.05_beta-{beta:g}" / "best.pt")
        # the setting reached the model: block b's target layers carry l2 * beta**b
        l2s = sorted({layer.l2 for _, layer in target_layers(model)})
        assert l2s == pytest.approx(sorted({0.05, 0.05 * beta, 0.05 * beta ** 2}))
        macs = flops.count(model, (1, 28, 28)).macs
        assert row["macs"] == macs and row["baseline_macs"] == dense
        assert row["speedup"] == pytest.approx(dense / macs)
        with open(out / f"l2-0.05_beta-{beta:g}" / "metrics.csv", newline="") as f:
            errors = [float(r["test_error"]) for r in csv.DictReader(f)]
        assert row["test_error"] == pytest.approx(min(errors)) and row["metric"] == "test_error"
    baseline = report["rows"][2]
    assert baseline["macs"] == dense and baseline["speedup"] == pytest.approx(1.0)


def test_sweep_rejects_bad_grids(tmp_path, capsys):
    assert main(["sweep", "--l2", "-1", "--beta", "2", "--out", str(tmp_path)]) == 2
    assert "each --l2 value must be a finite non-negative number, got -1.0" in capsys.readouterr().err
    assert main(["sweep", "--model", "dn10", "--l2", "1e-3", "--beta", "2", "--out", str(tmp_path)]) == 2
    assert "no dense baseline" in capsys.readouterr().err
    assert main(["sweep", "--config", "paper/tdn10-mnist-cauchy", "--out", str(tmp_path)]) == 2
    assert "give the grid explicitly" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_by_budget_reaches_each_target(tmp_path, capsys):
    out = tmp_path / "budget"
    args = ["sweep", "--model", "tkn6", "--data", "mnist-5k", "--target-speedup", "2", "4", "--no-baseline",
            "--epochs", "2", "--max-train-samples", "32", "--max-test-samples", "16", "--set", "batch_size=16",
            "--set", "min_roi=2", "--set", "lr=0.01", "--out", str(out), "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["kind"], r["target_speedup"], r["l2"]) for r in rows] == [("budget", 2.0, 0.0), ("budget", 4.0, 0.0)]
    dense = flops.count(create_model("cnn6").eval(), (1, 28, 28)).macs
    for row in rows:
        model, payload = model_from_checkpoint(out / f"speedup-{row['target_speedup']:g}" / "last.pt")
        assert payload["epoch"] == row["best_epoch"] == 2  # a budget row is the last epoch
        macs = flops.count(model, (1, 28, 28)).macs
        assert row["macs"] == macs and row["speedup"] == pytest.approx(dense / macs)
        assert row["target_speedup"] <= row["speedup"] <= 1.2 * row["target_speedup"]
    assert (out / "sweep.png").stat().st_size > 5_000
