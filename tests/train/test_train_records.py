"""Output files of a run: metrics.csv columns per task, atomic rewrite, TensorBoard scalars."""
from __future__ import annotations

import csv
import sys
import types

from tkn.training.records import RunWriter, metric_columns


def test_regression_columns_and_rewrite(tmp_path):
    w = RunWriter(tmp_path, "regression")
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_mse": 1.0 / e, "train_mae": 0.5, "test_loss": 2.0,
             "test_mse": 2.0, "test_mae": 1.0, "macs": None, "penalty": 0.0, "lr": 1e-3, "epoch_time_s": 1.0}
            for e in (1, 2, 3)]
    w.write_metrics(rows)
    w.write_metrics(rows[:2])  # after a resume from epoch 2 the file holds exactly two rows
    with open(tmp_path / "metrics.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == metric_columns("regression") == [
        "epoch", "train_loss", "train_mse", "train_mae", "test_loss", "test_mse", "test_mae",
        "macs", "speedup", "penalty", "budget_multiplier", "predicted_speedup", "lr", "epoch_time_s"]
    assert [r["epoch"] for r in got] == ["1", "2"] and got[0]["macs"] == ""
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_disabled_writer_writes_nothing(tmp_path):
    w = RunWriter(tmp_path, "classification", enabled=False)
    w.write_config({"a": 1})
    w.write_metrics([{"epoch": 1}])
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_scalars_when_installed(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    w = RunWriter(tmp_path, "classification")
    w.add_scalars({"epoch": 2, "train_loss": 0.5, "test_error": 3.0, "macs": 10, "lr": 0.1, "note": "x"})
    w.close()
    assert calls == [("init", str(tmp_path / "tensorboard")), ("train/loss", 0.5, 2), ("test/error", 3.0, 2),
                     ("macs", 10, 2), ("lr", 0.1, 2), ("close",)]
