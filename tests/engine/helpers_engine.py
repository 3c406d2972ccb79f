"""Shared builders for the engine tests."""
from __future__ import annotations

import torch

from tkn.ops.plan import CostModel
from tkn.layers import TargetConv2d

#: A cost model that never merges for overhead: many small blocks, a non-trivial permutation.
FINE = CostModel(channel_quantum=1, copy_cost=0.0, call_cost=0.0)


@torch.no_grad()
def random_rois_(layer: TargetConv2d, seed: int, s_range=(0.05, 0.5)) -> TargetConv2d:
    g = torch.Generator().manual_seed(seed)
    layer.m.copy_(torch.rand(layer.m.shape, generator=g, dtype=torch.float64).to(layer.m.dtype))
    lo, hi = s_range
    layer.s.copy_((torch.rand(layer.s.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(layer.s.dtype))
    return layer
