"""Model-level conversions: ``targetize`` any CNN, ``freeze`` a TKN for inference, ``scale_penalty``."""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from tkn import functional as TF
from tkn.layers import TargetConv2d
from tkn.validate import positive_number

__all__ = ["targetize", "scale_penalty", "target_layers", "clip_parameters_"]


def target_layers(model: nn.Module) -> list[tuple[str, TargetConv2d]]:
    """``(name, layer)`` of every :class:`TargetConv2d` in ``model``, in module order (each once)."""
    seen: set[int] = set()
    out = []
    for name, module in model.named_modules():
        if isinstance(module, TargetConv2d) and id(module) not in seen:
            seen.add(id(module))
            out.append((name, module))
    return out


def _from_conv(conv: nn.Conv2d, window: str, l2: float, min_roi: int | None) -> TargetConv2d:
    layer = TargetConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size,
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
        bias=conv.bias is not None, window=window, l2=l2, min_roi=min_roi, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
    layer.weight.requires_grad_(conv.weight.requires_grad)
    layer.train(conv.training)
    return layer


def targetize(
    model: nn.Module,
    window: str = "cauchy",
    l2: float = 0.0,
    include: Callable[[str, nn.Module], bool] | None = None,
    min_roi: int | None = None,
) -> nn.Module:
    """A copy of ``model`` whose ``nn.Conv2d`` layers are :class:`TargetConv2d` with the same weights.

    Args:
        model: any ``nn.Module``; it is not modified.
        window: window of the new layers (``"cauchy"`` or ``"gaussian"``).
        l2: each new layer's scale-penalty weight.
        include: optional ``include(qualified_name, conv) -> bool``; only
            convolutions for which it returns true are replaced.
        min_roi: the new layers' minimum ROI width in output pixels (``None``:
            each kernel's extent; see :class:`TargetConv2d`).

    Only modules of type exactly ``nn.Conv2d`` are replaced: subclasses may
    override ``forward`` with something a target layer would not reproduce.
    The converted model computes exactly what the source does at
    initialisation up to the windows (``m = 0.5, s = 1``), whose ROIs cover
    every map. Convolutions shared between several places stay shared.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        >>> type(targetize(net)[0]).__name__
        'TargetConv2d'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    TF.check_window(window)
    if include is not None and not callable(include):
        raise TypeError(f"include must be a callable (name, module) -> bool, got {type(include).__name__}")
    positive_number("l2", l2, allow_zero=True)
    TF.check_min_roi(min_roi)
    new = copy.deepcopy(model)
    if type(new) is nn.Conv2d:
        if include is None or include("", new):
            return _from_conv(new, window, l2, min_roi)
        return new
    replaced: dict[int, TargetConv2d] = {}
    for name, module in list(new.named_modules(remove_duplicate=False)):
        # ``_modules`` rather than ``named_children()``: the latter hides repeated children.
        for child_name, child in list(module._modules.items()):
            if type(child) is not nn.Conv2d:
                continue
            qualified = f"{name}.{child_name}" if name else child_name
            if id(child) not in replaced:
                if include is not None and not include(qualified, child):
                    continue
                replaced[id(child)] = _from_conv(child, window, l2, min_roi)
            setattr(module, child_name, replaced[id(child)])
    return new


def scale_penalty(model: nn.Module) -> Tensor:
    """The paper's L2 penalty on the scales: ``Σ layer.l2 * (layer.s ** 2).sum()`` over target layers.

    Uses the raw ``s`` parameters. Returns a scalar tensor (0 when the model
    has no target layer).
    """
    terms = [layer.l2 * (layer.s ** 2).sum() for _, layer in target_layers(model) if layer.l2]
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device, dtype=None if p is None else p.dtype)
    return torch.stack(terms).sum()


@torch.no_grad()
def clip_parameters_(model: nn.Module) -> None:
    """Project raw window parameters in place: ``m`` into ``[0, 1]``, ``s`` into ``(0, SCALE_MAX]``.

    The forward pass clips anyway; this keeps the raw values where the clip
    passes gradients (the training loop calls it after every optimiser step,
    like the constraint of the original Keras code). The size-dependent lower
    bound of ``s`` is left to the forward pass.
    """
    for module in model.modules():
        m, s = getattr(module, "m", None), getattr(module, "s", None)
        if isinstance(m, nn.Parameter) and isinstance(s, nn.Parameter):
            m.clamp_(0.0, 1.0)
            s.clamp_(torch.finfo(s.dtype).tiny, TF.SCALE_MAX)
