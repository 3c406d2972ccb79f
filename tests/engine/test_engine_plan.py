"""The block planner: hand-computed groupings and the invariants every plan must keep."""
from __future__ import annotations

import pytest
import torch

from tkn import functional as TF
from tkn.ops.plan import (Block, CostModel, align_plan, dense_plan, input_span, plan_blocks, plan_cost, plan_tiles,
                             plan_union_tiles)
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


def _random_rois(seed: int, c: int = 40, size: int = 17) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, size, (c, 2), generator=g)
    b = torch.randint(0, size, (c, 2), generator=g)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b) + 1
    return torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)


def _coverage(plan, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """How many blocks compute each (channel, y, x)."""
    hits = torch.zeros(channels, *size, dtype=torch.long)
    for b in plan.blocks:
        for c in plan.channels(b):
            hits[c, b.y0:b.y1, b.x0:b.x1] += 1
    return hits


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (17, 2)])
@pytest.mark.parametrize("cost", [FINE, CostModel(channel_quantum=16, call_cost=1e8)])
def test_tiles_compute_every_roi_position_exactly_once(seed, grid, cost):
    rois = _random_rois(seed)
    plan = plan_tiles(rois, output_hw=(17, 17), grid=grid, **GEOM, batch=4, cost=cost)
    assert plan.mode == "tiles" and plan.perm == list(range(40))
    hits = _coverage(plan, 40, (17, 17))
    inside = TF.roi_mask(rois, 17, 17).bool()
    assert (hits[inside] == 1).all()  # every ROI position once: no channel is written twice anywhere
    assert (hits <= 1).all()
    assert len({b.tile for b in plan.blocks}) <= grid[0] * grid[1]
    for a in plan.blocks:  # blocks of different tiles never overlap: tiles partition the map
        for b in plan.blocks:
            if a.tile != b.tile:
                assert min(a.y1, b.y1) <= max(a.y0, b.y0) or min(a.x1, b.x1) <= max(a.x0, b.x0)


def test_tiles_split_a_wide_roi_and_keep_blocks_tight():
    # one ROI over the whole width and one small ROI at the right: on a 1x2 grid the wide one is split in
    # two halves, and the small one joins the right half (same box there) instead of widening anything
    rois = torch.tensor([[0, 4, 0, 16], [0, 4, 8, 16]])
    plan = plan_tiles(rois, output_hw=(4, 16), grid=(1, 2), **GEOM, cost=FINE)
    got = sorted((tuple(sorted(plan.channels(b))), b.y0, b.y1, b.x0, b.x1) for b in plan.blocks)
    assert got == [((0,), 0, 4, 0, 8), ((0, 1), 0, 4, 8, 16)]


@pytest.mark.parametrize("align", [2, 3])
def test_aligned_tiles_cover_what_the_pool_reads(align):
    rois = _random_rois(5)
    plan = plan_tiles(rois, output_hw=(17, 17), grid=(3, 2), **GEOM, cost=FINE, align=align)
    limit = 17 // align * align
    for b in plan.blocks:
        assert b.y0 % align == 0 == b.x0 % align and b.y1 % align == 0 == b.x1 % align
        assert b.y1 <= limit and b.x1 <= limit
    hits = _coverage(plan, 40, (17, 17))
    inside = TF.roi_mask(rois, 17, 17).bool()
    inside[:, limit:] = False
    inside[:, :, limit:] = False
    assert (hits[inside] == 1).all() and (hits <= 1).all()
    blocks = align_plan(plan_blocks(rois, **GEOM, cost=FINE), align, (17, 17))
    assert all(b.y0 % align == 0 and b.x1 % align == 0 for b in blocks.blocks)
    assert (_coverage(blocks, 40, (17, 17))[inside] == 1).all()


def test_plan_cost_charges_quantised_blocks():
    plan = plan_blocks(torch.tensor([[0, 4, 0, 4]]), **GEOM, cost=FINE)
    per_mac = 4 * 3 * 3
    assert plan_cost(plan, **GEOM, output_hw=(8, 8), cost=CostModel(channel_quantum=8, copy_cost=0.0,
                                                                     call_cost=0.0)) == 8 * 16 * per_mac
    assert plan_cost(dense_plan(3), **GEOM, output_hw=(8, 8), cost=FINE) == 3 * 64 * per_mac


def test_bad_tile_grid_is_rejected():
    with pytest.raises(ValueError, match="grid must be two positive"):
        plan_tiles(_random_rois(0), output_hw=(17, 17), grid=(0, 2), **GEOM)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("grid", [(1, 1), (3, 2), (5, 5)])
@pytest.mark.parametrize("align", [1, 2])
def test_union_tiles_are_one_block_per_tile_covering_each_roi_once(seed, grid, align):
    rois = _random_rois(seed)
    plan = plan_union_tiles(rois, output_hw=(17, 17), grid=grid, align=align)
    assert plan.mode == "tiles" and len({b.tile for b in plan.blocks}) == len(plan.blocks) <= grid[0] * grid[1]
    limit = 17 // align * align
    inside = TF.roi_mask(rois, 17, 17).bool()
    inside[:, limit:] = False
    inside[:, :, limit:] = False
    hits = _coverage(plan, 40, (17, 17))
    assert (hits[inside] == 1).all() and (hits <= 1).all()
    for b in plan.blocks:  # exactly the channels meeting the block's tile, over their clipped bounding box
        assert b.y0 % align == 0 == b.x0 % align
        channels = plan.channels(b)
        assert channels == sorted(channels)


def test_union_tiles_hand_example_and_bad_grid():
    rois = torch.tensor([[0, 8, 0, 8], [0, 4, 6, 8], [9, 9, 0, 3]])  # the last one is empty
    plan = plan_union_tiles(rois, output_hw=(8, 8), grid=(1, 2))
    assert [(plan.channels(b), b.y0, b.y1, b.x0, b.x1) for b in plan.blocks] == [([0], 0, 8, 0, 4),
                                                                                 ([0, 1], 0, 8, 4, 8)]
    with pytest.raises(ValueError, match="grid must be two positive"):
        plan_union_tiles(rois, output_hw=(8, 8), grid=(1,))


def test_input_span_counts_rows_inside_and_outside_the_map():
    """Against the rows each output row reads, listed one by one: spans across a border, inside the map and
    wholly in the padding (a 1x1 convolution padded by 3 on a 2-row map: output rows 0-2 and 5-7 read nothing)."""
    g = torch.Generator().manual_seed(0)
    cases = [(0, 3, 1, 1, 3, 2), (5, 8, 1, 1, 3, 2), (2, 6, 1, 1, 3, 2), (0, 8, 1, 1, 3, 2), (4, 5, 2, 3, 4, 3)]
    cases += [tuple(int(v) for v in torch.randint(0, 6, (6,), generator=g)) for _ in range(300)]
    for lo, hi, stride, extent, pad, size in cases:
        hi, stride, extent, size = lo + hi + 1, stride + 1 if stride == 0 else stride, extent + 1, size + 1
        rows = [y * stride - pad + t for y in range(lo, hi) for t in range(extent)]
        a, b = min(rows), max(rows) + 1  # the crop spans [a, b): its rows in the map, the others zero padding
        inside = [r for r in range(a, b) if 0 <= r < size]
        expect = ((inside[0], inside[-1] + 1) if inside else (min(max(a, 0), size),) * 2)
        expect += (sum(r < 0 for r in range(a, b)), sum(r >= size for r in range(a, b)))
        assert input_span(lo, hi, stride, extent, pad, size) == expect, (lo, hi, stride, extent, pad, size)
