"""The block planner: hand-computed groupings and the invariants every plan must keep."""
from __future__ import annotations

import pytest
import torch

from tkn.engine.plan import Block, CostModel, plan_blocks
from helpers_engine import FINE

GEOM = {"in_channels": 4, "kernel_size": (3, 3), "kernel_extent": (3, 3)}


def test_identical_rois_share_one_block_and_far_rois_do_not():
    rois = torch.tensor([[0, 4, 0, 4], [20, 24, 20, 24], [0, 4, 0, 4], [20, 24, 20, 24]])
    plan = plan_blocks(rois, **GEOM, cost=FINE)
    assert sorted((b.count, b.y0, b.y1, b.x0, b.x1) for b in plan.blocks) == [(2, 0, 4, 0, 4), (2, 20, 24, 20, 24)]
    first = plan.blocks[0]
    assert sorted(plan.perm[first.c0:first.c1]) == [0, 2]


def test_overhead_merges_into_the_bounding_box():
    # two 4x4 boxes; a per-call cost far above the union's waste makes one block over their bounding box
    rois = torch.tensor([[0, 4, 0, 4], [2, 6, 3, 7]])
    plan = plan_blocks(rois, **GEOM, cost=CostModel(channel_quantum=1, copy_cost=0.0, call_cost=1e9))
    assert plan.blocks == [Block(0, 2, 0, 6, 0, 7)]


def test_channel_quantum_charges_partial_blocks():
    # with quantum 8, a block of 1 channel costs like 8: merging two 1-channel boxes whose union is at most
    # twice as big is then always cheaper (2 x 8 x 16 > 8 x 24)
    rois = torch.tensor([[0, 4, 0, 4], [0, 4, 2, 6]])
    plan = plan_blocks(rois, **GEOM, cost=CostModel(channel_quantum=8, copy_cost=0.0, call_cost=0.0))
    assert plan.blocks == [Block(0, 2, 0, 4, 0, 6)]
    split = plan_blocks(rois, **GEOM, cost=FINE)
    assert len(split.blocks) == 2


def test_empty_rois_go_last_without_a_block():
    rois = torch.tensor([[0, 0, 0, 5], [1, 3, 1, 3], [2, 5, 4, 4]])
    plan = plan_blocks(rois, **GEOM, cost=FINE)
    assert plan.n_active == 1 and plan.perm[0] == 1 and sorted(plan.perm[1:]) == [0, 2]
    assert plan.blocks == [Block(0, 1, 1, 3, 1, 3)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cost", [FINE, CostModel(), CostModel(channel_quantum=16, call_cost=1e8)])
def test_every_channel_is_covered_exactly_once(seed, cost):
    g = torch.Generator().manual_seed(seed)
    c, size = 40, 17
    a = torch.randint(0, size, (c, 2), generator=g)
    b = torch.randint(0, size, (c, 2), generator=g)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b) + 1
    rois = torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)
    plan = plan_blocks(rois, **GEOM, batch=8, cost=cost)
    assert sorted(plan.perm) == list(range(c))
    seen = []
    for blk in plan.blocks:
        for j in range(blk.c0, blk.c1):
            y0, y1, x0, x1 = rois[plan.perm[j]].tolist()
            assert blk.y0 <= y0 and y1 <= blk.y1 and blk.x0 <= x0 and x1 <= blk.x1
            seen.append(j)
    assert seen == list(range(plan.n_active)) and plan.n_active == c


def test_bad_rois_are_rejected():
    with pytest.raises(ValueError, match="rois"):
        plan_blocks(torch.zeros(3, 3, dtype=torch.long), **GEOM)
    with pytest.raises(ValueError, match="cost model"):
        CostModel(channel_quantum=0)
