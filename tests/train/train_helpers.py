"""Helpers shared by the training tests (imported by name: a unique module name, unlike ``conftest``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One intra-op thread: on a 2-core machine shared with other jobs, OpenMP threads that
# spin-wait on each other make small convolutions up to 100x slower. Subprocesses
# get the same setting, so in-process and subprocess runs are bitwise comparable.
THREADS = 1

# The tiny run: TDN10 on 96 mnist-5k images, 3 epochs of 3 steps, lr drop at epoch 2.
TINY_ARGS = [
    "--model", "tdn10", "--data", "mnist-5k", "--epochs", "3", "--batch-size", "32",
    "--max-train-samples", "96", "--max-test-samples", "32", "--lr", "0.05", "--milestones", "2",
    "--seed", "3", "--no-progress",
]


def subprocess_env() -> dict[str, str]:
    """Environment of the test subprocesses: this repository first on the path, one thread."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def tkn_process(args: list[str], **kwargs) -> subprocess.Popen:
    """Start ``python -m tkn.cli ARGS`` in the repository with the current interpreter."""
    return subprocess.Popen([sys.executable, "-m", "tkn.cli", *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
