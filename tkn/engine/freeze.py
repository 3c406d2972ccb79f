"""``freeze``: plan every target layer once, measure, permute channels, return an inference model.

Steps:

1. Analyse the model once on its :mod:`torch.fx` graph (:mod:`tkn.engine.graph`;
   every model of :mod:`tkn.models` traces): for each target layer called once,
   the consumer that can absorb a permutation of its channels
   (:mod:`tkn.engine.routes`), the epilogue to fuse (an eval-mode
   ``nn.BatchNorm2d`` folded into a per-channel ``scale``/``shift``, a ReLU in
   any form, a ``k``×``k`` max-pool of stride ``k``), the residual addition
   after it, and whether its input is a frozen layer's output, zero outside
   known boxes (zeros followed through ReLU, dropout, concatenations and
   additions). The fused nodes leave the graph: fused modules become
   ``nn.Identity``, and where a function or method call was fused the result
   is a :class:`torch.fx.GraphModule` of the rewritten graph. A model that
   cannot be traced (or ``graph=False``) is frozen without the analysis: every
   target layer is replaced where it is, with nothing fused, permuted or skipped
   for input sparsity.
2. Run the example once (no grad) to record each target layer's input (its
   size, and the activations used to time plans).
3. For each layer, in execution order, when the native kernel is available
   (:func:`tkn.engine.native.available`) and can run the layer: build the dense
   plan and a native plan per lane strategy (:data:`tkn.engine.native.STRATEGIES`:
   channel groups over ROI unions, or batch lanes over exact per-position ROIs).
   When ``measure`` is true the native plans are timed (interleaved, minimum of
   ``repeats``) on the input layout the producer hands over, and the fastest is
   kept if it beats dense by ``DENSE_MARGIN``; dense is not timed when a native
   plan executes at most ``NATIVE_SURE`` of the dense multiply–accumulates (the
   batch's padding lanes counted). Without ``measure``, the native plan with the
   least work is kept if it executes under ``NATIVE_MODELLED`` of dense's. This
   takes seconds.
4. For the other layers (no native kernel, ``native=False``): build candidate plans — dense, block
   plans from :func:`~tkn.ops.plan.plan_blocks` and tile plans from
   :func:`~tkn.ops.plan.plan_tiles` under a few cost-model settings and
   grids — and keep the block plans and the ``SCREENED_CANDIDATES`` tile
   plans the cost model rates cheapest. When ``measure`` is true, time each once on the recorded
   activations, then time dense and the ``FINAL_CANDIDATES`` fastest
   ``repeats`` more times (interleaved, minimum) and keep the fastest (a
   block plan must beat dense by ``DENSE_MARGIN``); otherwise keep the
   cheapest modelled.
5. Replace the layer by a :class:`~tkn.engine.modules.FrozenTargetConv2d`
   whose input order is its producer's plan order; permute the batch norms and
   non-target consumers on its route.
6. With ``input_sparsity``: an ``nn.Linear`` that a frozen layer's flattened
   output reaches through operations keeping zeros (ReLU, dropout, ...; no batch
   norm or pooling) becomes a :class:`~tkn.engine.modules.FrozenSparseLinear`
   reading only the features inside the layer's ROIs.

The plan depends on the example's batch size (the per-call overhead is shared
by the batch): freeze with a batch of the size you will run.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn

from tkn.engine import native as native_kernel
from tkn.engine.modules import TRITON, FrozenSparseLinear, FrozenTargetConv2d, native_plan
from tkn.engine.graph import (analyse, fold_batch_norm, fold_conv_batch_norm, rewrite, rewrite_residual,
                              rewrite_views)
from tkn.engine.options import BACKENDS, DEFAULT_CANDIDATES, TILE_GRIDS, FreezeOptions
from tkn.engine.routes import apply_route
from tkn.ops.plan import (PlanMode, CostModel, LayerPlan, align_plan, dense_plan, plan_blocks, plan_cost, plan_tiles,
                             plan_union_tiles)
from tkn.ops.fast_conv import train_grid
from tkn.layers import TargetConv2d
from tkn.timing import interleaved, synchronizer

__all__ = ["freeze", "BACKENDS", "channels_last_inputs", "plain_one_channel_inputs", "DEFAULT_CANDIDATES",
           "TILE_GRIDS", "SCREENED_CANDIDATES", "FINAL_CANDIDATES", "plan_summary"]


#: A measured block plan replaces the dense plan only if it is at least this much faster
#: (timings of a few repeats on a shared CPU are noisy; losing a 5% gain is cheaper than a slowdown).
DENSE_MARGIN = 0.05

#: A native plan executing at most this fraction of the dense multiply–accumulates is chosen without timing:
#: the kernel ran at about half of oneDNN's dense rate on the 256->256 5x5 layer of TKN6, so it wins by 40%+.
NATIVE_SURE = 0.3

#: Without ``measure``, a native plan executing under this fraction of dense's multiply–accumulates is chosen.
NATIVE_MODELLED = 0.5

#: A linear layer fed by a frozen target layer's flattened output is replaced by a
#: :class:`~tkn.engine.modules.FrozenSparseLinear` when at most this fraction of its inputs can be non-zero.
SPARSE_LINEAR_MAX = 0.5

#: Tile plans kept after ranking by the cost model (with every block plan), each timed once on the example ...
SCREENED_CANDIDATES = 8
#: ... of which this many fastest are timed ``repeats`` times against dense (interleaved) to choose.
FINAL_CANDIDATES = 3

#: The shortest block of consecutive calls a finalist is timed in (seconds): at batch 1 a layer call takes
#: 0.1-1 ms, and single calls chose the slower strategy on some layers of the learned-window models.
BLOCK_S = 0.005


def _record_inputs(model: nn.Module, example: Tensor, watched: Sequence[str] = ()
                   ) -> tuple[list[str], dict[str, Tensor], dict[str, int]]:
    """Target layers in call order, each one's first input, and call counts (of the ``watched`` modules too)."""
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, TargetConv2d)}
    order: list[str] = []
    inputs: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def record(module: nn.Module, args: tuple) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if name not in inputs:
            order.append(name)
            inputs[name] = args[0].detach()

    def count(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
        return hook

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, TargetConv2d)]
    hooks += [model.get_submodule(n).register_forward_pre_hook(count(n)) for n in watched]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order, inputs, calls


def _time(module: nn.Module, x: Tensor) -> float:
    sync = synchronizer(x.device)
    sync()
    t0 = time.perf_counter()
    module(x)
    sync()
    return time.perf_counter() - t0


def _time_candidates(modules: Sequence[nn.Module], x: Tensor, repeats: int, baseline: bool = True) -> list[float]:
    """Seconds per candidate: every one timed once after a warm-up (a screening), then dense (``modules[0]``,
    when ``baseline``) and the :data:`FINAL_CANDIDATES` fastest timed as ``tkn bench`` times (interleaved,
    ``repeats`` rounds of blocks of at least :data:`BLOCK_S`; the steady state's minimum replaces their
    screening time)."""
    with torch.no_grad():
        best = []
        for m in modules:
            m(x)  # warm-up (oneDNN primitive creation, allocator)
            best.append(_time(m, x))
        first = 1 if baseline else 0
        finalists = [0] * baseline + sorted(range(first, len(modules)), key=best.__getitem__)[:FINAL_CANDIDATES]
        timed = interleaved({str(i): (lambda m=modules[i]: m(x)) for i in finalists}, repeats, warmup=0,
                            min_block_s=BLOCK_S, device=x.device)
        for i in finalists:
            best[i] = timed[str(i)]["min"]
    return best


def freeze(model: nn.Module, example_input: Tensor, *, options: FreezeOptions | None = None,
           **kwargs) -> nn.Module:
    """An inference copy of ``model`` whose target layers run only their fixed ROIs.

    Args:
        model: a model containing :class:`~tkn.layers.TargetConv2d` layers (left untouched).
        example_input: a batch of the shape (and batch size) the frozen model will see.
        options: how to plan (:class:`~tkn.engine.options.FreezeOptions`; default: its defaults).
        **kwargs: fields of :class:`~tkn.engine.options.FreezeOptions` (``backend``, ``input_size``,
            ``measure``, ``repeats``, ``candidates``, ``grids``, ``permute``, ``fuse``, ``input_sparsity``,
            ``graph``, ``native``, ``channels_last``), replacing those of ``options``.

    Returns:
        A copy in ``eval()`` mode without gradients; target layers reached by the
        example are :class:`~tkn.engine.modules.FrozenTargetConv2d`. Its outputs
        equal ``model.eval()``'s (to float rounding). It is of ``model``'s class,
        unless a fused follower was a function or method call (e.g. ``F.relu``),
        a residual addition was fused, or a ``view`` of an activation map became a
        ``reshape`` (frozen layers may return ``channels_last`` maps, which ``view``
        cannot flatten): then it is a :class:`torch.fx.GraphModule` of the rewritten
        graph, with ``model``'s submodules under their names but not its other methods.
        A model that cannot be traced is run once on a sample of the example; if its
        own code fails on the frozen layers' memory layout, they return contiguous maps
        (:attr:`~tkn.engine.modules.FrozenTargetConv2d.contiguous_output`) and the
        model keeps its memory format.

    Example:
        >>> net = nn.Sequential(TargetConv2d(1, 8, 3), nn.ReLU(), TargetConv2d(8, 4, 3))
        >>> frozen = freeze(net, torch.randn(2, 1, 12, 12), measure=False)
        >>> type(frozen[0]).__name__
        'FrozenTargetConv2d'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    opts = _options(options, kwargs)
    if opts.backend == "triton":
        from tkn.engine import triton_roi

        if not triton_roi.available():
            raise ValueError(f"backend='triton' but the Triton kernel cannot run here: {triton_roi.reason()}")
    elif opts.backend == "native" and not native_kernel.available():
        raise ValueError(f"backend='native' but the native kernel is not available: {native_kernel.reason()}")
    if opts.input_size is not None:
        example_input = example_input.new_zeros((*example_input.shape[:-2], *opts.input_size))
    return _freeze(model, example_input, opts)


def _options(options: FreezeOptions | None, kwargs: dict) -> FreezeOptions:
    """``options`` (or the defaults) with the fields in ``kwargs`` replaced; a ``TypeError`` for another name."""
    if options is not None and not isinstance(options, FreezeOptions):
        raise TypeError(f"options must be a FreezeOptions, got {type(options).__name__}")
    unknown = sorted(set(kwargs) - set(FreezeOptions.field_names()))
    if unknown:
        raise TypeError(f"freeze() got unexpected keyword arguments {unknown}; its options are the fields of "
                        f"FreezeOptions: {', '.join(FreezeOptions.field_names())}")
    return dataclasses.replace(options or FreezeOptions(), **kwargs)


def _freeze(model: nn.Module, example_input: Tensor, opts: FreezeOptions) -> nn.Module:
    """:func:`freeze` with checked options, ``example_input`` of the planned size."""
    backend, measure, repeats, candidates, grids = (opts.backend, opts.measure, opts.repeats, opts.candidates,
                                                    opts.grids)
    permute, fuse, input_sparsity, graph = opts.permute, opts.fuse, opts.input_sparsity, opts.graph
    channels_last = opts.channels_last
    allowed = opts.strategies()
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    if isinstance(frozen, TargetConv2d):
        wrapper = nn.Sequential(frozen)
        return _freeze(wrapper, example_input, opts)[0]

    # one analysis: epilogues, input sources, residual additions and permutation routes (None: not traceable)
    analysis = analyse(frozen, example_input, fuse=fuse) if graph else None
    watched = {m for epi in analysis.epilogues.values() for m in epi.modules} if analysis is not None else set()
    order, inputs, calls = _record_inputs(frozen, example_input, sorted(watched))
    routes = {n: r for n, r in analysis.routes.items() if calls.get(n) == 1} if permute and analysis else {}
    in_perms: dict[str, list[int]] = {}
    built: dict[str, FrozenTargetConv2d] = {}
    supports: dict[str, Tensor] = {}
    fused: list[str] = []
    functional = False  # a fused node is a function or method call: the result is a rewritten GraphModule
    for name in order:
        layer: TargetConv2d = frozen.get_submodule(name)
        x = inputs[name]
        hw = tuple(x.shape[-2:])
        out_hw = layer.output_size(*hw)
        relu, pool, names = False, 1, []
        scale = shift = None
        epi = analysis.epilogues.get(name) if analysis is not None and calls[name] == 1 else None
        if epi is not None:
            relu, pool = epi.relu, epi.pool
            # modules called only here become nn.Identity; a shared one (torchvision's BasicBlock calls one
            # nn.ReLU twice) stays for its other calls, and only this call leaves the rewritten graph
            names = [m for m in epi.modules if calls.get(m) == 1]
            functional |= len(names) < len(epi.modules)
            if epi.batch_norm is not None:
                scale, shift = fold_batch_norm(frozen.get_submodule(epi.batch_norm))
            functional |= rewrite(analysis, [name])
        in_perm = in_perms.get(name)
        support = None
        if analysis is not None and input_sparsity and calls[name] == 1:
            support = analysis.input_support(name, supports)
        res = analysis.residuals.get(name) if analysis is not None and fuse and calls[name] == 1 else None
        strategies = [s for s in allowed
                      if s == TRITON or not native_kernel.strategy_unsupported(s, layer.in_channels, res is not None)]
        if res is not None and TRITON in strategies:
            strategies.remove(TRITON)
        if (strategies and x.dtype == torch.float32
                and not FrozenTargetConv2d.native_unsupported(layer, pool, strategies[0])):
            xin = x if in_perm is None else x[:, in_perm]
            # time it on the layout its producer hands over: the last layer built, if its output is this input
            last = built[next(reversed(built))] if built else None
            if (last is not None and last.plan.strategy == "batch" and last.out_channels == xin.shape[1]
                    and last.output_hw == hw):
                xin = native_kernel.to_batch_layout(xin)
            else:
                xin = xin.contiguous(memory_format=torch.channels_last)
            chosen = _choose_native(layer, hw, xin, in_perm, relu, pool, support, measure and backend != TRITON,
                                    repeats, scale, shift, strategies, force=backend == TRITON)
            if res is not None and chosen.plan.mode is PlanMode.NATIVE and not relu and pool == 1:
                # the addition (and the ReLU after it) run in the kernel's epilogue: one pass, not three
                timings = chosen.timings
                chosen = FrozenTargetConv2d(layer, hw, chosen.plan, in_perm=in_perm, relu=res.relu is not None,
                                            input_support=support, scale=scale, shift=shift, residual=True)
                chosen.timings = timings
                rewrite_residual(analysis, name)
                functional = True
            built[name] = chosen
            supports[name] = chosen.output_support()
            fused += names
            continue
        plans = [dense_plan(layer.out_channels)] + _candidate_plans(layer, out_hw, x.shape[0], candidates, grids, pool)
        geometry = dict(in_channels=layer.in_channels, kernel_size=layer.kernel_size,
                        kernel_extent=layer.kernel_extent, output_hw=out_hw, stride=layer.stride, batch=x.shape[0],
                        cost=candidates[0] if candidates else CostModel())
        modelled = [plan_cost(p, **geometry) for p in plans]
        if measure:
            # every block and union-tile plan (few of them; at small batches few calls win) and the best-modelled
            # tile plans
            blocks = [i for i in range(1, len(plans)) if plans[i].mode is PlanMode.BLOCKS or plans[i].union]
            tiles = [i for i in range(1, len(plans)) if i not in blocks]
            keep = blocks + sorted(tiles, key=modelled.__getitem__)[:SCREENED_CANDIDATES]
            plans, modelled = [plans[0]] + [plans[i] for i in keep], [modelled[0]] + [modelled[i] for i in keep]
        route = routes.get(name)
        options = [FrozenTargetConv2d(layer, hw, p, in_perm=in_perm, relu=relu, pool=pool, input_support=support,
                                      permute_output=route is not None and p.mode is PlanMode.BLOCKS, scale=scale,
                                      shift=shift) for p in plans]
        if measure and len(options) > 1:
            times = _time_candidates(options, x if in_perm is None else x[:, in_perm], repeats)
        else:
            times = modelled
        best = min(range(len(options)), key=times.__getitem__)
        if measure and times[best] > (1.0 - DENSE_MARGIN) * times[0]:
            best = 0  # a block plan must beat dense clearly: timing noise must not pick a slower plan
        chosen = options[best]
        consumer = None
        if analysis is not None and input_sparsity and calls[name] == 1:
            consumer = analysis.direct_consumer(name)
        if (consumer is not None and chosen.plan.mode is PlanMode.TILES and consumer not in in_perms
                and calls.get(consumer) == 1 and frozen.get_submodule(consumer).groups == 1):
            # emit the channels ordered by ROI position: the consumer's blocks then read short channel ranges
            order = _spatial_order(chosen.output_support())
            chosen = FrozenTargetConv2d(layer, hw, chosen.plan, in_perm=in_perm, relu=relu, pool=pool,
                                        input_support=support, output_order=order, scale=scale, shift=shift)
            in_perms[consumer] = order
        chosen.timings = {p.label: t for p, t in zip(plans, times)} if measure else {}
        built[name] = chosen
        supports[name] = chosen.output_support()
        fused += names
        if route is not None:
            if not chosen.identity_order:
                apply_route(frozen, route, chosen.plan.perm, layer.out_channels)
                if route.kind == "conv" and isinstance(frozen.get_submodule(route.consumer), TargetConv2d):
                    in_perms[route.consumer] = chosen.plan.perm
            else:
                chosen.permute_output = False
    if analysis is not None and fuse:  # plain convolutions too: conv -> batch norm is one convolution
        for conv, bn in analysis.dense_batch_norms():
            built_dense = fold_conv_batch_norm(frozen.get_submodule(conv), frozen.get_submodule(bn))
            frozen.set_submodule(conv, built_dense)
            fused.append(bn)
    for name, module in [*built.items(), *((n, nn.Identity()) for n in fused)]:
        frozen.set_submodule(name, module)
    if input_sparsity:
        for name, route in routes.items():
            if name in built and route.kind == "linear" and route.keeps_zeros:
                _sparse_linear(frozen, route.consumer, built[name])
    if channels_last is None:
        channels_last = any(m.plan.mode is PlanMode.NATIVE and m.plan.strategy != TRITON for m in built.values())
    if analysis is not None and (channels_last or any(m.plan.mode is not PlanMode.DENSE for m in built.values())):
        functional |= rewrite_views(analysis)  # maps may now be channels_last: ``x.view(n, -1)`` would fail
    if functional:
        frozen = fx.GraphModule(frozen, analysis.graph).eval()
    layout_hook = None
    if channels_last:
        frozen = _channels_last_(frozen)
        layout_hook = frozen.register_forward_pre_hook(channels_last_inputs)
        for m in frozen.modules():  # a plain convolution may still hand a one-channel map on in channels_last
            if isinstance(m, nn.Conv2d) and m.in_channels == 1:
                m.register_forward_pre_hook(plain_one_channel_inputs)
    if analysis is None and not _runs(frozen, example_input[:1]):
        # code no graph showed needs contiguous maps (e.g. ``x.view(n, -1)`` after a target layer): every
        # frozen layer returns them, and the model keeps its memory format
        for m in built.values():
            m.contiguous_output = True
        if layout_hook is not None:
            layout_hook.remove()
            frozen = frozen.to(memory_format=torch.contiguous_format)
    return frozen


def plain_one_channel_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: every one-channel 4-D tensor argument with plain NCHW strides (the same memory: for one
    channel both layouts are; see :func:`tkn.engine.native.nhwc_as_nchw`)."""
    return tuple(a.reshape(-1).view(a.shape) if isinstance(a, Tensor) and a.dim() == 4 and a.shape[1] == 1
                 and a.is_contiguous() else a for a in args)


def _channels_last_(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in ``channels_last`` memory (in place; returns it).

    By ``contiguous``, not ``to``: a weight whose memory already reads as ``channels_last`` (one input channel)
    keeps its plain strides; restriding it moves no byte and sent PyTorch's CPU convolution down a path that
    returned garbage rows (see :func:`tkn.engine.native.nhwc_as_nchw`).
    """
    return model._apply(lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)


def _runs(model: nn.Module, x: Tensor) -> bool:
    """Whether ``model(x)`` runs without a ``RuntimeError`` (no grad)."""
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError:
        return False
    return True


def channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: every 4-D tensor argument in ``channels_last`` memory (values unchanged)."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, Tensor) and a.dim() == 4 else a
                 for a in args)


def _sparse_linear(model: nn.Module, name: str, producer: FrozenTargetConv2d) -> None:
    """Replace the ``nn.Linear`` ``name``, fed by ``producer``'s flattened output, by a
    :class:`~tkn.engine.modules.FrozenSparseLinear` reading only the columns inside the producer's output support."""
    linear = model.get_submodule(name)
    box = producer.output_support()
    (hp, wp), channels = producer.output_hw, box.shape[0]
    if type(linear) is not nn.Linear or linear.in_features != channels * hp * wp:
        return
    ys, xs = torch.arange(hp)[None, :, None], torch.arange(wp)[None, None, :]
    b = box[:, :, None, None]
    inside = (ys >= b[:, 0]) & (ys < b[:, 1]) & (xs >= b[:, 2]) & (xs < b[:, 3])
    columns = torch.nonzero(inside.flatten()).flatten()
    if columns.numel() > SPARSE_LINEAR_MAX * linear.in_features:
        return
    model.set_submodule(name, FrozenSparseLinear(linear, columns))


def _choose_native(layer: TargetConv2d, hw: tuple[int, int], x: Tensor, in_perm: list[int] | None, relu: bool,
                   pool: int, support: Tensor | None, measure: bool, repeats: int, scale: Tensor | None = None,
                   shift: Tensor | None = None, strategies: Sequence[str] = native_kernel.STRATEGIES,
                   force: bool = False) -> FrozenTargetConv2d:
    """The native plan of one of ``strategies`` or the dense plan, whichever step 3 of :func:`freeze` picks
    (``force``: the first strategy's plan, neither timed nor compared).

    ``x`` is timed in the memory layout the layer will receive (its producer's output layout)."""
    options = dict(in_perm=in_perm, relu=relu, pool=pool, scale=scale, shift=shift)
    fast = [FrozenTargetConv2d(layer, hw, native_plan(layer.out_channels, s), input_support=support, **options)
            for s in strategies]
    if force:
        fast[0].timings = {}
        return fast[0]
    work = [f.executed_macs(x.shape[0]) / max(f.dense_macs(), 1) for f in fast]
    order = sorted(range(len(fast)), key=work.__getitem__)
    if not measure:
        best = fast[order[0]]
        if work[order[0]] <= NATIVE_MODELLED:
            return best
        return FrozenTargetConv2d(layer, hw, None, input_support=support, **options)
    sure = work[order[0]] <= NATIVE_SURE
    if sure and len(fast) == 1:
        fast[0].timings = {}
        return fast[0]
    dense = FrozenTargetConv2d(layer, hw, None, input_support=support, **options)
    candidates = ([] if sure else [dense]) + fast
    times = _time_candidates(candidates, x, repeats, baseline=not sure)
    timings = {c.plan.label: t for c, t in zip(candidates, times)}
    offset = 0 if sure else 1
    best = min(range(len(fast)), key=lambda i: times[offset + i])
    chosen = fast[best]
    if not sure and times[offset + best] > (1.0 - DENSE_MARGIN) * times[0]:
        chosen = dense
    chosen.timings = timings
    return chosen



def _candidate_plans(layer: TargetConv2d, out_hw: tuple[int, int], batch: int, candidates: Sequence[CostModel],
                     grids: Sequence[int | tuple[int, int]], align: int) -> list[LayerPlan]:
    """Block plans under every cost model and tile plans on every grid (distinct ones)."""
    if layer.groups != 1:
        return []
    roi = layer.rois(*out_hw)
    geometry = dict(in_channels=layer.in_channels, kernel_size=layer.kernel_size,
                    kernel_extent=layer.kernel_extent, stride=layer.stride, batch=batch)
    plans = [align_plan(plan_blocks(roi, cost=cost, **geometry), align, out_hw) for cost in candidates]
    for g in grids:
        gy, gx = (g, g) if isinstance(g, int) else g
        if out_hw[0] // gy < max(2, align) or out_hw[1] // gx < max(2, align) or not candidates:
            continue
        plans.append(plan_tiles(roi, output_hw=out_hw, grid=(gy, gx), cost=candidates[0], align=align, **geometry))
    if grids:  # one block per tile of about 4 output pixels (plus the same with tiles twice as wide)
        gy, gx = train_grid(*out_hw, tile=4)
        for gy, gx in {(gy, gx), (gy, max(1, gx // 2))}:
            if out_hw[0] // gy >= align and out_hw[1] // gx >= align:
                plans.append(plan_union_tiles(roi, output_hw=out_hw, grid=(gy, gx), align=align))
    distinct, seen = [], set()
    for p in plans:
        key = p.mode, tuple(p.perm), tuple(p.blocks), tuple(p.index)
        if p.blocks and key not in seen:
            seen.add(key)
            distinct.append(p)
    return distinct


def _spatial_order(boxes: Tensor) -> list[int]:
    """Channels sorted by the centre of their box (row, then column); empty boxes last."""
    boxes = boxes.to(torch.float64)
    empty = (boxes[:, 1] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 2])
    cy, cx = (boxes[:, 0] + boxes[:, 1]) / 2, (boxes[:, 2] + boxes[:, 3]) / 2
    key = empty.to(torch.float64) * 1e12 + cy * 1e6 + cx
    return torch.argsort(key, stable=True).tolist()


def plan_summary(model: nn.Module) -> list[dict]:
    """One row per frozen layer: name, plan mode and label, blocks, active channels, timings measured at freeze."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, FrozenTargetConv2d):
            rows.append({
                "layer": name, "mode": m.plan.mode, "plan": m.plan.label, "blocks": len(m.blocks),
                "active_channels": m.plan.n_active, "channels": m.out_channels,
                "relu": m.relu, "residual": m.residual, "pool": m.pool,
                "input_ranges": sum(1 for r in m.input_ranges if r),
                "executed_macs": m.executed_macs(), "roi_macs": m.macs(),
                "timings_s": dict(getattr(m, "timings", {})),
            })
    return rows
