"""tkn.timing.interleaved: round-robin blocks, steady state and first calls."""
import time

import pytest
import torch

from tkn.timing import MAX_CALLS, interleaved, synchronizer


def test_blocks_separate_the_first_call_from_the_steady_state():
    """``a`` is slow (8 ms) on a call right after ``b`` ran and fast (1 ms) when called again: the first call of
    each block is the slow one, the steady state the others' mean (1 ms plus the sleep's overshoot)."""
    log = []

    def a():
        time.sleep(0.008 if (not log or log[-1] == "b") else 0.001)
        log.append("a")

    def b():
        log.append("b")

    out = interleaved({"a": a, "b": b}, repeats=3, warmup=1, min_block_s=0.02)
    k = out["a"]["calls"]
    assert 4 <= k <= 21  # 1 + 20 ms over one call of 1-8 ms (plus sleep overshoot)
    assert out["b"]["calls"] == MAX_CALLS or out["b"]["calls"] > 100  # a call of b is microseconds
    # warm-up (a, b), calibration (a once: after a, fast; b once), then 3 rounds of (k calls of a, calls of b)
    assert log[:2] == ["a", "b"]
    rounds = log[4:]
    assert rounds[:k] == ["a"] * k and rounds[k:k + out["b"]["calls"]] == ["b"] * out["b"]["calls"]
    assert len(rounds) == 3 * (k + out["b"]["calls"])
    assert out["a"]["first_min"] >= 0.008
    assert 0.001 <= out["a"]["min"] <= 0.004
    assert out["a"]["min"] < out["a"]["first_min"]
    assert out["a"]["min"] <= out["a"]["median"]


def test_without_blocks_every_round_is_one_call():
    n = []
    out = interleaved({"x": lambda: n.append(1)}, repeats=4, warmup=2)
    assert len(n) == 6 and out["x"]["calls"] == 1
    assert out["x"]["min"] == out["x"]["first_min"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "repeats must be a positive int, got 0"),
    (dict(repeats=1, warmup=-1), "warmup and min_block_s must be >= 0"),
    (dict(repeats=1, min_block_s=-0.1), "warmup and min_block_s must be >= 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        interleaved({"x": lambda: None}, **kwargs)


def test_a_cuda_device_is_synchronised_around_every_clock_reading(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    interleaved({"f": lambda: events.append("f")}, repeats=2, warmup=1, device="cuda:0")
    # the warm-up call is not timed; each timed block is bracketed by synchronisations
    assert events == ["f"] + [("sync", "cuda:0"), "f", ("sync", "cuda:0")] * 2
    events.clear()
    interleaved({"f": lambda: events.append("f")}, repeats=2, warmup=0, device="cpu")
    assert events == ["f", "f"]
    assert synchronizer(None)() is None and synchronizer(torch.device("cpu"))() is None
