"""The one timing function of ``tkn``: callables timed round-robin, in blocks of consecutive calls.

``tkn bench``, ``tkn demo``, ``tkn frontier``, the study scripts and the latency calibration of
:class:`tkn.LatencyBudget` all time through :func:`interleaved`, so their figures mean the same thing.

How it times
------------
Every round runs each callable in turn (``a, b, c, a, b, c, ...``), so a change of machine load during
the run touches all of them alike. In a round, a callable runs a *block* of ``calls`` consecutive calls,
``calls`` chosen once (after the warm-up rounds) so that the calls after a block's first last at least
``min_block_s``:

* ``first_min`` / ``first_median``: the first call of each block alone, made right after the other
  callables ran. At small batches this call finds its weights evicted by the others (a TKN6 at batch 1
  reads 12 MB of weights; the dense CNN it is compared with, 18 MB), so it measures a cold start.
* ``min`` / ``median``: seconds per call of the block's other calls (their mean), the fastest / median
  block. This is the steady-state latency of calling the same model again and again (what ``timeit``
  and ``torch.utils.benchmark.Timer.blocked_autorange`` measure): its weights and code are in the caches.

With ``min_block_s=0`` (or calls longer than it) a block is one call and the two pairs agree. At batch
64 a forward pass of TKN6 takes tens of milliseconds, so blocks of one call are the rule there; at
batch 1 the two differ, and ``tkn bench`` reports both.

On a GPU a call returns when its kernels are queued, not when they finish: with ``device`` a CUDA
device, the clock is read only after ``torch.cuda.synchronize(device)``, so every figure is the time the
work took on the device (``tkn.freeze`` and ``tkn bench`` pass their input's device).

Example:
    >>> import time
    >>> t = interleaved({"sleep": lambda: time.sleep(0.002)}, repeats=2, min_block_s=0.005)
    >>> t["sleep"]["calls"] >= 2 and t["sleep"]["min"] >= 0.002
    True
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["interleaved", "synchronizer", "busy_cores", "BLOCK_S", "MAX_CALLS"]

#: The shortest block the benchmarks time (seconds): 20 ms, over 15 calls of a 1.2 ms batch-1 pass.
BLOCK_S = 0.02

#: The most calls one block makes, however fast a call.
MAX_CALLS = 1000


def synchronizer(device: Any = None) -> Callable[[], None]:
    """What to call before reading the clock for work on ``device``: ``torch.cuda.synchronize(device)`` for a
    CUDA device, nothing for the CPU (or ``None``).

    >>> synchronizer("cpu")() is None
    True
    """
    if device is None:
        return _nothing
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return _nothing
    return lambda: torch.cuda.synchronize(device)


def _cpu_times(path: str) -> tuple[int, int]:
    """``(idle, total)`` jiffies of all CPUs from the first line of ``/proc/stat`` (idle includes iowait)."""
    with open(path) as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def busy_cores(interval: float = 0.25, path: str = "/proc/stat") -> float | None:
    """How many cores other work keeps busy: the machine's busy fraction over ``interval`` seconds, while this
    thread sleeps, times the number of cores. ``None`` where ``/proc/stat`` cannot be read (not Linux).

    A timing made while other jobs run learns their interference (shared caches, memory bandwidth, a core
    taken from a thread): callers that time for keeps check this first and warn.
    """
    try:
        idle0, total0 = _cpu_times(path)
        time.sleep(interval)
        idle1, total1 = _cpu_times(path)
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    if total1 <= total0:
        return 0.0
    return cores * (1.0 - (idle1 - idle0) / (total1 - total0))


def _nothing() -> None:
    return None


def _once(f: Callable[[], Any], sync: Callable[[], None] = _nothing) -> float:
    sync()
    t0 = time.perf_counter()
    f()
    sync()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                min_block_s: float = 0.0, device: Any = None) -> dict[str, dict[str, float]]:
    """Time each callable round-robin, in blocks of consecutive calls (see the module documentation).

    Args:
        fns: name -> callable without arguments.
        repeats: timed rounds (at least 1).
        warmup: untimed rounds before them (one call of each callable per round).
        min_block_s: the shortest steady part of a block (seconds, the calls after the first); each
            callable's block length is set from one timed call after the warm-up, at most :data:`MAX_CALLS`.
        device: where the callables' work runs; a CUDA device is synchronised before each clock reading
            (:func:`synchronizer`).

    Returns:
        ``{name: {"min", "median", "first_min", "first_median": seconds per call, "calls": block length}}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats}")
    if warmup < 0 or min_block_s < 0:
        raise ValueError(f"warmup and min_block_s must be >= 0, got {warmup} and {min_block_s}")
    sync = synchronizer(device)
    for _ in range(warmup):
        for f in fns.values():
            f()
    calls = {k: 1 for k in fns}
    if min_block_s > 0:
        for k, f in fns.items():
            calls[k] = min(MAX_CALLS, 1 + math.ceil(min_block_s / max(_once(f, sync), 1e-9)))
    blocks: dict[str, list[float]] = {k: [] for k in fns}
    firsts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            t2 = t1 = time.perf_counter()
            if calls[k] > 1:
                for _ in range(calls[k] - 1):
                    f()
                sync()
                t2 = time.perf_counter()
            firsts[k].append(t1 - t0)
            blocks[k].append((t2 - t1) / (calls[k] - 1) if calls[k] > 1 else t1 - t0)
    return {k: {"min": min(blocks[k]), "median": statistics.median(blocks[k]), "first_min": min(firsts[k]),
                "first_median": statistics.median(firsts[k]), "calls": calls[k]} for k in fns}
