"""Collapse detection: synthetic histories (by loss, by chance accuracy, healthy) and a real run that cannot learn."""
from __future__ import annotations

import json
import warnings

import pytest

from tkn.checkpoint import load_checkpoint
from tkn.training import TrainConfig, train
from tkn.training.collapse import (CHANCE_MARGIN, LOSS_DROP, CollapseWarning, chance_error, checkpoint_collapse,
                                   detect_collapse)


def _history(losses, errors):
    return [{"epoch": epoch, "train_loss": loss, "test_error": err}
            for epoch, loss, err in zip(range(1, len(losses) + 1), losses, errors)]


def test_chance_error_is_the_error_of_guessing():
    assert chance_error(10) == pytest.approx(90.0)
    assert chance_error(2) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2, got 1"):
        chance_error(1)


def test_a_healthy_run_is_not_flagged():
    # the loss of the study's TKN6 run at 12.9x (min_roi 1) on mnist-5k: 0.93 -> 0.05, test error 11.5% -> 3.0%
    losses = [0.930, 0.568, 0.316, 0.206, 0.147, 0.109, 0.101, 0.046]
    errors = [11.5, 12.2, 5.7, 5.0, 4.5, 2.7, 3.0, 3.0]
    assert detect_collapse(_history(losses, errors), "classification", 10) is None


def test_a_loss_that_does_not_fall_is_a_collapse():
    # the loss falls in the first epochs, then climbs back while the budget shrinks the windows
    losses = [1.20, 0.90, 1.10, 1.40, 1.60, 1.70, 1.75, 1.72]
    errors = [30.0, 25.0, 40.0, 55.0, 60.0, 62.0, 63.0, 63.6]
    found = detect_collapse(_history(losses, errors), "classification", 10)
    assert found["reasons"] == ["loss"] and found["epoch"] == 8
    # the last quarter of 8 epochs is epochs 7-8: mean 1.735 against 1.2
    assert "mean 1.7350 over epochs 7-8 against 1.2000 in epoch 1" in found["message"]
    assert found["message"].startswith("training collapsed: the training loss did not fall")


def test_the_loss_criterion_has_a_margin():
    first = 2.0
    barely = _history([first, first * (1 - LOSS_DROP) + 1e-6], [50.0, 40.0])
    enough = _history([first, first * (1 - LOSS_DROP) - 1e-6], [50.0, 40.0])
    assert detect_collapse(barely, "classification", 10)["reasons"] == ["loss"]
    assert detect_collapse(enough, "classification", 10) is None


def test_a_test_error_at_chance_is_a_collapse():
    # the loss fell (a little), but the network ended where guessing ends: 87.7% with ten classes
    found = detect_collapse(_history([2.40, 2.0, 1.9, 1.8], [80.0, 85.0, 86.0, 87.7]), "classification", 10)
    assert found["reasons"] == ["chance"]
    assert "test error 87.70% at epoch 4 is at chance level (90.0% for 10 classes)" in found["message"]
    edge = chance_error(10) - CHANCE_MARGIN
    assert detect_collapse(_history([2.0, 1.0], [50.0, edge]), "classification", 10)["reasons"] == ["chance"]
    assert detect_collapse(_history([2.0, 1.0], [50.0, edge - 0.01]), "classification", 10) is None


def test_both_criteria_and_what_each_needs():
    flat = _history([2.3026] * 8, [90.0] * 8)
    assert detect_collapse(flat, "classification", 10)["reasons"] == ["loss", "chance"]
    # one epoch: nothing to compare the loss with; the chance criterion still applies
    assert detect_collapse(flat[:1], "classification", 10)["reasons"] == ["chance"]
    # without a class count (or for regression) only the loss criterion applies
    assert detect_collapse(flat, "classification", None)["reasons"] == ["loss"]
    regression = [{"epoch": i + 1, "train_loss": 0.5, "test_mse": 0.5} for i in range(4)]
    assert detect_collapse(regression, "regression")["reasons"] == ["loss"]
    assert detect_collapse([], "classification", 10) is None
    with pytest.raises(ValueError, match="task must be 'classification' or 'regression', got 'ranking'"):
        detect_collapse(flat, "ranking", 10)


def test_a_checkpoint_without_a_verdict_is_judged_from_its_history():
    payload = {"task": "classification", "model": {"name": "dn10", "kwargs": {"num_classes": 10}},
               "history": _history([2.3, 2.3, 2.3], [90.0, 90.0, 90.0])}
    assert checkpoint_collapse(payload)["reasons"] == ["loss", "chance"]
    assert checkpoint_collapse({**payload, "collapsed": None}) is None


# a learning rate of 1e-12: the weights do not move, so the loss cannot fall
FROZEN = dict(model="dn10", data="mnist-5k", epochs=2, batch_size=32, lr=1e-12, max_train_samples=64,
              max_test_samples=32, seed=0, progress=False)


@pytest.mark.slow
def test_a_run_that_cannot_learn_is_reported(tmp_path):
    lines: list[str] = []
    result = train(TrainConfig(**FROZEN, out=str(tmp_path / "run")), log=lines.append)
    assert result.collapsed is not None and "loss" in result.collapsed["reasons"]
    assert result.to_dict()["collapsed"] == result.collapsed
    assert lines[-1] == f"WARNING: {result.collapsed['message']}"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["collapsed"] == result.collapsed
    # without a log the library warns instead
    with pytest.warns(CollapseWarning, match="training collapsed: the training loss did not fall"):
        train(TrainConfig(**FROZEN, out=str(tmp_path / "quiet")))


@pytest.mark.slow
def test_train_json_carries_the_verdict_and_the_exit_code_stays_zero(tmp_path, capsys):
    from tkn.cli import main

    args = ["train", "--model", "dn10", "--data", "mnist-5k", "--epochs", "2", "--batch-size", "32", "--lr", "1e-12",
            "--max-train-samples", "64", "--max-test-samples", "32", "--seed", "0", "--no-progress",
            "--out", str(tmp_path / "run"), "--json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)  # the CLI logs the collapse; it does not warn twice
        assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "loss" in report["collapsed"]["reasons"]
    assert f"WARNING: {report['collapsed']['message']}" in captured.err.splitlines()
