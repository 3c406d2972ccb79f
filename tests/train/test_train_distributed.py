"""``torchrun --nproc_per_node=2`` (CPU, gloo) matches a single-process run within tolerance.

The global batch is split in two halves, one per process, and DDP averages
the gradients, so the only difference is batch normalisation: on CPU each
process normalises with the statistics of its own half-batch (PyTorch's
SyncBatchNorm is GPU-only). Hence a tolerance, not bitwise equality.
"""
from __future__ import annotations

import csv
import math
import subprocess
import sys
import warnings

import pytest
import torch

from train_helpers import REPO, subprocess_env

ARGS = ["--model", "tdn10", "--data", "mnist-5k", "--epochs", "2", "--batch-size", "32",
        "--max-train-samples", "64", "--max-test-samples", "64", "--lr", "0.05", "--seed", "1", "--no-progress"]


def _rows(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    from tkn.cli import main

    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tkn.cli", "train", *ARGS, "--out", str(ddp_out), "--overwrite"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert main(["train", *ARGS, "--out", str(single_out)]) == 0  # runs while the two processes start
    stdout, stderr = proc.communicate(timeout=300)
    if proc.returncode != 0 and "exitcode: -6" in stderr:
        # Known, not understood: in about one full-suite run in three on a 2-core machine a gloo rank aborts
        # (SIGABRT) and the same command then passes; one retry, the first failure kept in the report.
        warnings.warn(f"torchrun rank aborted (SIGABRT), retrying once:\n{stderr[-2000:]}")
        proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("epoch 1/2") == 1  # only rank 0 reports

    ddp, single = _rows(ddp_out), _rows(single_out)
    assert [r["epoch"] for r in ddp] == ["1", "2"]  # one writer, one row per epoch
    assert sorted(p.name for p in ddp_out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.csv"]
    # first epoch: same weights at every step up to BN statistics -> nearly the same loss
    assert float(ddp[0]["train_loss"]) == pytest.approx(float(single[0]["train_loss"]), rel=2e-3)
    # test metrics are reduced over both shards: every one of the 64 samples counted once
    for r in ddp:
        assert float(r["test_error"]) * 64 / 100 == pytest.approx(round(float(r["test_error"]) * 64 / 100))
    assert ddp[0]["macs"] == single[0]["macs"]

    a = torch.load(ddp_out / "last.pt", weights_only=True)["model_state"]
    b = torch.load(single_out / "last.pt", weights_only=True)["model_state"]
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a if a[k].is_floating_point())
    den = sum(float((b[k].double() ** 2).sum()) for k in a if a[k].is_floating_point())
    assert math.sqrt(num / den) < 2e-2
