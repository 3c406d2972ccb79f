"""Inference engine and fast training path: run target layers over their ROIs only.

``freeze(model, example_input)`` plans every target layer once: with the
native kernel (:mod:`tkn.engine.native`, a C++ library compiled at first use)
it computes each channel's exact ROI in one call per layer; without it, block
plans and tile plans (see :mod:`tkn.ops.plan`) run on PyTorch operations.
It measures the candidate plans against dense execution on the example's own
activations where that is in doubt, fuses a following batch norm / ReLU /
max-pool into the layer, lets a layer fed by another (through ReLUs,
concatenations, additions) read only the input channels that are non-zero
near each block, and permutes channels through the network where the
consumer of a layer is visible (:mod:`tkn.engine.routes`) — all found by one
analysis of the model's :mod:`torch.fx` graph (:mod:`tkn.engine.graph`) —, lets a linear layer fed by a frozen layer's
flattened output read only the ROI features (:class:`FrozenSparseLinear`), and
returns a model whose target layers are :class:`FrozenTargetConv2d`. The frozen
model computes the same function as ``model.eval()``. Its settings are the
fields of :class:`FreezeOptions` (``freeze(model, x, measure=False)`` or
``freeze(model, x, options=FreezeOptions(measure=False))``).

The training-time counterpart, :func:`tkn.ops.fast_conv.fast_target_conv2d`
(``TargetConv2d(..., execution="fast")``), sits below the layers: it
re-groups channels by ROI at every call and lets autograd differentiate the
blocked computation.
"""
from tkn.engine.modules import FrozenSparseLinear, FrozenTargetConv2d, native_plan
from tkn.engine.options import DEFAULT_CANDIDATES, TILE_GRIDS, FreezeOptions
from tkn.engine.freeze import freeze, plan_summary
from tkn.ops.plan import Block, CostModel, LayerPlan, align_plan, dense_plan, plan_blocks, plan_cost, plan_tiles

__all__ = [
    "FrozenTargetConv2d", "FrozenSparseLinear", "native_plan", "freeze", "FreezeOptions", "plan_summary",
    "DEFAULT_CANDIDATES",
    "TILE_GRIDS",
    "Block", "CostModel", "LayerPlan", "dense_plan", "plan_blocks", "plan_tiles", "plan_cost", "align_plan",
]
