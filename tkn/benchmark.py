"""Benchmark harness behind ``tkn bench``: dense CNN vs target model (dense) vs frozen model.

Synthetic trained-like ROIs
---------------------------
Without a checkpoint, :func:`synthetic_rois_` sets every target layer's raw
window parameters from a seeded generator (``torch.Generator().manual_seed(seed
+ i)`` for the ``i``-th target layer in module order), independently per
channel and axis::

    m ~ U(0.1, 0.9)      centres spread over the map
    s ~ U(0.1, 0.45)     scales (relative units)

then the layers clip as always (``s`` is raised to the kernel's minimum, so on
small maps the narrowest ROIs are kernel-wide). Drawing ``m`` first and ``s``
second, each as one ``(C, 2)`` tensor with ``torch.rand``, is part of the
definition. On TKN6 at 56×56 (seed 0) the whole model's FLOP ratio is 5.73.

A registered model may have its own scale range (:data:`S_RANGES`, looked up by
``model.spec["name"]``): TResNet-18 draws ``s ~ U(0.1, 0.36)``, which gives it a
FLOP ratio of 6.11 at 3×64×64 (seed 0; 4.97 with the default range, its last
stage's 8×8 maps keeping kernel-wide ROIs and its stem and shortcuts dense).

``tkn bench --rois paper`` draws ``m ~ U(0.25, 0.6)`` and ``s ~ U(0.08, 0.16)``
instead (:data:`ROI_PRESETS`): nearly every ROI is at the kernel-width floor and
TKN6's FLOP ratio at 56×56 is 14.3, near the paper's.

What is timed
-------------
* ``dense``: the baseline CNN — the model with each target layer replaced by a
  plain ``nn.Conv2d`` holding the same weights (for TKN6 this is CNN6);
* ``target``: the target model executed densely (``execution="dense"``);
* ``frozen``: :func:`tkn.engine.freeze` of the target model, planned for the
  same batch size.

Variants are run round-robin (``dense, target, frozen, dense, ...``) for
``repeats`` rounds after one warm-up round, each in blocks of consecutive calls
lasting at least :data:`tkn.timing.BLOCK_S` (see :mod:`tkn.timing`); the report
gives the minimum per call (the least disturbed run: the machine may be shared)
and the median, of the steady state (block means) and of the first call of each
block (a cold start, right after the other variants ran). Per-layer
figures time each layer alone on the activations it receives. One training
step is forward + cross-entropy + backward + SGD step, the dense CNN against
the target model with ``execution="fast"`` (:mod:`tkn.ops.fast_conv`).

Peak memory is measured in a fresh subprocess per variant with glibc's mmap
threshold fixed at 64 KiB (every tensor buffer is then its own mapping, so
resident memory follows live tensors): after a warm-up pass the peak-RSS
counter is reset (``/proc/self/clear_refs``) and the figure is the peak
resident memory during one pass minus the resident memory before it. It is
``None`` where ``/proc`` does not offer this (non-Linux).
"""
from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn.convert import target_layers
from tkn.engine.freeze import freeze, plan_summary
from tkn.engine.modules import FrozenTargetConv2d
from tkn.io import atomic_write_text
from tkn.layers import TargetConv2d
from tkn.timing import BLOCK_S, interleaved

__all__ = [
    "synthetic_rois_",
    "dense_baseline",
    "interleaved",
    "bench_model",
    "bench_layers",
    "bench_train_step",
    "peak_memory",
    "conditions",
    "write_rows",
]

M_RANGE = (0.1, 0.9)
S_RANGE = (0.1, 0.45)
#: Scale ranges of registered models that differ from :data:`S_RANGE` (keyed by registry name).
S_RANGES: dict[str, tuple[float, float]] = {"tresnet18": (0.1, 0.36)}

#: Named ``(m range, s range)`` settings of :func:`synthetic_rois_` (``tkn bench --rois NAME``). ``"paper"``
#: gives ROIs at the paper's FLOP ratios: on TKN6 at 56×56 nearly every ROI is at the kernel-width floor and
#: the whole model's FLOP ratio is about 15.
ROI_PRESETS: dict[str, tuple[tuple[float, float], tuple[float, float] | None]] = {
    "default": (M_RANGE, None),
    "paper": ((0.25, 0.6), (0.08, 0.16)),
}


@torch.no_grad()
def synthetic_rois_(model: nn.Module, seed: int = 0, m_range: tuple[float, float] = M_RANGE,
                    s_range: tuple[float, float] | None = None) -> nn.Module:
    """Set every target layer's ``m``, ``s`` to the documented synthetic distribution (in place); returns ``model``.

    ``m_range`` and ``s_range`` replace the default ``U(0.1, 0.9)`` and the model's scale range
    (:data:`S_RANGES`, else ``U(0.1, 0.45)``); see :data:`ROI_PRESETS`.
    """
    if s_range is None:
        s_range = S_RANGES.get(getattr(model, "spec", {}).get("name"), S_RANGE)
    for lo, hi in (m_range, s_range):
        if not lo <= hi:
            raise ValueError(f"a range must be (low, high) with low <= high, got {(lo, hi)}")
    for i, (_, layer) in enumerate(target_layers(model)):
        g = torch.Generator().manual_seed(seed + i)
        m = torch.rand(layer.m.shape, generator=g, dtype=torch.float64) * (m_range[1] - m_range[0]) + m_range[0]
        s = torch.rand(layer.s.shape, generator=g, dtype=torch.float64) * (s_range[1] - s_range[0]) + s_range[0]
        layer.m.copy_(m.to(layer.m))
        layer.s.copy_(s.to(layer.s))
    return model


def _conv_from_target(layer: TargetConv2d) -> nn.Conv2d:
    left, right, top, bottom = layer.pad
    if left != right or top != bottom:
        padding: Any = "same"
    else:
        padding = (top, left)
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=padding,
                     dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None,
                     padding_mode=layer.padding_mode, device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


def dense_baseline(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`~tkn.layers.TargetConv2d` replaced by an ``nn.Conv2d`` (same weights)."""
    new = copy.deepcopy(model)
    if isinstance(new, TargetConv2d):
        return _conv_from_target(new)
    done: dict[int, nn.Conv2d] = {}
    for module in list(new.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, TargetConv2d):
                done.setdefault(id(child), _conv_from_target(child))
                setattr(module, name, done[id(child)])
    return new


def _flop_ratio(model: nn.Module, input_size: Sequence[int]) -> tuple[float, dict[str, float]]:
    from tkn.flops import count

    report = count(model, tuple(input_size))
    per_layer = {row.name: row.dense_macs / row.macs for row in report.layers if row.roi_fraction is not None and row.macs}
    return report.dense_macs / report.macs, per_layer


def _prepared(model: nn.Module, input_size: Sequence[int], batch: int, seed: int, execution: str
              ) -> tuple[torch.Generator, Tensor, nn.Module]:
    """The seeded generator, a uniform input batch drawn from it, and a copy of ``model`` whose target layers run
    with ``execution`` (in train mode for ``"fast"``, eval mode otherwise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *input_size, generator=g)
    target = copy.deepcopy(model).train(execution == "fast")
    for _, layer in target_layers(target):
        layer.execution = execution
    return g, x, target


#: Extra frozen variants timed by ``tkn bench --ablations`` in the same interleaved rounds.
ABLATIONS: dict[str, dict[str, Any]] = {
    "frozen_no_input_sparsity": {"input_sparsity": False},
    "frozen_no_fuse_no_input_sparsity": {"input_sparsity": False, "fuse": False},
    "frozen_no_graph": {"graph": False},
    "frozen_no_native": {"native": False},
    "frozen_groups_only": {"native": ("groups",)},
    "frozen_no_channels_last": {"channels_last": False},
}


def bench_model(model: nn.Module, input_size: Sequence[int], batch: int, repeats: int,
                seed: int = 0, freeze_options: dict[str, Any] | None = None,
                ablations: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Whole-model inference: dense CNN, target model (dense), frozen model at one batch size.

    ``freeze_options`` go to :func:`tkn.engine.freeze` (e.g. ``{"input_sparsity": False}``);
    ``ablations`` (name → freeze options) adds further frozen variants to the same interleaved rounds.
    """
    _, x, target = _prepared(model, input_size, batch, seed, "dense")
    dense = dense_baseline(target).eval()
    t0 = time.perf_counter()
    frozen = freeze(target, x, **dict(freeze_options or {}))
    freeze_s = time.perf_counter() - t0
    extra = {name: freeze(target, x, **options) for name, options in (ablations or {}).items()}
    with torch.no_grad():
        ref = target(x)
        err = float(((frozen(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item())
        fns = {"dense": lambda: dense(x), "target": lambda: target(x), "frozen": lambda: frozen(x)}
        fns.update({name: (lambda m=m: m(x)) for name, m in extra.items()})
        times = interleaved(fns, repeats, min_block_s=BLOCK_S, device=x.device)
    ratio, _ = _flop_ratio(target, input_size)
    speedup = times["dense"]["min"] / times["frozen"]["min"]
    first = times["dense"]["first_min"] / times["frozen"]["first_min"]
    return {
        "batch": batch,
        "flop_ratio": ratio,
        "times_s": times,
        "speedup_vs_dense": speedup,
        "speedup_vs_target": times["target"]["min"] / times["frozen"]["min"],
        "efficiency": speedup / ratio,
        "first_call_speedup_vs_dense": first,
        "first_call_efficiency": first / ratio,
        "throughput_per_s": {k: batch / v["min"] for k, v in times.items()},
        "frozen_max_rel_error": err,
        "freeze_s": freeze_s,
        "plans": plan_summary(frozen),
    }


def bench_layers(model: nn.Module, input_size: Sequence[int], batch: int, repeats: int,
                 seed: int = 0, freeze_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each target layer alone on its own input activations: dense vs dense target vs frozen.

    ``dense`` is the layer as the dense CNN runs it: ``nn.Conv2d`` followed by the ReLU and max-pool that
    the frozen layer fused (a fused batch norm is not added: compare such rows with that in mind); the
    target layer runs without them. The frozen layer gets the activations it receives inside the frozen
    model (its producer's layout and channel order). ``work`` is the multiply–accumulates the frozen layer
    executes over those of the ROIs: for native plans every lane computed (the ``"batch"`` strategy's
    padding lanes included), after the products that input sparsity skips where the strategy skips them
    exactly (``"batch"``), before them otherwise. ``weight_bytes``: the layer's weights, which a batch-1 pass
    must read at least once (its memory-bound floor).
    """
    _, x, target = _prepared(model, input_size, batch, seed, "dense")
    frozen = freeze(target, x, **dict(freeze_options or {}))
    inputs: dict[str, Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda mod, a, n=name: inputs.setdefault(n, a[0].detach()))
             for name, layer in target_layers(target)]
    with torch.no_grad():
        target(x)
    for h in hooks:
        h.remove()
    frozen_inputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=name: frozen_inputs.setdefault(n, a[0].detach()))
             for name, m in frozen.named_modules() if isinstance(m, FrozenTargetConv2d)]
    with torch.no_grad():
        frozen(x)
    for h in hooks:
        h.remove()
    _, ratios = _flop_ratio(target, input_size)
    rows = []
    for name, layer in target_layers(target):
        if name not in inputs:
            continue
        xi = inputs[name]
        fl = frozen.get_submodule(name)
        assert isinstance(fl, FrozenTargetConv2d)
        # the dense baseline does what the frozen layer does: the convolution and the ReLU / pool it fused
        conv = nn.Sequential(_conv_from_target(layer), *([nn.ReLU()] if fl.relu else []),
                             *([nn.MaxPool2d(fl.pool)] if fl.pool > 1 else [])).eval()
        xf = frozen_inputs[name]
        with torch.no_grad():
            t = interleaved({"dense": lambda: conv(xi), "target": lambda: layer(xi), "frozen": lambda: fl(xf)},
                            repeats, min_block_s=BLOCK_S, device=xi.device)
        speedup = t["dense"]["min"] / t["frozen"]["min"]
        ratio = ratios.get(name, float("nan"))
        rows.append({
            "layer": name, "batch": batch, "flop_ratio": ratio, "times_s": t, "speedup_vs_dense": speedup,
            "efficiency": speedup / ratio, "plan": fl.plan.label,
            "blocks": fl.work_units()[0], "unit": fl.work_units()[1],
            "work": fl.executed_macs(batch) / max(fl.macs(), 1),
            "weight_bytes": layer.weight.numel() * layer.weight.element_size(),
            "epilogue": " ".join((["relu"] if fl.relu else []) + ([f"pool{fl.pool}"] if fl.pool > 1 else [])),
        })
    return rows


def bench_train_step(model: nn.Module, input_size: Sequence[int], batch: int, repeats: int, num_classes: int = 10,
                     seed: int = 0) -> dict[str, Any]:
    """One SGD step (forward, cross-entropy, backward, step): dense CNN vs target model with ``execution="fast"``,
    stepped as ``tkn train`` steps it (the view of :func:`~tkn.training.fusion.fused_training_view`, ``"fast"``)
    and as it is (``"fast_unfused"``: ReLU and pool on the full maps), in the same interleaved rounds."""
    g, x, target = _prepared(model, input_size, batch, seed, "fast")
    dense = dense_baseline(target).train()
    with torch.no_grad():
        classes = dense(x[:1]).shape[-1]
    y = torch.randint(0, classes, (batch,), generator=g)
    opts = {"dense": torch.optim.SGD(dense.parameters(), lr=1e-6), "fast": torch.optim.SGD(target.parameters(), lr=1e-6)}
    from tkn.training.fusion import fused_training_view  # here: tkn.training needs pyyaml, inference timing does not

    view, fused = fused_training_view(target)  # what `tkn train` steps (see tkn.training.fusion)

    def step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    times = interleaved({"dense": lambda: step(dense, opts["dense"]), "fast": lambda: step(view, opts["fast"]),
                         "fast_unfused": lambda: step(target, opts["fast"])}, repeats, min_block_s=BLOCK_S,
                        device=x.device)
    ratio, _ = _flop_ratio(target, input_size)
    return {"batch": batch, "flop_ratio": ratio, "times_s": times, "fused_epilogues": fused,
            "speedup_vs_dense": times["dense"]["min"] / times["fast"]["min"],
            "speedup_unfused_vs_dense": times["dense"]["min"] / times["fast_unfused"]["min"]}


def memory_child(spec: dict[str, Any]) -> None:
    """Subprocess entry: build one variant, warm up, reset the peak-RSS counter, run once, print the peak delta."""
    from tkn.checkpoint import model_from_checkpoint
    from tkn.models import create_model

    torch.set_num_threads(spec["threads"])
    if spec.get("checkpoint"):
        model, _ = model_from_checkpoint(spec["checkpoint"])
    else:
        model = synthetic_rois_(create_model(spec["model"], in_channels=spec["input"][0],
                                             input_size=tuple(spec["input"][1:])), spec["seed"],
                                *ROI_PRESETS[spec.get("rois", "default")])
    g = torch.Generator().manual_seed(spec["seed"])
    x = torch.rand(spec["batch"], *spec["input"], generator=g)
    variant = spec["variant"]
    train = variant.startswith("train_")
    for _, layer in target_layers(model):
        layer.execution = "fast" if variant == "train_fast" else "dense"
    if variant in ("dense", "train_dense"):
        model = dense_baseline(model)
    if variant == "frozen":
        model = freeze(model, x, measure=False, **spec.get("freeze_options", {}))
    model.train(train)
    if variant == "train_fast":
        from tkn.training.fusion import fused_training_view

        model, _ = fused_training_view(model)

    def run() -> None:
        if train:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), torch.zeros(x.shape[0], dtype=torch.long)).backward()
        else:
            with torch.no_grad():
                model(x)

    run()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory(spec: dict[str, Any], timeout: float = 300.0) -> float | None:
    """Peak extra resident memory (MiB) of one pass of ``spec["variant"]``, measured in a subprocess (see module doc)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    code = "import json,sys; from tkn.benchmark import memory_child; memory_child(json.loads(sys.argv[1]))"
    try:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=timeout, check=True)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
    except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError):
        return None


def write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """Write a benchmark script's result rows to the JSON file ``path``, with the :func:`conditions` they were
    measured under (atomically: an interrupted write leaves the old file)."""
    atomic_write_text(path, json.dumps({"conditions": conditions(), "rows": rows}, indent=1))


def conditions() -> dict[str, Any]:
    """Machine and run conditions reported with every benchmark."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count(),
        "python": platform.python_version(), "load_average": load, "device": "cpu",
    }
