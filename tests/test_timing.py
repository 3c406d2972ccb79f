"""tkn.timing.interleaved: round-robin blocks, steady state and first calls."""
import os
from types import SimpleNamespace

import pytest
import torch

from tkn import timing
from tkn.timing import MAX_CALLS, interleaved, synchronizer


class _Clock:
    """A virtual ``perf_counter``: time moves only when a timed callable advances it, so block lengths and
    times are exact whatever the machine's load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_blocks_separate_the_first_call_from_the_steady_state(monkeypatch):
    """``a`` is slow (8 ms) on a call right after ``b`` ran and fast (1 ms) when called again: the first call of
    each block is the slow one, the steady state the others' mean."""
    clock = _Clock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=clock))
    log = []

    def a():
        clock.now += 0.008 if (not log or log[-1] == "b") else 0.001
        log.append("a")

    def b():
        clock.now += 1e-6
        log.append("b")

    out = interleaved({"a": a, "b": b}, repeats=3, warmup=1, min_block_s=0.02)
    k = out["a"]["calls"]
    assert k == 4  # 1 + ceil(20 ms over the calibration call): made right after the warm-up's b, it takes 8 ms
    assert out["b"]["calls"] == MAX_CALLS  # 1 + 20 ms / 1 us, capped
    # warm-up (a, b), calibration (a once, b once), then 3 rounds of (k calls of a, calls of b)
    assert log[:2] == ["a", "b"]
    rounds = log[4:]
    assert rounds[:k] == ["a"] * k and rounds[k:k + MAX_CALLS] == ["b"] * MAX_CALLS
    assert len(rounds) == 3 * (k + MAX_CALLS)
    assert out["a"]["first_min"] == pytest.approx(0.008) and out["a"]["first_median"] == pytest.approx(0.008)
    assert out["a"]["min"] == pytest.approx(0.001) and out["a"]["median"] == pytest.approx(0.001)
    assert out["b"]["min"] == pytest.approx(1e-6) and out["b"]["first_min"] == pytest.approx(1e-6)


def test_blocks_report_the_fastest_and_the_median_block(monkeypatch):
    """Rounds of different speeds: ``min`` is the fastest block's per-call time, ``median`` the middle one."""
    clock = _Clock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=clock))
    per_call = iter([0.002] * 2 + [0.004] * 6 + [0.001] * 6 + [0.003] * 6)  # warm-up, calibration, 3 rounds

    def f():
        clock.now += next(per_call)

    out = interleaved({"f": f}, repeats=3, warmup=1, min_block_s=0.01)
    assert out["f"]["calls"] == 6  # 1 + 10 ms / 2 ms
    assert out["f"]["first_min"] == pytest.approx(0.001) and out["f"]["first_median"] == pytest.approx(0.003)
    assert out["f"]["min"] == pytest.approx(0.001) and out["f"]["median"] == pytest.approx(0.003)


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


def test_busy_cores_is_the_busy_fraction_of_every_core(monkeypatch):
    samples = iter([(100, 1000), (150, 1100)])  # 50 of 100 jiffies idle over the interval: half the machine
    monkeypatch.setattr(timing, "_cpu_times", lambda path: next(samples))
    monkeypatch.setattr(timing.time, "sleep", lambda s: None)
    assert timing.busy_cores() == pytest.approx(0.5 * os.cpu_count())


def test_cpu_times_reads_idle_and_iowait_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 30 400 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert timing._cpu_times(str(stat)) == (405, 468)
    assert timing.busy_cores(0.0, str(tmp_path / "missing")) is None
