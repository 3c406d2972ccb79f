"""Train to a measured speed-up: a latency model of the frozen engine and :class:`LatencyBudget`.

MACs are not time. The engine's layers cost a per-call overhead, memory traffic
that the FLOP count does not see (a first layer with one input channel is bound
by its output writes), and work that depends on the lane strategy the freeze
picks. :class:`MacBudget` reaches a MAC factor; :class:`LatencyBudget` reaches
the factor ``R = t(dense model) / t(tkn.freeze(model))`` at a batch size, on
the machine that trains, as ``tkn bench`` measures it.

The latency model (:class:`LatencyModel`)
-----------------------------------------
Per target layer, a table of measured seconds per batch against the layer's
work, plus the rest of the frozen model's time as a function of the
layers' sum, and the dense model's time, all at one batch size:

    t(frozen) ≈ S + rest(S),   S = Σ_l  t_l(work of layer l)

A layer's work is its ROI MACs, or, for a layer fed by another target layer
whose ROIs ``tkn.freeze`` hands it as input supports, its input-sparse MACs
(:func:`tkn.functional.input_sparse_macs`, :class:`SparseInput`): the engine
skips the products with the zeros outside the producer's ROIs, so a layer with
whole windows behind a layer of small ones runs at a fraction of its ROI MACs'
time. Not every lane strategy skips them: ``"reduce"`` (lanes over input
channels, picked at small batches) runs each ROI over the whole input. Such a
layer's time is the faster of two tables, one over its input-sparse MACs (the
strategies that skip zeros, and dense) and one over its ROI MACs (``"reduce"``),
as freeze picks the faster plan.

:func:`calibrate` builds it on the machine that runs: for each of a few FLOP
ratios (``LEVELS``), every target layer gets scattered ROIs of that ratio (centres
uniform in ``[0.15, 0.85]``, one seed; the whole map at ratio 1), the model is
frozen at the batch size as :func:`tkn.freeze` freezes it (the lane strategies
timed against dense; freeze's times of the strategies it did not pick are kept,
scaled to the chosen one's), and the whole frozen model and each frozen layer on its own
input are timed (:func:`tkn.timing.interleaved`, as ``tkn bench`` times them:
blocks of consecutive calls, minimum of ``repeats``). Every layer fed by a
producer is timed once more per ratio with its producer whole, so its table
spans inputs from sparse to dense. ``t_l`` interpolates the layer's points
linearly (made non-decreasing, flat outside the measured range); ``rest``
interpolates, against the layers' sum, the whole model's time minus that sum at
each level (at least 0, made non-decreasing): inside the whole model the layers
run slower than each alone in a loop, by more when they do more. A calibration
takes seconds to minutes and is cached as JSON under ``$TKN_CACHE/latency``
(default ``~/.cache/tkn``), keyed by the model's structure, the input size, the
batch size, the thread count, the torch version, the native kernel's source and
the CPU's flags.

The budget's differentiable surrogate replaces each layer's exact work by a
real-valued count (:func:`tkn.budget.roi_mac_measure`, or
:meth:`SparseInput.macs` with ``exact=False``), so the price of one pixel of a window is the
*marginal time* of its layer: layers whose MACs cost little time (memory-bound
ones, or ones already cheaper than their overhead) are pressed less than under
a MAC budget. The ramp, the dual ascent of the multiplier and the projection
are :class:`~tkn.budget.MacBudget`'s, with predicted seconds in place of MACs.

With ``feedback=K`` (by default 3 below batch 16) the budget also times the frozen model itself K times during
training and scales the
prediction by the pooled ratio of predicted to measured speed-up (:meth:`LatencyBudget.measure_model`): learned
windows are not the calibration's scattered boxes, and at batch 1 they run slower than their tables.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import re
import statistics
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from tkn import functional as TF
from tkn.benchmark import dense_baseline
from tkn.budget import MacBudget, log_bracket, roi_mac_measure
from tkn.convert import target_layers
from tkn.engine import native as native_kernel
from tkn.engine.freeze import freeze
from tkn.engine.modules import FrozenTargetConv2d
from tkn.io import atomic_write_text
from tkn.layers import TargetConv2d
from tkn.timing import BLOCK_S, busy_cores, interleaved
from tkn.validate import positive_int

__all__ = ["LatencyModel", "LayerTable", "SparseInput", "calibrate", "producers", "LatencyBudget", "LEVELS", "ROUNDS",
           "ROUNDS_SMALL", "SMALL_BATCH", "FEEDBACK", "FEEDBACK_SMALL"]

#: FLOP ratios at which :func:`calibrate` measures every target layer.
LEVELS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

#: Version of the cached calibration format (and of the method: a change re-calibrates).
_CACHE_VERSION = 9  # 3: producer tables; 4: steady state after the first call; 5: rest table; 6: batch-1 rounds;
# 7: input-sparse tables, whole maps at ratio 1; 8: sparse tables where they fit better; 9: "reduce" tables

#: Timed rounds per calibration measurement below :data:`SMALL_BATCH` samples, and from there on: a batch-1 pass
#: lasts 1-3 ms and single measurements of it scatter by 15-20% on a shared machine, so small batches get three
#: times the rounds (a TKN6 calibration at batch 1 then takes about 20 s, at batch 64 about 80 s).
ROUNDS_SMALL, ROUNDS = 15, 5
SMALL_BATCH = 16

#: :class:`LatencyBudget`'s measurements of its model during training by default, below :data:`SMALL_BATCH`
#: samples and from there on. At batch 1 the latency model predicted TKN6's learned windows 15% fast on average
#: (the calibration's equal scattered boxes are not learned ROIs); at batch 64 it was within 5%, and a
#: measurement there costs seconds to minutes.
FEEDBACK_SMALL, FEEDBACK = 3, 0

#: :func:`calibrate` warns when other work keeps more cores than this busy as it starts.
BUSY_CORES_WARN = 0.5

#: Rounds of freeze's own timing of the candidate plans during a calibration, below :data:`SMALL_BATCH` samples
#: and from there on (the times of the strategies freeze does not pick come from these rounds; at batch 1 a round
#: of a layer lasts milliseconds, at batch 64 on 56x56 maps hundreds of them).
FREEZE_ROUNDS_SMALL, FREEZE_ROUNDS = 3, 1

#: The plan label of the lane strategy that does not skip zero inputs (:data:`tkn.engine.native.STRATEGIES`).
REDUCE = "native-reduce"


def _monotone(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): more work never runs
    faster, and one slow outlier moves only its neighbours, not every larger point."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


@dataclass
class LayerTable:
    """Measured seconds per batch of one frozen target layer against its work per sample (ascending; points at
    the same work are merged into their mean)."""

    macs: list[float]
    seconds: list[float]

    def __post_init__(self) -> None:
        if len(self.macs) != len(self.seconds) or not self.macs:
            raise ValueError(f"a layer table needs as many times as MAC counts (at least one), got "
                             f"{len(self.macs)} and {len(self.seconds)}")
        merged: dict[float, list[float]] = {}  # points at the same work: one point, their mean time
        for w, t in zip(self.macs, self.seconds):
            merged.setdefault(float(w), []).append(float(t))
        self.macs = sorted(merged)
        self.seconds = _monotone([statistics.fmean(merged[w]) for w in self.macs])

    def __call__(self, macs: Tensor) -> Tensor:
        """Seconds at ``macs`` (a scalar tensor; differentiable, piecewise linear, flat outside the table)."""
        xs = torch.tensor(self.macs, dtype=torch.float64)
        ys = torch.tensor(self.seconds, dtype=torch.float64)
        w = macs.to(torch.float64)
        if len(xs) == 1 or w.item() <= xs[0].item():
            return ys[0] + 0.0 * w
        if w.item() >= xs[-1].item():
            return ys[-1] + 0.0 * w
        i = int(torch.searchsorted(xs, w.detach().reshape(1), right=True).item()) - 1
        slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        return ys[i] + slope * (w - xs[i])


@dataclass
class SparseInput:
    """Where a target layer's input is known to be zero: outside its producer's ROIs, through a pool.

    ``tkn.freeze`` gives a layer fed by another target layer (through ReLU and pooling only) its producer's
    ROIs as the input channels' supports, and the ``"batch"`` lane strategy skips the products outside them, so
    the layer's time follows :func:`tkn.functional.input_sparse_macs`, not its own ROI MACs: a layer with whole
    windows after a layer of small ones runs at a fraction of its ROI MACs' time.
    """

    producer: str
    producer_pool: int
    input_hw: tuple[int, int]
    pad: tuple[int, int]
    extent: tuple[int, int]

    def __post_init__(self) -> None:
        self.producer_pool = int(self.producer_pool)
        self.input_hw = (int(self.input_hw[0]), int(self.input_hw[1]))
        self.pad = (int(self.pad[0]), int(self.pad[1]))
        self.extent = (int(self.extent[0]), int(self.extent[1]))

    def macs(self, layer: TargetConv2d, hw: tuple[int, int], producer: TargetConv2d, producer_hw: tuple[int, int],
             s: Tensor | None = None, producer_s: Tensor | None = None, exact: bool = True) -> Tensor:
        """The layer's input-sparse MACs per sample (a float64 scalar tensor).

        Args:
            layer, hw: the layer and its output map; ``producer``, ``producer_hw``: the same for its producer.
            s, producer_s: scales to use instead of the layers' own (the budget's projection tries some).
            exact: integer ROIs and supports (what the frozen model runs); ``False``: the ROIs' real ends, from
                the clipped parameters, differentiable in both layers' ``m`` and ``s`` (the budget's surrogate).
        """
        p, (h, w) = self.producer_pool, self.input_hw
        if exact:  # the boxes freeze gives the layer's input channels (FrozenTargetConv2d.output_support)
            roi = TF.rois(layer.m, layer.s if s is None else s, hw, layer.roi_floor)
            proc = TF.rois(producer.m, producer.s if producer_s is None else producer_s, producer_hw,
                           producer.roi_floor)
            support = TF.pooled_rois(proc, p, h, w)
        else:  # whole pixels add half a pixel at each end on average; the pool's rounding half of one more
            roi = _continuous_box(*TF.clip_params(layer.m, layer.s if s is None else s, hw, layer.roi_floor), hw,
                                  0.5)
            support = _continuous_box(*TF.clip_params(producer.m, producer.s if producer_s is None else producer_s,
                                                      producer_hw, producer.roi_floor), producer_hw) / p
            support = (support + torch.tensor([-0.5, 0.5, -0.5, 0.5], dtype=support.dtype)).clamp(min=0.0)
            support = torch.stack([support[:, 0].clamp(max=h), support[:, 1].clamp(max=h),
                                   support[:, 2].clamp(max=w), support[:, 3].clamp(max=w)], 1)
        return TF.input_sparse_macs(roi, support, layer.kernel_size, stride=layer.stride, dilation=layer.dilation,
                                    pad=self.pad, extent=self.extent, integer=exact)


def _input_sparse_seconds(by_sparse: LayerTable, by_reduce: LayerTable | None, sparse_macs: Tensor,
                          roi_macs: Tensor) -> Tensor:
    """A fed layer's input-sparse price: its table at its input-sparse MACs, or its ``"reduce"`` table at its ROI
    MACs where that is smaller (freeze keeps the faster plan)."""
    t = by_sparse(sparse_macs)
    return t if by_reduce is None else torch.minimum(t, by_reduce(roi_macs))


def _float64(v: Tensor | float) -> Tensor:
    return (v if isinstance(v, Tensor) else torch.tensor(float(v))).to(torch.float64)


def _continuous_box(m: Tensor, s: Tensor, hw: tuple[int, int], widen: float = 0.0) -> Tensor:
    """``(C, 4)`` real boxes ``[m - s/√2, m + s/√2]`` per axis in pixels of ``hw``, ``widen`` pixels wider at each
    end, within the map (differentiable)."""
    half = s.to(torch.float64) / math.sqrt(2.0)
    m = m.to(torch.float64)
    axes = []
    for i, n in enumerate(hw):
        axes += [((m[:, i] - half[:, i]) * n - widen).clamp(0.0, float(n)),
                 ((m[:, i] + half[:, i]) * n + widen).clamp(0.0, float(n))]
    return torch.stack(axes, 1)


@dataclass
class LatencyModel:
    """Predicted seconds per batch of ``tkn.freeze(model)`` from the work (ROI or input-sparse MACs) of its target
    layers.

    Attributes:
        batch_size: the batch the times are for.
        dense_seconds: the dense model (plain ``nn.Conv2d`` layers) per batch.
        fixed_seconds: the frozen model's time outside its target layers (when ``rest`` is empty).
        rest: the frozen model's measured time minus its layers' sum, against that sum (one point per
            calibration level): in the whole model the layers run slower than each alone, by an amount
            that grows with their work (at batch 1 on TKN6, 0.8 ms at FLOP ratio 32, 1.4 ms at 4).
        layers: per target layer (module name), its :class:`LayerTable`.
        checks: per calibration level, the measured whole-model time and the prediction (its error).
        sparse: per layer fed by a producer (:class:`SparseInput`), its seconds against its input-sparse MACs,
            from every point measured for it; :meth:`predict` uses this table for the layers given in ``sparse``.
        sparse_inputs: the geometry of those layers' inputs.
        reduce: per layer of :attr:`sparse` whose engine can run the ``"reduce"`` lane strategy (which does not
            skip zero inputs), that strategy's seconds against the layer's ROI MACs; the layer's time is the
            smaller of its two tables (freeze keeps the faster plan), and :attr:`sparse` then holds the times of
            the other plans (the strategies that skip zeros, and dense).
        fit_errors: per layer fed by a producer, the RMS relative error against its measured times of a single
            table over its ROI MACs (``"roi"``) and of the input-sparse pricing (``"sparse"``: the table over
            its input-sparse MACs, or the smaller of it and the ``"reduce"`` table); the layer is in
            :attr:`sparse` where the second is smaller (else it is priced by ``layers`` and ``dense_input``).
    """

    batch_size: int
    dense_seconds: float
    fixed_seconds: float
    layers: dict[str, LayerTable]
    checks: list[dict[str, float]] = field(default_factory=list)
    key: str = ""
    dense_input: dict[str, LayerTable] = field(default_factory=dict)
    producers: dict[str, str] = field(default_factory=dict)
    dense_macs: dict[str, float] = field(default_factory=dict)
    rest: LayerTable | None = None
    sparse: dict[str, LayerTable] = field(default_factory=dict)
    sparse_inputs: dict[str, SparseInput] = field(default_factory=dict)
    fit_errors: dict[str, dict[str, float]] = field(default_factory=dict)
    reduce: dict[str, LayerTable] = field(default_factory=dict)

    def predict(self, macs: dict[str, Tensor | float], sparse: dict[str, Tensor | float] | None = None) -> Tensor:
        """Seconds per batch of the frozen model: its layers' (:meth:`layer_seconds`) and the rest's
        (differentiable in tensors)."""
        total = torch.tensor(0.0, dtype=torch.float64)
        for t in self.layer_seconds(macs, sparse).values():
            total = total + t
        return total + (self.rest(total) if self.rest is not None else self.fixed_seconds)

    def layer_seconds(self, macs: dict[str, Tensor | float], sparse: dict[str, Tensor | float] | None = None
                      ) -> dict[str, Tensor]:
        """Seconds per batch of each target layer for the ROI MACs per sample of each (differentiable in tensors).

        A layer with a table in :attr:`sparse` and a value in ``sparse`` (its input-sparse MACs per sample,
        :meth:`SparseInput.macs`) is priced by that table, or by its :attr:`reduce` table at its ROI MACs where
        that is smaller. Otherwise a layer with a producer (``producers``)
        and a table measured on a dense input (``dense_input``) is priced between its two tables by its
        producer's ROI fraction ``φ_p``: ``layers[l]`` was measured with the producer's ROIs as small as its
        own (fraction ``φ_l``), ``dense_input[l]`` with the producer whole, so
        ``t = t_same + w · (t_dense − t_same)``, ``w = (φ_p − φ_l) / (1 − φ_l)`` clipped
        to ``[0, 1]``.
        """
        out: dict[str, Tensor] = {}
        value = {n: _float64(v) for n, v in macs.items()}
        sparse = sparse or {}
        for name, table in self.layers.items():
            if name in self.sparse and name in sparse:
                out[name] = _input_sparse_seconds(self.sparse[name], self.reduce.get(name), _float64(sparse[name]),
                                                  value[name])
                continue
            t = table(value[name])
            producer = self.producers.get(name)
            if name in self.dense_input and producer in value and self.dense_macs.get(producer):
                own = (value[name] / self.dense_macs[name]).clamp(0.0, 1.0 - 1e-6)
                fraction = (value[producer] / self.dense_macs[producer]).clamp(0.0, 1.0)
                w = ((fraction - own) / (1.0 - own)).clamp(0.0, 1.0)
                t = t + w * (self.dense_input[name](value[name]) - t)
            out[name] = t
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyModel":
        layers = {k: LayerTable(**v) for k, v in data["layers"].items()}
        dense_input = {k: LayerTable(**v) for k, v in data.get("dense_input", {}).items()}
        rest = LayerTable(**data["rest"]) if data.get("rest") else None
        sparse = {k: LayerTable(**v) for k, v in data.get("sparse", {}).items()}
        inputs = {k: SparseInput(**v) for k, v in data.get("sparse_inputs", {}).items()}
        reduce = {k: LayerTable(**v) for k, v in data.get("reduce", {}).items()}
        return cls(int(data["batch_size"]), float(data["dense_seconds"]), float(data["fixed_seconds"]), layers,
                   list(data.get("checks", [])), str(data.get("key", "")), dense_input,
                   {str(k): str(v) for k, v in data.get("producers", {}).items()},
                   {str(k): float(v) for k, v in data.get("dense_macs", {}).items()}, rest, sparse, inputs,
                   {str(k): {str(a): float(b) for a, b in v.items()} for k, v in data.get("fit_errors", {}).items()},
                   reduce)


def _cache_key(model: nn.Module, input_size: Sequence[int], batch_size: int, levels: Sequence[float],
               repeats: int, threads: int) -> str:
    h = hashlib.sha256()
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        cpu = platform.processor()
    source = (Path(native_kernel.__file__).with_name("csrc") / "roi_conv.cpp").read_bytes()
    # a layer's training execution (dense or fast ROI blocks) does not change the frozen model it times
    structure = re.sub(r", execution='\w+'", "", repr(model))
    parts = [str(_CACHE_VERSION), structure, str(tuple(input_size)), str(batch_size), str(tuple(levels)),
             str(repeats), str(threads), torch.__version__, cpu, str(native_kernel.available())]
    for p in parts:
        h.update(p.encode())
    h.update(source)
    return h.hexdigest()[:24]


def _cache_dir() -> Path:
    root = os.environ.get("TKN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tkn")
    return Path(root) / "latency"


def _set_level(model: nn.Module, ratio: float, seed: int, whole: Sequence[str] = ()) -> None:
    """Scattered ROIs of about ``ratio`` times fewer MACs in every target layer (in place); the layers named in
    ``whole``, and every layer at ``ratio <= 1``, get ROIs covering their whole map instead."""
    for i, (name, layer) in enumerate(target_layers(model)):
        if name in whole or ratio <= 1.0:
            with torch.no_grad():
                layer.m.fill_(0.5)
                layer.s.fill_(math.sqrt(2.0) / 2.0)  # the interval [0, 1]
            continue
        g = torch.Generator().manual_seed(seed + i)
        m = torch.rand(layer.m.shape, generator=g, dtype=torch.float64) * 0.7 + 0.15
        # per axis a width of ratio ** -1/2 of the map: the ROI interval [m - s/√2, m + s/√2]
        s = torch.full(layer.s.shape, (1.0 / math.sqrt(ratio)) * math.sqrt(2.0) / 2.0, dtype=torch.float64)
        with torch.no_grad():
            layer.m.copy_(m.to(layer.m))
            layer.s.copy_(s.to(layer.s))


def _layer_inputs(frozen: nn.Module, x: Tensor) -> dict[str, Tensor]:
    inputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=name: inputs.setdefault(n, a[0].detach()))
             for name, m in frozen.named_modules() if isinstance(m, FrozenTargetConv2d)]
    try:
        with torch.no_grad():
            frozen(x)
    finally:
        for h in hooks:
            h.remove()
    return inputs


@dataclass
class _Point:
    """One timed frozen layer: its ROI MACs and input-sparse MACs per sample, its seconds per batch, the label of
    the plan it runs, and the seconds of each plan freeze timed for it (by label, on the scale of ``seconds``;
    empty when freeze timed none)."""

    macs: float
    sparse_macs: float
    seconds: float
    plan: str = ""
    plans: dict[str, float] = field(default_factory=dict)

    def without(self, label: str) -> float:
        """Its seconds had freeze not had the plan ``label``: ``seconds`` unless it runs that plan, else the
        fastest other plan freeze timed."""
        others = [t for other, t in self.plans.items() if other != label]
        return self.seconds if self.plan != label or not others else min(others)


def _plan_times(fl: FrozenTargetConv2d, seconds: float) -> dict[str, float]:
    """The seconds of each plan freeze timed for ``fl`` (``fl.timings``), scaled so that the plan it runs takes
    ``seconds`` (its time measured on its own, in more rounds than freeze's)."""
    own = fl.timings.get(fl.plan.label)
    return {label: seconds * t / own for label, t in fl.timings.items()} if own else {}


def _frozen_sparse_macs(fl: FrozenTargetConv2d) -> float:
    """What a frozen layer's input-sparse MACs are, from the ROIs and input supports it was built with."""
    h, w = fl.input_hw
    support = fl.input_support if fl.input_support is not None else torch.tensor([[0, h, 0, w]]).expand(
        fl.in_channels, 4)
    left, _, top, _ = fl.pad
    return float(TF.input_sparse_macs(fl.roi.to(torch.int64).cpu(), support, fl.kernel_size, stride=fl.stride,
                                      dilation=fl.dilation, pad=(top, left), extent=_pooled_extent(fl)))


def _pooled_extent(fl: FrozenTargetConv2d) -> tuple[int, int]:
    """The conv positions a frozen layer computes: its output map cut to a multiple of its fused pool."""
    ho, wo = fl.conv_hw
    return (ho // fl.pool) * fl.pool, (wo // fl.pool) * fl.pool


def _sparse_inputs(frozen: nn.Module, feeds: dict[str, str]) -> dict[str, SparseInput]:
    """The layers of ``feeds`` whose frozen input has supports from their producer (zero padding, ``groups=1``)."""
    out = {}
    for name, producer in feeds.items():
        fl, pl = frozen.get_submodule(name), frozen.get_submodule(producer)
        if (isinstance(fl, FrozenTargetConv2d) and isinstance(pl, FrozenTargetConv2d) and fl.input_support is not None
                and fl.groups == 1 and fl.padding_mode == "zeros"):
            left, _, top, _ = fl.pad
            out[name] = SparseInput(producer, pl.pool, fl.input_hw, (top, left), _pooled_extent(fl))
    return out


def _timed_layers(work: nn.Module, x: Tensor, names: Sequence[str], repeats: int, extra: Any = None,
                  feeds: dict[str, str] | None = None, freeze_repeats: int = FREEZE_ROUNDS
                  ) -> tuple[dict[str, _Point], dict[str, float], dict[str, SparseInput]]:
    """Freeze ``work`` on ``x`` (``freeze_repeats`` rounds of candidate timing) and time, in one interleaved run,
    each of the target layers ``names`` alone on the input it receives there, together with the callables
    ``extra(frozen)`` returns (by name). Returns ``{layer: its point}``, ``{extra name: seconds}`` (minimum over
    the rounds) and the input supports of the layers of ``feeds`` (:func:`_sparse_inputs`)."""
    frozen = freeze(work, x, repeats=freeze_repeats)
    inputs = _layer_inputs(frozen, x)
    layers = {n: frozen.get_submodule(n) for n in names if n in inputs}
    fns = dict(extra(frozen)) if extra is not None else {}
    fns.update({n: (lambda fl=fl, xi=inputs[n]: fl(xi)) for n, fl in layers.items()})
    with torch.no_grad():
        t = interleaved(fns, repeats, min_block_s=BLOCK_S)
    points = {n: _Point(float(fl.macs()), _frozen_sparse_macs(fl), t[n]["min"], fl.plan.label,
                        _plan_times(fl, t[n]["min"])) for n, fl in layers.items()}
    return points, {k: t[k]["min"] for k in fns if k not in layers}, _sparse_inputs(frozen, feeds or {})


def producers(model: nn.Module) -> dict[str, str]:
    """Each target layer's producer: the target layer before it (module order) when that one's output channels
    are its input channels (a chain such as TKN6's ``features``). Layers fed otherwise (a model's first layer, a
    residual sum, a concatenation) are not listed: their input is priced as calibrated."""
    out, previous = {}, None
    for name, layer in target_layers(model):
        if previous is not None and previous[1].out_channels == layer.in_channels:
            out[name] = previous[0]
        previous = (name, layer)
    return out


def calibrate(model: nn.Module, input_size: Sequence[int], batch_size: int = 64, *,
              levels: Sequence[float] = LEVELS, repeats: int | None = None, seed: int = 0,
              cache: bool = True, threads: int | None = None) -> LatencyModel:
    """Measure the latency model of ``model`` (its structure, not its windows) at ``batch_size`` on this machine.

    Args:
        model: a network with :class:`~tkn.layers.TargetConv2d` layers (left unchanged).
        input_size: ``(C, H, W)`` of one input.
        batch_size: the batch the budget is for.
        levels: FLOP ratios to measure (see :data:`LEVELS`).
        repeats: timed rounds per measurement (minimum kept); default :data:`ROUNDS_SMALL` below
            :data:`SMALL_BATCH` samples, else :data:`ROUNDS`.
        cache: read and write ``$TKN_CACHE/latency/<key>.json``.
        threads: intra-op threads the frozen and dense models are timed with (``torch.set_num_threads``
            during the measurement, restored after); default: the process's current number. A model
            deployed on 2 threads can so be budgeted by a training process that runs on 1.

    Warns (``RuntimeWarning``) when it measures while other work keeps more than :data:`BUSY_CORES_WARN` cores
    busy (:func:`tkn.timing.busy_cores`).
    """
    positive_int("batch_size", batch_size)
    if repeats is None:
        repeats = ROUNDS_SMALL if batch_size < SMALL_BATCH else ROUNDS
    positive_int("repeats", repeats)
    threads = torch.get_num_threads() if threads is None else positive_int("threads", threads)
    if not target_layers(model):
        raise ValueError("the model has no target layer (TargetConv2d): there is no latency to model")
    key = _cache_key(model, input_size, batch_size, levels, repeats, threads)
    path = _cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            return LatencyModel.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a stale or broken entry: measure again
    _warn_if_busy("calibrating the latency model", "calibrate on a quiet machine (the result is cached and reused)")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = _measure(model, input_size, batch_size, levels, repeats, seed, key)
    finally:
        torch.set_num_threads(previous)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result.to_dict()))
    return result


def _warn_if_busy(doing: str, advice: str) -> None:
    """Warn (``RuntimeWarning``) when other work keeps more than :data:`BUSY_CORES_WARN` cores busy."""
    busy = busy_cores()
    if busy is not None and busy > BUSY_CORES_WARN:
        warnings.warn(f"{doing} while other work keeps {busy:.1f} of {os.cpu_count()} cores busy: its times learn "
                      f"that interference, and budgets trained with it miss their measured speed-up; {advice}",
                      RuntimeWarning, stacklevel=3)


def _measure(model: nn.Module, input_size: Sequence[int], batch_size: int, levels: Sequence[float], repeats: int,
             seed: int, key: str) -> LatencyModel:
    """:func:`calibrate`'s measurement, on the threads the caller set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, *input_size, generator=g)
    work = copy.deepcopy(model).eval()
    names = [name for name, _ in target_layers(work)]
    modules = dict(work.named_modules())
    feeds = producers(work)
    dense = dense_baseline(work).eval()
    from tkn.flops import count

    rows = {row.name: row for row in count(work, tuple(input_size)).layers if row.name in names}
    dense_macs = {n: float(row.dense_macs) for n, row in rows.items()}
    hw = {n: (int(row.output_shape[-2]), int(row.output_shape[-1])) for n, row in rows.items()}
    points: dict[str, list[_Point]] = {n: [] for n in names}
    dense_points: dict[str, list[_Point]] = {n: [] for n in feeds}
    totals, sums, dense_times = [], [], []
    geometry: dict[str, SparseInput] = {}
    consistent = set(feeds)  # layers whose frozen input-sparse MACs the budget's formula reproduces at every point
    freeze_repeats = FREEZE_ROUNDS_SMALL if batch_size < SMALL_BATCH else FREEZE_ROUNDS

    def check_sparse(measured: dict[str, _Point], found: dict[str, SparseInput]) -> None:
        for name in list(consistent):
            if name not in measured:
                continue
            geo = found.get(name)
            if geo is None or (name in geometry and geometry[name] != geo):
                consistent.discard(name)
                continue
            geometry.setdefault(name, geo)
            formula = geo.macs(modules[name], hw[name], modules[geo.producer], hw[geo.producer])
            if float(formula) != measured[name].sparse_macs:
                consistent.discard(name)

    # the layers fed by a producer, split into two sets that hold no producer of each other: each set is
    # measured once more with its producers whole (the other set's layers and the unfed ones)
    fed = [n for n in names if n in feeds]
    passes = [fed[0::2], fed[1::2]] if fed else []
    for ratio in levels:
        _set_level(work, ratio, seed)

        def whole_models(frozen: nn.Module) -> dict:
            fns = {"frozen": lambda: frozen(x)}
            if not dense_times:  # the dense model once, in the first level's rounds
                fns["dense"] = lambda: dense(x)
            return fns

        layers, t, found = _timed_layers(work, x, names, repeats, whole_models, feeds, freeze_repeats)
        check_sparse(layers, found)
        if "dense" in t:
            dense_times.append(t["dense"])
        for name, point in layers.items():
            points[name].append(point)
        totals.append(t["frozen"])
        sums.append(sum(point.seconds for point in layers.values()))
        for measured in passes:
            if not measured:
                continue
            if ratio <= 1.0:  # every layer is whole already: these are the points just measured
                for name in measured:
                    if name in layers:
                        dense_points[name].append(layers[name])
                continue
            _set_level(work, ratio, seed, whole=[n for n in names if n not in measured])
            layers, _, found = _timed_layers(work, x, measured, repeats, feeds=feeds, freeze_repeats=freeze_repeats)
            check_sparse(layers, found)
            for name, point in layers.items():
                dense_points[name].append(point)
    fixed = max(0.0, statistics.median(tot - s for tot, s in zip(totals, sums)))
    rest = LayerTable(list(sums), [max(0.0, tot - s) for tot, s in zip(totals, sums)])

    def table(pts: list[_Point]) -> LayerTable:
        return LayerTable([p.macs for p in pts], [p.seconds for p in pts])

    tables = {n: table(points[n]) for n in names if points[n]}
    dense_input = {n: table(dense_points[n]) for n in dense_points if dense_points[n] and n in tables}
    # a fed layer is priced by its input-sparse MACs where they explain its measured times better than its ROI
    # MACs do: the plans that skip the zeros by a table over input-sparse MACs, "reduce" (which does not) by one
    # over ROI MACs, the faster of the two as freeze keeps the faster plan
    sparse, reduce, fit_errors = {}, {}, {}
    for n in sorted(consistent & set(tables)):
        pts = points[n] + [p for p in dense_points[n] if p not in points[n]]
        by_roi = table(pts)
        by_sparse = LayerTable([p.sparse_macs for p in pts], [p.without(REDUCE) for p in pts])
        by_reduce = (LayerTable([p.macs for p in pts], [p.plans[REDUCE] for p in pts])
                     if all(REDUCE in p.plans for p in pts) else None)
        priced = [_input_sparse_seconds(by_sparse, by_reduce, _float64(p.sparse_macs), _float64(p.macs)) for p in pts]
        fit_errors[n] = {"roi": _fit_error([_at(by_roi, p.macs) for p in pts], pts),
                         "sparse": _fit_error([float(t) for t in priced], pts)}
        if fit_errors[n]["sparse"] < fit_errors[n]["roi"]:
            sparse[n] = by_sparse
            if by_reduce is not None:
                reduce[n] = by_reduce
    result = LatencyModel(batch_size, min(dense_times), fixed, tables, key=key, dense_input=dense_input,
                          producers={n: p for n, p in feeds.items() if n in dense_input and p in tables},
                          dense_macs=dense_macs, rest=rest, sparse=sparse,
                          sparse_inputs={n: geometry[n] for n in sparse}, fit_errors=fit_errors, reduce=reduce)
    for i, (ratio, total) in enumerate(zip(levels, totals)):
        at = {n: points[n][min(i, len(points[n]) - 1)] for n in tables}
        predicted = result.predict({n: p.macs for n, p in at.items()}, {n: p.sparse_macs for n, p in at.items()})
        result.checks.append({"flop_ratio": ratio, "measured_s": total, "predicted_s": float(predicted)})
    return result


def _at(table: LayerTable, work: float) -> float:
    return float(table(torch.tensor(work, dtype=torch.float64)))


def _fit_error(predicted: list[float], pts: list[_Point]) -> float:
    """Root mean square of the relative error of ``predicted`` seconds against each point's measured seconds."""
    errors = [t / p.seconds - 1.0 for t, p in zip(predicted, pts)]
    return math.sqrt(sum(e * e for e in errors) / len(errors))


class LatencyBudget(MacBudget):
    """Train a TKN to a *measured* speed-up of its frozen model at ``batch_size`` in ``total_steps`` steps.

    ``R = t(dense model) / t(tkn.freeze(model))`` at ``batch_size`` on this machine, as ``tkn bench``
    measures it; :meth:`speedup` is the latency model's prediction of that factor. The loop is
    :class:`~tkn.budget.MacBudget`'s: ``loss = task_loss + budget.penalty()``, then :meth:`step` after
    each optimiser step (and after :func:`tkn.clip_parameters_`).

    Args:
        model, input_size, target_speedup, total_steps, ramp, dual_lr, band: as for MacBudget, with
            ``target_speedup`` a factor of measured time.
        batch_size: the batch the speed-up is measured at.
        latency_model: a :class:`LatencyModel` to use (default: :func:`calibrate` on this machine, cached).
        threads: threads the speed-up is measured on (:func:`calibrate`'s ``threads``; default: the process's).
        feedback: how many times to measure the model itself during training (0: never); default
            :data:`FEEDBACK_SMALL` below :data:`SMALL_BATCH` samples, :data:`FEEDBACK` (none) from there on. The
            latency model is built on scattered ROIs, and learned windows can run slower or faster than it
            predicts (at batch 1 on TKN6 the first layer's learned ROIs ran up to 1.7x its table). With ``feedback
            = k`` the budget freezes the model and times it against the dense model (as ``tkn bench`` does)
            at the end of the ramp and ``k - 1`` more times evenly spread over the rest of the schedule
            (:meth:`feedback_steps`), and from then on scales its predicted time by the geometric mean of
            ``predicted / measured`` speed-up over the measurements so far (:attr:`correction`): one
            measurement at batch 1 scatters by 10-15% (the dense model's time alone does), more than the
            latency model's error drifts between them. The measurements use a forked RNG (the training's
            random stream is untouched) but are timings: a run is then reproducible only up to them, and
            they learn whatever else runs on the machine, so use it where the training machine is quiet.

    Raises:
        ValueError: ``target_speedup`` above the largest speed-up the latency model predicts for this model
            (every ROI at its minimum width; the message names it), or a bad argument.
    """

    def __init__(self, model: nn.Module, input_size: Any, target_speedup: float, total_steps: int,
                 batch_size: int = 64, *, ramp: float = 0.25, dual_lr: float = 5.0, band: float = 1.1,
                 latency_model: LatencyModel | None = None, threads: int | None = None,
                 feedback: int | None = None) -> None:
        super().__init__(model, input_size, 1.0, total_steps, ramp=ramp, dual_lr=dual_lr, band=band)
        positive_int("batch_size", batch_size)
        if feedback is None:
            feedback = FEEDBACK_SMALL if batch_size < SMALL_BATCH else FEEDBACK
        if isinstance(feedback, bool) or not isinstance(feedback, int) or feedback < 0:
            raise ValueError(f"feedback must be None or an int >= 0 (measurements during training), got {feedback!r}")
        if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or not (
                math.isfinite(target_speedup) and target_speedup >= 1):
            raise ValueError(f"target_speedup must be a number >= 1 (dense time / frozen time), got {target_speedup!r}")
        self.batch_size = int(batch_size)
        self.latency = (latency_model if latency_model is not None
                        else calibrate(model, input_size, batch_size, threads=threads))
        missing = {c.name for c in self.calls} - set(self.latency.layers)
        if missing:
            raise ValueError(f"the latency model has no table for target layers {sorted(missing)}")
        self._bind_sparse()
        floor = {c.name: float(c.floor_macs) for c in self.calls}
        narrowest = self._scaled(math.exp(-60.0), dict.fromkeys(self._weight, 1.0))
        self.max_speedup = self.latency.dense_seconds / float(self.latency.predict(floor, self._sparse_macs(narrowest)))
        if target_speedup > self.max_speedup:
            raise ValueError(
                f"target_speedup {target_speedup:g} is above the largest measured speed-up this model can reach at "
                f"batch {batch_size} on this machine, {self.max_speedup:.3f} (predicted with every ROI at its "
                "minimum width); lower the target or build the target layers with a smaller min_roi")
        self.target_speedup = float(target_speedup)
        self.feedback = feedback
        #: factor on the latency model's predicted time, from the measurements of the model (1: none yet)
        self.correction = 1.0
        #: one entry per measurement: step, measured and predicted (uncorrected) speed-up
        self.measurements: list[dict[str, float]] = []
        self._model, self._input_size, self._threads = model, tuple(int(v) for v in input_size), threads
        self._dense: nn.Module | None = None
        self._feedback_at = frozenset(self.feedback_steps())

    def feedback_steps(self) -> list[int]:
        """The steps after which :meth:`step` measures the model: the end of the ramp, then ``feedback - 1``
        more spread evenly over the steps after it."""
        if not self.feedback:
            return []
        start = max(1, math.ceil(self.ramp * self.total_steps))
        span = self.total_steps - start
        return sorted({min(self.total_steps, start + round(i * span / self.feedback)) for i in range(self.feedback)})

    def _bind_sparse(self) -> None:
        """The calls the latency model prices by input-sparse MACs: a table for the layer, one call of it and one
        of its producer."""
        by_name: dict[str, list] = {}
        for c in self.calls:
            by_name.setdefault(c.name, []).append(c)
        self._sparse = {}
        for name, geo in self.latency.sparse_inputs.items():
            if name in self.latency.sparse and len(by_name.get(name, ())) == 1 and len(by_name.get(geo.producer,
                                                                                                   ())) == 1:
                self._sparse[name] = (geo, by_name[name][0], by_name[geo.producer][0])

    # -- measures -------------------------------------------------------------------
    def _sparse_macs(self, scales: dict[int, Tensor] | None = None, exact: bool = True) -> dict[str, Tensor]:
        """Input-sparse MACs per sample of the layers the latency model prices by them (:class:`SparseInput`)."""
        out = {}
        for name, (geo, c, p) in self._sparse.items():
            s = None if scales is None else scales[id(c.layer)]
            ps = None if scales is None else scales[id(p.layer)]
            value = geo.macs(c.layer, c.hw, p.layer, p.hw, s, ps, exact=exact)
            out[name] = value.detach() if exact else value
        return out

    def _layer_macs(self, scales: dict[int, Tensor] | None = None) -> dict[str, float]:
        per = self._exact_per_channel(scales)
        out, offset = {}, 0
        for c in self.calls:
            n = c.layer.out_channels
            out[c.name] = out.get(c.name, 0.0) + float(per[offset:offset + n].sum())
            offset += n
        return out

    def predicted_seconds(self, scales: dict[int, Tensor] | None = None) -> float:
        """The latency model's seconds per batch of the frozen model with the current ROIs (times
        :attr:`correction`)."""
        return self.correction * self._model_seconds(scales)

    def _model_seconds(self, scales: dict[int, Tensor] | None = None) -> float:
        """The latency model's own prediction (without :attr:`correction`)."""
        return float(self.latency.predict(self._layer_macs(scales), self._sparse_macs(scales)))

    def budget_seconds(self, step: int | None = None) -> float:
        """Allowed seconds per batch after ``step`` steps: ``t(dense) / r(t)``."""
        return self.latency.dense_seconds / self.scheduled_speedup(step)

    def speedup(self) -> float:
        """Predicted measured speed-up of the frozen model over the dense model at ``batch_size``."""
        return self.latency.dense_seconds / self.predicted_seconds()

    def measure(self) -> Tensor:
        """Differentiable predicted seconds: each layer's table at its differentiable ROI MACs (input-sparse MACs
        for the layers the latency model prices by them, from both layers' windows)."""
        macs: dict[str, Tensor] = {}
        for c in self.calls:
            value = roi_mac_measure(c.layer, *c.hw).to(torch.float64)
            macs[c.name] = macs[c.name] + value if c.name in macs else value
        return self.correction * self.latency.predict(macs, self._sparse_macs(exact=False))

    def penalty(self) -> Tensor:
        """``λ · T / T_budget(t)``: a scalar tensor, differentiable in every target layer's ``m`` and ``s``."""
        return super().penalty().to(self.calls[0].layer.s.dtype)

    @torch.no_grad()
    def step(self) -> None:
        """After an optimiser step: at a :meth:`feedback_steps` step, measure the model first; then advance the
        schedule, update ``λ`` and project (:meth:`tkn.MacBudget.step`)."""
        if self.steps + 1 in self._feedback_at:
            self.measure_model(self.steps + 1)
        super().step()

    @torch.no_grad()
    def measure_model(self, step: int | None = None) -> float:
        """Freeze the model, time it against the dense model at ``batch_size`` (one interleaved run, as ``tkn
        bench`` times, on the budget's threads), record it in :attr:`measurements`, set :attr:`correction` to
        the geometric mean of ``predicted / measured`` over them, and return the measured speed-up. Warns as
        :func:`calibrate` does when other work keeps cores busy."""
        _warn_if_busy("measuring the model for the latency budget's feedback", "train with feedback=0 here, or alone")
        x = torch.rand(self.batch_size, *self._input_size, generator=torch.Generator().manual_seed(0))
        repeats = ROUNDS_SMALL if self.batch_size < SMALL_BATCH else ROUNDS
        previous = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.set_num_threads(self._threads or previous)
            try:
                if self._dense is None:
                    self._dense = dense_baseline(self._model).eval()
                frozen, dense = freeze(self._model, x), self._dense
                t = interleaved({"dense": lambda: dense(x), "frozen": lambda: frozen(x)}, repeats, min_block_s=BLOCK_S)
            finally:
                torch.set_num_threads(previous)
        measured = t["dense"]["min"] / t["frozen"]["min"]
        predicted = self.latency.dense_seconds / self._model_seconds()
        self.measurements.append({"step": float(self.steps if step is None else step), "measured": measured,
                                  "predicted": predicted})
        self.correction = math.exp(statistics.fmean(math.log(m["predicted"] / m["measured"])
                                                    for m in self.measurements))
        return measured

    # -- the quantity the budget holds: predicted seconds per batch -------------------
    def _cost(self) -> float:
        return self.predicted_seconds()

    def _allowed(self) -> float:
        return self.budget_seconds()

    def _speedup_at(self, cost: float) -> float:
        return self.latency.dense_seconds / cost

    def _project(self, budget: float) -> None:
        """Scale the scales (layer ``l`` by ``α ** w_l``) so that the predicted time just fits ``budget``."""
        weight = self._weight
        if self.predicted_seconds(self._scaled(math.exp(-60.0), weight)) > budget:
            weight = dict.fromkeys(weight, 1.0)
        bracket = log_bracket(lambda a: self.predicted_seconds(self._scaled(a, weight)) <= budget)
        if bracket is None:
            return  # every window can cover its whole map within the budget
        chosen = self._scaled(math.exp(bracket[0]), weight)
        for c in self.calls:
            c.layer.s.copy_(chosen[id(c.layer)])

    # -- persistence ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Steps done, the multiplier, the settings and the latency model (plain data)."""
        state = super().state_dict()
        state.update(batch_size=self.batch_size, latency_model=self.latency.to_dict(), correction=self.correction,
                     measurements=[dict(m) for m in self.measurements])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the latency model saved with it is used again, so a resumed run
        predicts as the original did)."""
        if "batch_size" in state and int(state["batch_size"]) != self.batch_size:
            raise ValueError(f"budget state has batch_size={state['batch_size']!r}, this budget {self.batch_size!r}")
        super().load_state_dict(state)
        if "latency_model" in state:
            self.latency = LatencyModel.from_dict(state["latency_model"])
            self._bind_sparse()
        self.correction = float(state.get("correction", 1.0))
        self.measurements = [dict(m) for m in state.get("measurements", [])]

    def __repr__(self) -> str:
        return (f"LatencyBudget(target_speedup={self.target_speedup:g}, batch_size={self.batch_size}, "
                f"total_steps={self.total_steps}, steps={self.steps}, multiplier={self.multiplier:.4g}, "
                f"speedup={self.speedup():.3f})")

