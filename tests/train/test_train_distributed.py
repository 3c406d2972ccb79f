"""``torchrun --nproc_per_node=2`` (CPU, gloo) matches a single-process run within tolerance, and leaves cleanly.

The global batch is split in two halves, one per process, and DDP averages
the gradients, so the only difference is batch normalisation: on CPU each
process normalises with the statistics of its own half-batch (PyTorch's
SyncBatchNorm is GPU-only). Hence a tolerance, not bitwise equality.
"""
from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys

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


# Each rank trains, then lists the threads it has left: the gloo group's worker threads must be gone.
CLEAN_EXIT = """
import os, sys
from tkn.training import TrainConfig, train
train(TrainConfig(model="tdn10", data="mnist-5k", epochs=1, batch_size=32, max_train_samples=64,
                  max_test_samples=32, lr=0.05, seed=1, progress=False, out=sys.argv[1]))
names = []
for task in os.listdir("/proc/self/task"):
    try:
        with open(f"/proc/self/task/{task}/comm") as f:
            names.append(f.read().strip())
    except OSError:
        pass
print(f"rank {os.environ['RANK']}: threads after train: {sorted(names)}", flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads through /proc")
def test_no_gloo_thread_outlives_training(tmp_path):
    """``train`` destroys its process group for real: the gloo worker and transport threads are joined before
    it returns, so none of them can run (and abort the process) while the interpreter shuts down."""
    script = tmp_path / "clean_exit.py"
    script.write_text(CLEAN_EXIT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "run")], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # workers run unbuffered (python -u): the two ranks' text and newlines may interleave, so match, not split
    found = dict(re.findall(r"rank (\d): threads after train: (\[[^\]]*\])", proc.stdout))
    assert sorted(found) == ["0", "1"], proc.stdout
    for rank, names in found.items():
        assert "gloo" not in names, f"rank {rank}: {names}"
