"""Planning: group a target layer's output channels into blocks that share one bounding ROI.

A *plan* reorders the output channels (``perm``) and cuts the new order into
contiguous :class:`Block` s. Each block is executed as one convolution over the
bounding box of its channels' ROIs (the halo read from the input), so the
channels of a block cost ``count × box area`` multiply–accumulates instead of
their own ROI areas: the planner trades that waste against the cost of
issuing more, smaller convolutions.

The grouping is agglomerative: every distinct ROI starts as its own cluster
and the pair of clusters whose merge lowers the modelled cost the most is
merged, until no merge helps. The cost of a block (in units of one
multiply–accumulate of a large convolution) is, per sample of the batch::

    macs(round_up(count, channel_quantum) × box area)   # the convolution
    + copy_cost × input channels × halo area             # copying its input crop
    + call_cost / batch                                  # a fixed cost per call

``channel_quantum`` models the CPU kernels' output-channel blocking (a block of
5 channels costs as much as one of 8), ``copy_cost`` the crop copy that the
convolution makes, ``call_cost`` the per-call overhead. The constants are
rough; :func:`tkn.engine.freeze` plans with several settings and keeps the one
that *measures* fastest (or dense, if nothing beats it).

All of this is integer work on small CPU arrays: the ROIs may live on any
device, they are copied to the host once.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from torch import Tensor

__all__ = ["PlanMode", "Block", "LayerPlan", "input_span", "CostModel", "plan_blocks", "plan_tiles", "plan_union_tiles", "plan_cost",
           "align_plan", "dense_plan", "PAD_CHANNELS", "padded_channels"]

#: The executors pad every block to a multiple of this many output channels (zero weight rows): oneDNN's
#: AVX2 convolution runs output channels in groups of 8 and takes a path 1.5-2.5x slower per channel for
#: other counts (measured on 256->c, 5x5, 7x7 crops, batch 64: 17 channels took 13.9 ms, 24 took 9.2 ms).
PAD_CHANNELS = 8


@dataclass(frozen=True)
class Block:
    """Channels ``[c0, c1)`` of the permuted order, computed over the output box ``[y0, y1) × [x0, x1)``.

    ``tile`` numbers the tile of a tile plan that the block was planned in (0 in other plans). It is
    bookkeeping only: the executor (:class:`tkn.engine.FrozenTargetConv2d`) copies each block's own input
    crop, also for blocks of one tile (sharing one crop per tile measured slower).
    """

    c0: int
    c1: int
    y0: int
    y1: int
    x0: int
    x1: int
    tile: int = 0

    @property
    def count(self) -> int:
        return self.c1 - self.c0

    @property
    def area(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


class PlanMode(str, Enum):
    """How a target layer runs (see :class:`LayerPlan`); a ``str`` enum, so ``PlanMode("tiles")`` parses a name."""

    DENSE = "dense"
    BLOCKS = "blocks"
    TILES = "tiles"
    NATIVE = "native"

    def __str__(self) -> str:
        return self.value


def input_span(lo: int, hi: int, stride: int, extent: int, pad_before: int, size: int) -> tuple[int, int, int, int]:
    """Input rows ``[a, b)`` that output rows ``[lo, hi)`` read, clipped to ``[0, size)``, plus the zero padding
    ``(before, after)`` that stands in for the clipped part: ``(a, b, before, after)``.

    ``extent`` is the dilated kernel extent ``dilation * (k - 1) + 1`` and ``pad_before`` the convolution's
    padding on that side.
    """
    a = lo * stride - pad_before
    b = (hi - 1) * stride + extent - pad_before
    # a span wholly in the padding (before the map or after it) reads no input row: all of it is padding
    ca, cb = min(max(a, 0), size), min(max(b, 0), size)
    return ca, cb, max(min(b, 0) - a, 0), max(b - max(a, size), 0)


@dataclass
class LayerPlan:
    """How one target layer runs: ``dense``, ``blocks`` over the channel order ``perm``, or ``tiles``.

    * ``blocks``: ``perm[j]`` is the original index of the channel stored at
      position ``j``; block ``b`` computes channels ``perm[b.c0:b.c1]`` (every
      active channel in exactly one block, over its whole ROI). Channels
      ``perm[n_active:]`` have empty ROIs: they are all zero.
    * ``tiles``: the map is cut into tiles and each tile has its own blocks, so
      a channel's ROI may be split over several blocks. Block ``b`` computes
      channels ``index[b.c0:b.c1]`` (original indices); ``perm`` is the identity.
      ``union`` marks the tiles of :func:`plan_union_tiles` (one block per tile).
    * ``native``: the C++ kernel of :mod:`tkn.engine.native` computes every channel's exact ROI; no blocks.
      ``strategy`` names how it spends its vector lanes (:data:`tkn.engine.native.STRATEGIES`).

    ``mode`` accepts the names as strings and is stored as a :class:`PlanMode`.
    """

    mode: PlanMode
    perm: list[int]
    blocks: list[Block] = field(default_factory=list)
    n_active: int = 0
    label: str = ""
    index: list[int] = field(default_factory=list)
    union: bool = False
    strategy: str = ""

    def __post_init__(self) -> None:
        try:
            self.mode = PlanMode(self.mode)
        except ValueError:
            names = ", ".join(repr(m.value) for m in PlanMode)
            raise ValueError(f"plan mode must be one of {names}, got {self.mode!r}") from None

    def channels(self, block: Block) -> list[int]:
        """Original indices of the channels ``block`` computes."""
        return (self.index if self.mode is PlanMode.TILES else self.perm)[block.c0:block.c1]

    def macs_per_position(self) -> int:
        """``Σ count × area`` over the blocks (output positions computed, times channels)."""
        return sum(b.count * b.area for b in self.blocks)


@dataclass(frozen=True)
class CostModel:
    """Per-sample cost of one block, in multiply–accumulates of a large convolution (see module doc)."""

    channel_quantum: int = 8
    copy_cost: float = 40.0
    call_cost: float = 2.0e6

    def __post_init__(self) -> None:
        if self.channel_quantum < 1 or self.copy_cost < 0 or self.call_cost < 0:
            raise ValueError(f"cost model constants must be non-negative (quantum >= 1), got {self}")


def dense_plan(channels: int) -> LayerPlan:
    """The plan that runs the layer as one full convolution (then window and mask)."""
    return LayerPlan(PlanMode.DENSE, list(range(channels)), [], channels, "dense")


def _halo(lo: np.ndarray, hi: np.ndarray, extent: int, stride: int) -> np.ndarray:
    """Input rows needed by output rows ``[lo, hi)``: ``(hi - 1) * stride + extent - lo * stride``."""
    return (hi - 1 - lo) * stride + extent


def _bounding(rois: np.ndarray) -> np.ndarray:
    return np.array([rois[:, 0].min(), rois[:, 1].max(), rois[:, 2].min(), rois[:, 3].max()], dtype=np.int64)


def _refine(groups: list[list[int]], r: np.ndarray, block_cost, passes: int) -> list[list[int]]:
    """Move single channels between groups while that lowers the total modelled cost (first-improvement passes)."""
    groups = [list(g) for g in groups]
    if passes <= 0 or len(groups) < 2:
        return groups
    where = {c: i for i, g in enumerate(groups) for c in g}
    boxes = np.stack([_bounding(r[g]) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=np.int64)
    own = block_cost(boxes, counts).astype(np.float64)
    for _ in range(passes):
        moved = 0
        for c in list(where):
            i = where[c]
            if counts[i] == 0:
                continue
            rest = [k for k in groups[i] if k != c]
            if rest:
                box_rest = _bounding(r[rest])
                cost_rest = float(block_cost(box_rest, np.int64(len(rest))))
            else:
                box_rest, cost_rest = boxes[i], 0.0
            gain_remove = cost_rest - own[i]
            u = np.empty_like(boxes)
            u[:, 0] = np.minimum(boxes[:, 0], r[c, 0])
            u[:, 1] = np.maximum(boxes[:, 1], r[c, 1])
            u[:, 2] = np.minimum(boxes[:, 2], r[c, 2])
            u[:, 3] = np.maximum(boxes[:, 3], r[c, 3])
            add = block_cost(u, counts + 1) - own
            add[i] = np.inf
            add[counts == 0] = np.inf
            j = int(np.argmin(add))
            if gain_remove + add[j] < -1e-9 * max(own[i], 1.0):
                groups[i] = rest
                groups[j].append(c)
                where[c] = j
                boxes[i], counts[i], own[i] = box_rest, len(rest), cost_rest
                boxes[j], counts[j], own[j] = u[j], counts[j] + 1, add[j] + own[j]
                moved += 1
        if not moved:
            break
    return [g for g in groups if g]


def plan_blocks(
    rois: Tensor,
    *,
    in_channels: int,
    kernel_size: tuple[int, int],
    kernel_extent: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    batch: int = 1,
    cost: CostModel = CostModel(),
    refine: int = 3,
) -> LayerPlan:
    """Group channels by ROI (agglomerative, cost-driven) and return a ``"blocks"`` plan.

    Args:
        rois: integer tensor ``(C, 4)``: ``y0, y1, x0, x1`` per output channel (any device).
        in_channels: input channels seen by each output channel (``C_in / groups``).
        kernel_size: ``(kH, kW)``.
        kernel_extent: dilated kernel span per axis.
        stride: convolution stride.
        batch: batch size the plan is for (the per-call cost is shared by the batch).
        cost: the cost model.
        refine: passes of local improvement after the agglomeration (each channel
            moves to the block where the modelled cost drops most, if any).

    Returns:
        A :class:`LayerPlan`; channels with an empty ROI are put last and get no block.

    Example:
        >>> r = torch.tensor([[0, 4, 0, 4], [10, 14, 10, 14], [0, 4, 0, 4]])
        >>> p = plan_blocks(r, in_channels=8, kernel_size=(3, 3), kernel_extent=(3, 3),
        ...                 cost=CostModel(channel_quantum=1, call_cost=0.0))
        >>> [(b.count, b.y0, b.y1) for b in p.blocks]
        [(2, 0, 4), (1, 10, 14)]
    """
    r = _host_rois(rois).numpy()
    channels = r.shape[0]
    nonempty = (r[:, 1] > r[:, 0]) & (r[:, 3] > r[:, 2])
    active = np.flatnonzero(nonempty)
    empty = np.flatnonzero(~nonempty)
    if active.size == 0:
        return LayerPlan(PlanMode.BLOCKS, list(range(channels)), [], 0, "empty")

    uniq, inverse = np.unique(r[active], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = [active[inverse == u].tolist() for u in range(len(uniq))]
    box = uniq.astype(np.int64).copy()
    count = np.array([len(mm) for mm in members], dtype=np.int64)

    per_mac = in_channels * kernel_size[0] * kernel_size[1]
    q = cost.channel_quantum
    call = cost.call_cost / max(batch, 1)
    copy = cost.copy_cost * in_channels

    def block_cost(b: np.ndarray, n: np.ndarray) -> np.ndarray:
        area = (b[..., 1] - b[..., 0]) * (b[..., 3] - b[..., 2])
        halo = _halo(b[..., 0], b[..., 1], kernel_extent[0], stride[0]) * _halo(b[..., 2], b[..., 3], kernel_extent[1], stride[1])
        return (-(-n // q) * q) * area * per_mac + copy * halo + call

    alive = np.ones(len(box), dtype=bool)
    own = block_cost(box, count).astype(np.float64)

    def union(i: int, js: np.ndarray) -> np.ndarray:
        u = np.empty((len(js), 4), dtype=np.int64)
        u[:, 0] = np.minimum(box[i, 0], box[js, 0])
        u[:, 1] = np.maximum(box[i, 1], box[js, 1])
        u[:, 2] = np.minimum(box[i, 2], box[js, 2])
        u[:, 3] = np.maximum(box[i, 3], box[js, 3])
        return u

    k = len(box)
    gain = np.full((k, k), np.inf)
    for i in range(k):
        js = np.arange(i + 1, k)
        if js.size:
            gain[i, js] = block_cost(union(i, js), count[i] + count[js]) - own[i] - own[js]
    gain = np.minimum(gain, gain.T)
    while alive.sum() > 1:
        flat = int(np.argmin(gain))
        i, j = divmod(flat, k)
        if not gain[i, j] < 0:
            break
        box[i] = union(i, np.array([j]))[0]
        count[i] += count[j]
        members[i] += members[j]
        own[i] = block_cost(box[i], count[i])
        alive[j] = False
        gain[j, :] = np.inf
        gain[:, j] = np.inf
        others = np.flatnonzero(alive)
        others = others[others != i]
        row = np.full(k, np.inf)
        if others.size:
            row[others] = block_cost(union(i, others), count[i] + count[others]) - own[i] - own[others]
        gain[i, :] = row
        gain[:, i] = row

    groups = [members[c] for c in np.flatnonzero(alive)]
    groups = _refine(groups, r, block_cost, passes=refine)
    boxes = [_bounding(r[g]) for g in groups]
    order = sorted(range(len(groups)), key=lambda c: (boxes[c][0], boxes[c][2], boxes[c][1], boxes[c][3]))
    perm: list[int] = []
    blocks: list[Block] = []
    for c in order:
        start = len(perm)
        perm += sorted(groups[c])
        y0, y1, x0, x1 = (int(v) for v in boxes[c])
        blocks.append(Block(start, len(perm), y0, y1, x0, x1))
    n_active = len(perm)
    perm += empty.tolist()
    return LayerPlan(PlanMode.BLOCKS, perm, blocks, n_active, f"blocks(q={q}, copy={cost.copy_cost:g}, call={cost.call_cost:g})")


def plan_cost(
    plan: LayerPlan,
    *,
    in_channels: int,
    kernel_size: tuple[int, int],
    kernel_extent: tuple[int, int],
    output_hw: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    batch: int = 1,
    cost: CostModel = CostModel(),
) -> float:
    """Modelled per-sample cost of ``plan`` (same units as the planner's; a dense plan is one full convolution)."""
    per_mac = in_channels * kernel_size[0] * kernel_size[1]
    call = cost.call_cost / max(batch, 1)
    if plan.mode is PlanMode.DENSE:
        return len(plan.perm) * output_hw[0] * output_hw[1] * per_mac + call
    total = 0.0
    q = cost.channel_quantum
    for b in plan.blocks:
        halo = _halo(b.y0, b.y1, kernel_extent[0], stride[0]) * _halo(b.x0, b.x1, kernel_extent[1], stride[1])
        total += -(-b.count // q) * q * b.area * per_mac + cost.copy_cost * in_channels * halo + call
    return total


def _align_box(lo: int, hi: int, align: int, limit: int) -> tuple[int, int]:
    return lo // align * align, min(-(-hi // align) * align, limit)


def align_plan(plan: LayerPlan, align: int, output_hw: tuple[int, int]) -> LayerPlan:
    """Round every block's box outwards to multiples of ``align`` (for a fused ``align``×``align`` max-pool).

    Rows and columns past ``(H // align) * align`` are dropped (the pool never
    reads them); a block left with an empty box is dropped. Extending a box only
    adds positions whose window·mask value is zero, so the result is unchanged.
    """
    if align <= 1 or plan.mode is PlanMode.DENSE:
        return plan
    ly, lx = output_hw[0] // align * align, output_hw[1] // align * align
    blocks = []
    for b in plan.blocks:
        y0, y1 = _align_box(b.y0, b.y1, align, ly)
        x0, x1 = _align_box(b.x0, b.x1, align, lx)
        if y1 > y0 and x1 > x0:
            blocks.append(Block(b.c0, b.c1, y0, y1, x0, x1, b.tile))
    return dataclasses.replace(plan, blocks=blocks)


def _cuts(size: int, parts: int, align: int) -> list[int]:
    limit = size // align * align if align > 1 else size
    return sorted({min(limit, round(limit * i / parts / align) * align) for i in range(parts + 1)})


def _tiles(output_hw: tuple[int, int], grid: tuple[int, int], align: int) -> list[tuple[int, int, int, int]]:
    """The ``grid`` of tiles ``(y0, y1, x0, x1)`` over the map, borders at multiples of ``align``, row-major."""
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be two positive tile counts (rows, columns), got {grid!r}")
    ys, xs = _cuts(output_hw[0], grid[0], align), _cuts(output_hw[1], grid[1], align)
    return [(ya, yb, xa, xb) for ya, yb in zip(ys, ys[1:]) for xa, xb in zip(xs, xs[1:])]


def _host_rois(rois: Tensor) -> Tensor:
    """``rois`` checked to be ``(C, 4)`` and copied to the host as int64 (planning is integer CPU work)."""
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 4:
        raise ValueError(f"rois must be a (C, 4) tensor, got {getattr(rois, 'shape', type(rois).__name__)}")
    return rois.detach().to("cpu", torch.int64)


def padded_channels(count: int) -> int:
    """``count`` rounded up to a multiple of :data:`PAD_CHANNELS` (the channels a block actually computes)."""
    return -(-count // PAD_CHANNELS) * PAD_CHANNELS


def plan_tiles(
    rois: Tensor,
    *,
    output_hw: tuple[int, int],
    grid: tuple[int, int],
    in_channels: int,
    kernel_size: tuple[int, int],
    kernel_extent: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    batch: int = 1,
    cost: CostModel = CostModel(),
    align: int = 1,
    refine: int = 1,
) -> LayerPlan:
    """Cut the map into a ``grid`` of tiles and plan each tile's blocks on the ROIs clipped to it.

    A channel whose ROI crosses a tile border is computed by one block per tile
    it touches, so the blocks' boxes follow the ROIs much more closely than
    whole-ROI blocks (on 256 random ROIs of a 28×28 map, a 4×4 grid computes
    1.4–1.5× the ROI positions instead of 2–2.8×) at the price of more, smaller
    convolutions. Tile borders are multiples of ``align``.

    Args:
        rois: integer tensor ``(C, 4)`` (``y0, y1, x0, x1``).
        output_hw: the layer's output size ``(H, W)``.
        grid: tiles per axis ``(rows, columns)``.
        align: tile borders and block boxes at multiples of this (see :func:`align_plan`).
        in_channels, kernel_size, kernel_extent, stride, batch, cost, refine: as :func:`plan_blocks`.

    Returns:
        A ``"tiles"`` :class:`LayerPlan`.

    Example:
        >>> r = torch.tensor([[0, 8, 0, 8], [0, 8, 4, 8]])
        >>> p = plan_tiles(r, output_hw=(8, 8), grid=(1, 2), in_channels=4, kernel_size=(3, 3),
        ...                kernel_extent=(3, 3), cost=CostModel(channel_quantum=1, copy_cost=0, call_cost=0))
        >>> [(p.channels(b), b.x0, b.x1) for b in p.blocks]
        [([0], 0, 4), ([0, 1], 4, 8)]
    """
    r = _host_rois(rois)
    channels = r.shape[0]
    index: list[int] = []
    blocks: list[Block] = []
    for t, (ya, yb, xa, xb) in enumerate(_tiles(output_hw, grid, align)):
        clipped = torch.stack([r[:, 0].clamp(ya, yb), r[:, 1].clamp(ya, yb),
                               r[:, 2].clamp(xa, xb), r[:, 3].clamp(xa, xb)], 1)
        tile = plan_blocks(clipped, in_channels=in_channels, kernel_size=kernel_size,
                           kernel_extent=kernel_extent, stride=stride, batch=batch, cost=cost, refine=refine)
        for b in tile.blocks:
            start = len(index)
            index += tile.perm[b.c0:b.c1]
            y0, y1 = _align_box(b.y0, b.y1, align, yb)
            x0, x1 = _align_box(b.x0, b.x1, align, xb)
            blocks.append(Block(start, len(index), y0, y1, x0, x1, t))
    label = f"tiles({grid[0]}x{grid[1]}, q={cost.channel_quantum}, copy={cost.copy_cost:g}, call={cost.call_cost:g})"
    active = len({c for c in index})
    return LayerPlan(PlanMode.TILES, list(range(channels)), blocks, active, label, index)


def plan_union_tiles(rois: Tensor, *, output_hw: tuple[int, int], grid: tuple[int, int], align: int = 1) -> LayerPlan:
    """One block per tile: every channel whose ROI meets the tile, over the bounding box of those ROIs there.

    No grouping search (vectorised, a few milliseconds even for hundreds of channels, so it can be redone
    at every training step); the blocks are large (dozens of channels), which the CPU kernels like, at
    the price of computing channels over the parts of the tile box their ROI does not cover (on TKN6's
    256→256 layer, 28×28: 1.57× the ROI work on a 7×7 grid, against 1.41–1.5× for :func:`plan_tiles`,
    and measured as fast or faster).

    Args and result as :func:`plan_tiles` (``"tiles"`` mode).

    Example:
        >>> r = torch.tensor([[0, 8, 0, 8], [0, 4, 6, 8]])
        >>> p = plan_union_tiles(r, output_hw=(8, 8), grid=(1, 2))
        >>> [(p.channels(b), b.y0, b.y1, b.x0, b.x1) for b in p.blocks]
        [([0], 0, 8, 0, 4), ([0, 1], 0, 8, 4, 8)]
    """
    r = _host_rois(rois)
    index: list[int] = []
    blocks: list[Block] = []
    for t, (ya, yb, xa, xb) in enumerate(_tiles(output_hw, grid, align)):
        y0, y1 = r[:, 0].clamp(ya, yb), r[:, 1].clamp(ya, yb)
        x0, x1 = r[:, 2].clamp(xa, xb), r[:, 3].clamp(xa, xb)
        hit = torch.nonzero((y1 > y0) & (x1 > x0)).flatten()
        if hit.numel() == 0:
            continue
        by0, by1 = _align_box(int(y0[hit].min()), int(y1[hit].max()), align, yb)
        bx0, bx1 = _align_box(int(x0[hit].min()), int(x1[hit].max()), align, xb)
        start = len(index)
        index += hit.tolist()
        blocks.append(Block(start, len(index), by0, by1, bx0, bx1, t))
    label = f"union-tiles({grid[0]}x{grid[1]})"
    return LayerPlan(PlanMode.TILES, list(range(r.shape[0])), blocks, len(set(index)), label, index, union=True)
