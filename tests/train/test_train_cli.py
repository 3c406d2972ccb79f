"""The CLI of training: every error path is one clear line and exit code 2; eval --json is right."""
from __future__ import annotations

import json

import pytest
import torch

from tkn.cli import main

FAST = ["--data", "mnist-5k", "--epochs", "1", "--max-train-samples", "32", "--max-test-samples", "32",
        "--batch-size", "32", "--no-progress"]


def _error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("extra, needles", [
    (["--epochs", "-1"], ["epochs must be an int >= 1, got -1"]),
    (["--batch-size", "0"], ["batch_size must be an int >= 1, got 0"]),
    (["--model", "resnet50"], ["unknown model 'resnet50'", "tdn10"]),
    (["--data", "imagenet"], ["unknown data set 'imagenet'", "mnist-5k"]),
    (["--set", "optimizer=rmsprop"], ["optimizer must be one of sgd, adam"]),
    (["--set", "window=box"], ["window must be one of cauchy, gaussian"]),
    (["--lr", "-0.1"], ["lr must be a finite number > 0, got -0.1"]),
    (["--set", "lr"], ["--set expects key=value"]),
    (["--set", "learning_rate=1"], ["unknown config key", "learning_rate"]),
    (["--data", "svhn"], ["'svhn' needs --data-root"]),
    (["--data", "svhn", "--data-root", "/nonexistent/svhn"],
     ["data root '/nonexistent/svhn' is not an existing folder"]),
    (["--config", "nope/never"], ["neither a file nor a packaged recipe"]),
])
def test_train_config_errors(capsys, tmp_path, extra, needles):
    line = _error(capsys, ["train", *FAST, "--out", str(tmp_path / "o"), *extra], *needles)
    assert line.startswith("tkn train: error: ")
    assert not (tmp_path / "o" / "last.pt").exists()


def test_unwritable_output_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _error(capsys, ["train", *FAST, "--out", str(blocker / "run")], "is not writable")


def test_bad_config_file(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: [1\n")
    _error(capsys, ["train", "--config", str(f), "--out", str(tmp_path / "o")], "not valid YAML")


def test_resume_errors(capsys, tmp_path, tiny_run):
    from train_helpers import TINY_ARGS

    _error(capsys, ["train", *FAST, "--out", str(tmp_path / "empty"), "--resume"], "does not exist")
    _, run = tiny_run
    _error(capsys, ["train", *TINY_ARGS, "--out", str(run)], "already holds a run", "--resume")
    _error(capsys, ["train", *TINY_ARGS, "--lr", "0.2", "--out", str(run), "--resume"],
           "cannot resume with a different configuration", "lr")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    _error(capsys, ["train", *TINY_ARGS, "--out", str(tmp_path / "x"), "--resume", str(junk)], "corrupt")


def test_resume_of_a_finished_run_does_nothing(capsys, tiny_run):
    from train_helpers import TINY_ARGS

    _, run = tiny_run
    before = (run / "last.pt").read_bytes()
    assert main(["train", *TINY_ARGS, "--out", str(run), "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (run / "last.pt").read_bytes() == before


def test_eval_errors(capsys, tmp_path, tiny_run):
    _error(capsys, ["eval", "--checkpoint", str(tmp_path / "missing.pt")], "does not exist")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 truncated zip")
    _error(capsys, ["eval", "--checkpoint", str(junk)], "corrupt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    _error(capsys, ["eval", "--checkpoint", str(foreign)], "not a tkn checkpoint")
    _, run = tiny_run
    _error(capsys, ["eval", "--checkpoint", str(run / "best.pt"), "--data", "cifar"], "unknown data set 'cifar'")
    _error(capsys, ["eval", "--checkpoint", str(run / "best.pt"), "--data", "gtsrb"], "needs --data-root")


def test_eval_json_matches_training_metrics(capsys, tiny_run):
    import csv

    from tkn import flops
    from tkn.checkpoint import model_from_checkpoint

    _, run = tiny_run
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--max-samples", "32", "--seed", "4", "--json",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    # the training run's test subset is the seeded subset of seed + 1 = 4
    assert result["error"] == pytest.approx(float(last["test_error"]))
    assert result["loss"] == pytest.approx(float(last["test_loss"]), rel=1e-5)
    model, _ = model_from_checkpoint(run / "last.pt")
    report = flops.count(model, (1, 28, 28))
    assert result["params"] == sum(p.numel() for p in model.parameters()) == report.params
    assert result["macs"] == report.macs == int(last["macs"])
    dense = flops.count(__import__("tkn.models", fromlist=["create_model"]).create_model("dn10"), (1, 28, 28)).macs
    assert result["dense_macs"] == dense  # the dense baseline DN10 (AR multiplications are not counted)
    assert result["speedup"] == pytest.approx(dense / result["macs"])
    assert (result["model"], result["data"], result["split"], result["samples"], result["epoch"]) == (
        "tdn10", "mnist-5k", "test", 32, 3)


def test_list_recipes(capsys):
    assert main(["train", "--list-recipes"]) == 0
    assert "paper/tdn10-tlmnist-cauchy" in capsys.readouterr().out.split()


def test_demo_rejects_bad_epochs(capsys, tmp_path):
    _error(capsys, ["demo", "--epochs", "0", "--out", str(tmp_path)], "--epochs must be a positive int, got 0")


@pytest.mark.parametrize("argv, needle", [
    (["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["train", "--window", "box"], "argument --window: invalid choice: 'box'"),
    (["eval"], "the following arguments are required: --checkpoint"),
    (["demo", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
])
def test_argument_errors_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err and "usage:" not in err
