"""Fixtures of the training tests: one thread per test, and one tiny real run reused by several tests."""
from __future__ import annotations

import pytest
import torch

from train_helpers import THREADS, TINY_ARGS


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tkn train TINY_ARGS --out DIR`` run in this process; returns ``(exit code, DIR)``."""
    from tkn.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        code = main(["train", *TINY_ARGS, "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    return code, out
