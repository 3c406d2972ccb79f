"""Shared builders for the engine tests."""
from __future__ import annotations

import os

import pytest
import torch

from tkn.ops.plan import CostModel
from tkn.layers import TargetConv2d

#: A cost model that never merges for overhead: many small blocks, a non-trivial permutation.
FINE = CostModel(channel_quantum=1, copy_cost=0.0, call_cost=0.0)

#: Marks a test that needs the native kernel (the ``native_kernel`` fixture of ``tests/engine/conftest.py``).
needs_native = pytest.mark.usefixtures("native_kernel")


def require_native() -> None:
    """Skip the calling test when the native kernel is unavailable (no compiler, a failed build or check,
    ``TKN_NATIVE=0``); fail it instead under ``TKN_REQUIRE_NATIVE=1``, as CI runs (``scripts/test.sh``)."""
    from tkn.engine import native

    if native.available():
        return
    message = f"native kernel unavailable: {native.reason()}"
    if os.environ.get("TKN_REQUIRE_NATIVE", "0").strip().lower() not in ("", "0", "false", "no", "off"):
        pytest.fail(f"{message} (TKN_REQUIRE_NATIVE=1: the native tests must run)", pytrace=False)
    pytest.skip(message)


@torch.no_grad()
def random_rois_(layer: TargetConv2d, seed: int, s_range=(0.05, 0.5)) -> TargetConv2d:
    g = torch.Generator().manual_seed(seed)
    layer.m.copy_(torch.rand(layer.m.shape, generator=g, dtype=torch.float64).to(layer.m.dtype))
    lo, hi = s_range
    layer.s.copy_((torch.rand(layer.s.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(layer.s.dtype))
    return layer
