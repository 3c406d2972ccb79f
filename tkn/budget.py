"""Budget-driven training: reach a stated speed-up factor on any schedule.

The paper's L2 on the scales (:func:`tkn.scale_penalty`) acts once per
optimiser step, so the FLOP reduction it buys depends on how many steps a
schedule has: a coefficient tuned for 20 epochs does almost nothing in 60
steps. :class:`MacBudget` states the goal instead: the whole network's
speed-up ``R = dense MACs / ROI MACs`` (the paper's Fig. 5 factor, exactly
``tkn.flops.count(model, input_size)``'s ``dense_macs / macs``).

How it gets there
-----------------
* **A ramp.** The allowed MACs fall geometrically from dense to
  ``dense / R`` over the first ``ramp`` fraction of ``total_steps`` (default a
  quarter), then stay there: ``r(t) = R ** min(1, t / (ramp * total_steps))``.
  Shrinking gradually lets the weights follow the windows; the three quarters
  at a fixed budget let them, and batch-norm running statistics, settle (on
  125- and 150-step runs of TDN10 and TKN6 a quarter gave lower test errors
  than a half).
* **A differentiable price.** :meth:`MacBudget.penalty` is ``λ · M / B(t)``
  where ``M`` is a differentiable measure of the target layers' ROI MACs
  (per axis the clipped interval ``[m - s/√2, m + s/√2] ∩ [0, 1]`` times the map
  length, the product of both axes times ``C_in / groups · kH · kW``, summed
  over every call of every target layer) and ``B(t)`` the budget in target-layer
  MACs. Its gradient tells every window how much one pixel of its ROI costs,
  against what the task gains from it: channels whose task gradient is weak
  shrink first. The multiplier ``λ`` adapts by dual ascent: after each
  optimiser step it grows by ``dual_lr · (MACs / B(t) - 1)`` (exact MACs, before
  the projection below), so it rises while the task keeps pushing the windows
  over the budget and falls (not below 0) when the price overshoots.
* **A projection.** :meth:`MacBudget.step` then moves the raw parameters onto
  the budget, like :func:`tkn.clip_parameters_` moves them into their box:
  ``m`` into ``[0, 1]`` and ``s`` into the clipping range each layer's forward
  pass uses (values outside it compute the same output, but would stop
  receiving gradients), and, when the exact speed-up leaves the band
  ``[r(t), band · r(t)]``, the scales are multiplied by a factor (found by
  bisection on the exact integer ROIs; layer ``l`` gets ``α ** w_l`` with ``w_l``
  its share of the target layers' dense MACs relative to the largest share, so
  that the layers that cost most give up most and a cheap first layer keeps
  its view), channel by channel at the boundary, so that the speed-up lands
  just above ``r(t)``. The projection guarantees the target on any schedule
  length and any optimiser; the price decides which windows pay for it.

After ``total_steps`` steps the exact speed-up is in ``[R, band · R]`` (up to
one channel's worth of MACs), unless ``R`` is so close to :func:`max_speedup`
that it needs every ROI on its narrowest integer width (see there).

Example:
    >>> import torch, tkn
    >>> from tkn.models import create_model
    >>> _ = torch.manual_seed(0)
    >>> model = create_model("tkn6", input_size=28, l2=0.0)
    >>> budget = tkn.MacBudget(model, input_size=(1, 28, 28), target_speedup=3.0, total_steps=4)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> for _ in range(4):
    ...     x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    ...     loss = torch.nn.functional.cross_entropy(model(x), y) + budget.penalty()
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     tkn.clip_parameters_(model)
    ...     budget.step()
    >>> 3.0 <= budget.speedup() <= 3.0 * 1.1
    True
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tkn import functional as TF
from tkn.layers import TargetConv2d
from tkn.validate import at_least, in_range, positive_int, positive_number

__all__ = ["MacBudget", "max_speedup", "roi_mac_measure", "log_bracket"]

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class _Call:
    """One call of a target layer in a forward pass: the layer, its output map and the MACs of one ROI pixel."""

    name: str
    layer: TargetConv2d
    hw: tuple[int, int]
    pixel_macs: int

    @property
    def dense_macs(self) -> int:
        return self.layer.out_channels * self.hw[0] * self.hw[1] * self.pixel_macs

    @property
    def floor_macs(self) -> int:
        """MACs with every ROI at its narrowest width (``roi_floor``, at most the map)."""
        (fy, fx), (h, w) = self.layer.roi_floor, self.hw
        return self.layer.out_channels * min(fy, h) * min(fx, w) * self.pixel_macs


def _calls(model: nn.Module, input_size: Any) -> tuple[list[_Call], int, int]:
    """Every target-layer call of one forward pass, the model's dense MACs and the MACs outside target layers."""
    from tkn.flops import count

    report = count(model, input_size)
    modules = dict(model.named_modules())
    calls = []
    for row in report.layers:
        layer = modules.get(row.name)
        if isinstance(layer, TargetConv2d):
            pixel = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            calls.append(_Call(row.name, layer, (row.output_shape[-2], row.output_shape[-1]), pixel))
    dense = report.dense_macs
    fixed = dense - sum(c.dense_macs for c in calls)
    return calls, dense, fixed


def max_speedup(model: nn.Module, input_size: Any) -> float:
    """The largest whole-network speed-up ``dense MACs / ROI MACs`` the model can reach.

    Every ROI at its layer's narrowest width (``min_roi``, or the kernel's
    extent), the rest of the network unchanged. An ROI gets exactly that width
    only with its centre on the pixel grid (between two pixels for an even
    width, on a pixel centre for an odd one); ROIs cut by the map border can be
    narrower still, which this figure leaves out.

    Example:
        >>> from tkn.models import create_model
        >>> round(max_speedup(create_model("tkn6", input_size=28), (1, 28, 28)), 2)
        5.78
    """
    calls, dense, fixed = _calls(model, input_size)
    return _max_speedup(calls, dense, fixed)


def _max_speedup(calls: list[_Call], dense: int, fixed: int) -> float:
    if not calls:
        raise ValueError("the model has no target layer (TargetConv2d): nothing can be made faster")
    return dense / (fixed + sum(c.floor_macs for c in calls))


def _continuous_width(m: Tensor, s: Tensor) -> Tensor:
    """Relative width of ``[m - s/√2, m + s/√2] ∩ [0, 1]`` (differentiable where the interval ends are inside)."""
    half = s / _SQRT2
    return (m + half).clamp(0.0, 1.0) - (m - half).clamp(0.0, 1.0)


def roi_mac_measure(layer: TargetConv2d, height: int, width: int) -> Tensor:
    """Differentiable ROI MACs of ``layer`` on an output map of ``height x width`` (one sample).

    ``Σ_c width_y,c · width_x,c · C_in / groups · kH · kW`` with per-axis widths
    ``|[m - s/√2, m + s/√2] ∩ [0, 1]| · L`` from the clipped parameters. It equals
    :meth:`TargetConv2d.macs` up to the rounding of the ROI borders to whole
    pixels (the exact count is at most two pixels wider per axis).
    """
    m, s = layer.clipped(height, width)
    wy = _continuous_width(m[:, 0], s[:, 0]) * height
    wx = _continuous_width(m[:, 1], s[:, 1]) * width
    pixel = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
    return (wy * wx).sum() * pixel


def log_bracket(fits: Callable[[float], bool]) -> tuple[float, float] | None:
    """For a scale factor whose fit is monotone (``fits(a)`` true for small ``a``, false from some point on):
    ``(lo, hi)`` in log-space, 2**-40 apart after bisection, with ``fits(exp(lo))`` true (or ``lo`` at -60) and
    ``fits(exp(hi))`` false; ``None`` when every factor up to ``exp(60)`` fits."""
    if fits(1.0):
        lo, hi = 0.0, 1.0
        while fits(math.exp(hi)):
            if hi >= 60:
                return None
            lo, hi = hi, hi + 1.0
    else:
        lo, hi = -1.0, 0.0
        while lo > -60 and not fits(math.exp(lo)):
            lo, hi = lo - 1.0, lo
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(math.exp(mid)) else (lo, mid)
    return lo, hi


class MacBudget:
    """Train a TKN to a whole-network speed-up factor ``target_speedup`` in ``total_steps`` optimiser steps.

    Args:
        model: a network holding :class:`~tkn.layers.TargetConv2d` layers (any ``l2``, 0 included).
        input_size: ``(C, H, W)`` of one input, as for :func:`tkn.flops.count`.
        target_speedup: ``R = dense MACs / ROI MACs`` of the whole network, ``>= 1``.
        total_steps: optimiser steps of the schedule (the ramp is sized from it).
        ramp: fraction of ``total_steps`` over which the budget falls from dense to ``1 / R``.
        dual_lr: step of the multiplier's dual ascent.
        band: the projection keeps the exact speed-up in ``[r(t), band · r(t)]``.

    Use ``loss = task_loss + budget.penalty()`` and call :meth:`step` after
    every optimiser step (and after :func:`tkn.clip_parameters_`). See the
    module documentation for how the penalty and the projection work.

    Raises:
        ValueError: ``target_speedup`` above :func:`max_speedup` (the message
            names that maximum), a model without target layers, or a bad argument.
    """

    def __init__(self, model: nn.Module, input_size: Any, target_speedup: float, total_steps: int, *,
                 ramp: float = 0.25, dual_lr: float = 5.0, band: float = 1.1) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        at_least("target_speedup", target_speedup, 1, note="dense MACs / ROI MACs")
        positive_int("total_steps", total_steps)
        in_range("ramp", ramp, 0, 1, note="a fraction of total_steps")
        positive_number("dual_lr", dual_lr)
        in_range("band", band, 1, 2, low_open=True)
        self.model = model
        self.calls, self.dense_macs, self.fixed_macs = _calls(model, input_size)
        self.max_speedup = _max_speedup(self.calls, self.dense_macs, self.fixed_macs)
        if target_speedup > self.max_speedup:
            raise ValueError(
                f"target_speedup {target_speedup:g} is above the largest speed-up this model can reach, "
                f"{self.max_speedup:.3f} (every ROI at its minimum width); lower the target or build the target "
                "layers with a smaller min_roi"
            )
        self.target_speedup = float(target_speedup)
        self.total_steps = int(total_steps)
        self.ramp, self.dual_lr, self.band = float(ramp), float(dual_lr), float(band)
        self.steps = 0
        self.multiplier = 0.0
        dense_by_layer: dict[int, int] = {}
        for c in self.calls:
            dense_by_layer[id(c.layer)] = dense_by_layer.get(id(c.layer), 0) + c.dense_macs
        top = max(dense_by_layer.values())
        #: exponent of the projection's factor per layer: its dense MACs relative to the costliest layer's
        self._weight = {key: value / top for key, value in dense_by_layer.items()}

    # -- the schedule ---------------------------------------------------------------
    def scheduled_speedup(self, step: int | None = None) -> float:
        """``r(t)``: the speed-up the budget asks for after ``step`` steps (default: the steps done)."""
        t = self.steps if step is None else step
        span = self.ramp * self.total_steps
        frac = 1.0 if span <= 0 else min(1.0, t / span)
        return self.target_speedup ** frac

    def budget_macs(self, step: int | None = None) -> float:
        """Allowed MACs of the target layers after ``step`` steps (the whole network's budget minus the rest)."""
        return self.dense_macs / self.scheduled_speedup(step) - self.fixed_macs

    # -- measures -------------------------------------------------------------------
    def measure(self) -> Tensor:
        """Differentiable ROI MACs of all target-layer calls (see :func:`roi_mac_measure`)."""
        return torch.stack([roi_mac_measure(c.layer, *c.hw) for c in self.calls]).sum()

    def _exact_per_channel(self, scales: dict[int, Tensor] | None = None) -> Tensor:
        """Exact MACs of every (call, channel), concatenated in call order, for the scales given per layer
        (default: the layers' own)."""
        parts = []
        for c in self.calls:
            s = c.layer.s if scales is None else scales[id(c.layer)]
            roi = TF.rois(c.layer.m, s, c.hw, c.layer.roi_floor)
            parts.append(TF.roi_areas(roi).to(torch.float64) * c.pixel_macs)
        return torch.cat(parts)

    def _exact(self, scales: dict[int, Tensor] | None = None) -> float:
        """Exact MACs of the target-layer calls (integers well below 2**53: exact in float64)."""
        return float(self._exact_per_channel(scales).sum())

    def macs(self) -> int:
        """Exact MACs of the whole network now (as ``tkn.flops.count(...).macs``)."""
        return int(self.fixed_macs + self._exact())

    def speedup(self) -> float:
        """The exact whole-network speed-up now: ``dense MACs / MACs``, equal to ``tkn.flops.count``'s."""
        return self.dense_macs / self.macs()

    # -- the quantity the budget holds (MACs here; LatencyBudget overrides these with predicted seconds) --------
    def _cost(self) -> float:
        """The target layers' cost now, in the budget's unit."""
        return self._exact()

    def _allowed(self) -> float:
        """The cost the schedule allows after the steps done."""
        return self.budget_macs()

    def _speedup_at(self, cost: float) -> float:
        """The whole network's speed-up when the target layers cost ``cost``."""
        return self.dense_macs / (self.fixed_macs + cost)

    # -- training -------------------------------------------------------------------
    def penalty(self) -> Tensor:
        """``λ · M / B(t)``: a scalar tensor, differentiable in every target layer's ``m`` and ``s``."""
        return self.multiplier * self.measure() / self._allowed()

    @torch.no_grad()
    def step(self) -> None:
        """After an optimiser step: advance the schedule, update ``λ``, project the windows onto the budget."""
        self.steps += 1
        self._clamp_raw()
        budget = self._allowed()
        cost = self._cost()
        self.multiplier = max(0.0, self.multiplier + self.dual_lr * (cost / budget - 1.0))
        target = self.scheduled_speedup()
        speedup = self._speedup_at(cost)
        if speedup < target or speedup > self.band * target:
            self._project(budget)

    def _clamp_raw(self) -> None:
        """Raw ``m`` into ``[0, 1]`` and ``s`` into the range the forward pass clips to (same output, live
        gradients)."""
        for c in self.calls:
            lo, hi = self._scale_bounds(c)
            c.layer.m.clamp_(0.0, 1.0)
            c.layer.s.copy_(torch.maximum(torch.minimum(c.layer.s, hi), lo))

    @staticmethod
    def _scale_bounds(c: _Call) -> tuple[Tensor, Tensor]:
        s = c.layer.s
        lower = torch.tensor([TF.min_scale(k, n) for k, n in zip(c.layer.roi_floor, c.hw)], dtype=s.dtype,
                             device=s.device)
        return lower, torch.clamp(lower, min=TF.SCALE_MAX)

    def _scaled(self, alpha: float, weight: dict[int, float]) -> dict[int, Tensor]:
        out = {}
        for c in self.calls:
            lo, hi = self._scale_bounds(c)
            out[id(c.layer)] = torch.maximum(torch.minimum(c.layer.s * alpha ** weight[id(c.layer)], hi), lo)
        return out

    def _project(self, budget: float) -> None:
        """Scale the scales so that the exact MACs just fit ``budget`` (channel by channel at the edge)."""
        weight = self._weight
        if self._exact(self._scaled(math.exp(-60.0), weight)) > budget:
            weight = dict.fromkeys(weight, 1.0)  # the weighted factor cannot get there: shrink every layer alike
        scaled = lambda a: self._scaled(a, weight)  # noqa: E731
        bracket = log_bracket(lambda a: self._exact(scaled(a)) <= budget)
        if bracket is None:
            return  # every window can cover its whole map within the budget
        lo, hi = bracket
        small, large = scaled(math.exp(lo)), scaled(math.exp(hi))
        # between the two factors some channels change width: take the larger scales where the budget allows,
        # giving the smaller ones first to the channels whose switch saves the most
        per_small, per_large = self._exact_per_channel(small), self._exact_per_channel(large)
        excess = float(per_large.sum()) - budget
        order = torch.argsort(per_large - per_small, descending=True, stable=True)
        saved = torch.cumsum((per_large - per_small)[order], 0)
        count = int(torch.searchsorted(saved, torch.tensor(excess, dtype=saved.dtype)).item()) + 1
        use_small = torch.zeros(len(per_small), dtype=torch.bool)
        use_small[order[:min(count, len(order))]] = True
        offset = 0
        for c in self.calls:
            n = c.layer.out_channels
            pick = use_small[offset:offset + n].to(c.layer.s.device)
            offset += n
            key = id(c.layer)
            c.layer.s.copy_(torch.where(pick[:, None], small[key], large[key]))

    # -- persistence ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Steps done, the multiplier and the settings (plain data)."""
        return {"steps": self.steps, "multiplier": self.multiplier, "target_speedup": self.target_speedup,
                "total_steps": self.total_steps, "ramp": self.ramp, "dual_lr": self.dual_lr, "band": self.band}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`.

        The target, ramp, dual step and band must match this budget's; ``total_steps``
        may differ (a run continued for more epochs holds the target longer).
        """
        for key in ("target_speedup", "ramp", "dual_lr", "band"):
            if key in state and float(state[key]) != float(getattr(self, key)):
                raise ValueError(f"budget state has {key}={state[key]!r}, this budget {getattr(self, key)!r}")
        self.steps = int(state["steps"])
        self.multiplier = float(state["multiplier"])

    def __repr__(self) -> str:
        return (f"MacBudget(target_speedup={self.target_speedup:g}, total_steps={self.total_steps}, "
                f"steps={self.steps}, multiplier={self.multiplier:.4g}, speedup={self.speedup():.3f})")
