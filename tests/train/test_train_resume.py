"""kill -9 mid-run, then --resume: the final weights equal an uninterrupted run's, bit for bit."""
from __future__ import annotations

import csv
import signal
import time

import pytest
import torch

from train_helpers import TINY_ARGS, tkn_process


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def _test_errors(out):
    with open(out / "metrics.csv", newline="") as f:
        return [(int(r["epoch"]), float(r["test_loss"]), float(r["test_error"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tiny_run, tmp_path):
    code, reference = tiny_run
    assert code == 0
    out = tmp_path / "killed"
    proc = tkn_process(["train", *TINY_ARGS, "--out", str(out)])
    _wait_for(out / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    interrupted = torch.load(out / "last.pt", weights_only=True)
    assert interrupted["epoch"] < 3, "the run finished before it was killed: nothing was tested"

    resumed = tkn_process(["train", *TINY_ARGS, "--out", str(out), "--resume"])
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"epoch {interrupted['epoch'] + 1}/3" in stdout and "epoch 1/3" not in stdout

    want = torch.load(reference / "last.pt", weights_only=True)
    got = torch.load(out / "last.pt", weights_only=True)
    assert got["epoch"] == want["epoch"] == 3
    assert want["model_state"].keys() == got["model_state"].keys()
    for key, value in want["model_state"].items():
        assert torch.equal(value, got["model_state"][key]), key
    for a, b in zip(want["optimizer_state"]["state"].values(), got["optimizer_state"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # metrics.csv was rebuilt from the checkpoint: one row per epoch, same numbers
    assert _test_errors(out) == _test_errors(reference)


BUDGET_ARGS = ["--target-speedup", "2", "--min-roi", "1", "--model", "tkn6", "--l2", "0"]


@pytest.mark.slow
def test_budget_state_survives_sigkill_and_resume_bitwise(tmp_path):
    """A run trained to a speed budget (TKN6, fast path): kill -9, --resume, and the weights, the optimiser,
    the budget's multiplier and steps all equal the uninterrupted run's; the budget holds after the last epoch."""
    from tkn.cli import main

    reference = tmp_path / "reference"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *TINY_ARGS, *BUDGET_ARGS, "--out", str(reference)]) == 0
    finally:
        torch.set_num_threads(before)
    out = tmp_path / "killed"
    proc = tkn_process(["train", *TINY_ARGS, *BUDGET_ARGS, "--out", str(out)])
    _wait_for(out / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    interrupted = torch.load(out / "last.pt", weights_only=True)
    assert interrupted["epoch"] < 3, "the run finished before it was killed: nothing was tested"
    assert interrupted["budget_state"]["steps"] == 3 * interrupted["epoch"]
    resumed = tkn_process(["train", *TINY_ARGS, *BUDGET_ARGS, "--out", str(out), "--resume"])
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    want = torch.load(reference / "last.pt", weights_only=True)
    got = torch.load(out / "last.pt", weights_only=True)
    assert got["budget_state"] == want["budget_state"] and want["budget_state"]["steps"] == 9
    for key, value in want["model_state"].items():
        assert torch.equal(value, got["model_state"][key]), key
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 2.0 <= float(rows[-1]["speedup"]) <= 2.0 * 1.1
    assert rows[-1]["budget_multiplier"] != ""
