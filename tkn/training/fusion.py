"""A training view of a TKN whose target layers compute their ReLU and max-pool per ROI block.

With ``execution="fast"`` a target layer convolves only its ROI blocks, but the
ReLU and max-pool after it still run, forward and backward, over the
full-size map that is mostly zeros; on TKN6 (batch 64, 56×56) that was about a
third of a training step. :func:`fused_training_view` returns a *view* of the
model in which each target layer followed by a ReLU (and a max-pool that tiles
the map) is one :class:`FusedTargetBlock` that applies the ReLU and the pool
to each block's output (:func:`tkn.ops.fast_conv.fast_target_conv2d` with
``relu``/``pool``) and assembles only the pooled map.

The runs are found by the analysis :func:`tkn.engine.freeze` uses
(:func:`tkn.engine.graph.analyse` on the model's :mod:`torch.fx` graph, without
batch norms: in training they normalise with the batch's statistics). A run is
fused where the ReLU and the pool are modules (``nn.ReLU``, ``nn.MaxPool2d``)
called once, each the only reader of the tensor before it: the view replaces
the target layer by the block and them by ``nn.Identity``. A model that
:mod:`torch.fx` cannot trace gets no fused run.

The view shares everything with the model: the same parameters, buffers and
leaf modules; only the containers on the path to a fused run are shallow
copies with their own child lists. The model itself is left untouched: its
``state_dict``, its MAC counts and its evaluation are those of the unfused
network, and the view computes the same function (same values and gradients;
only forward hooks registered on the fused ReLU and pool modules, or on the
target layer, do not run in the view). The training loop steps the view and
evaluates, counts and saves the model.
"""
from __future__ import annotations

import copy

from torch import Tensor, nn

from tkn.engine.graph import analyse
from tkn.layers import TargetConv2d

__all__ = ["FusedTargetBlock", "fused_training_view", "fusable_pool"]


def fusable_pool(module: nn.Module) -> int | None:
    """The window of a max-pool that tiles its input exactly (kernel = stride, no padding, dilation, ceil
    mode or indices), or ``None`` for anything else."""
    if not isinstance(module, nn.MaxPool2d):
        return None
    k, s = module.kernel_size, module.stride if module.stride is not None else module.kernel_size
    k = k if isinstance(k, int) else (k[0] if k[0] == k[1] else None)
    s = s if isinstance(s, int) else (s[0] if s[0] == s[1] else None)
    exact = (k is not None and k == s and module.padding in (0, (0, 0)) and module.dilation in (1, (1, 1))
             and not module.ceil_mode and not module.return_indices)
    return int(k) if exact else None


class FusedTargetBlock(nn.Module):
    """``max_pool2d(relu(layer(x)), pool)``, computed per ROI block when ``layer`` runs the fast path.

    Args:
        layer: the target layer (shared with the model, not copied).
        pool: the max-pool window (kernel = stride), 1 for a ReLU alone.

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, H_out // pool, W_out // pool)``
    """

    def __init__(self, layer: TargetConv2d, pool: int = 1) -> None:
        super().__init__()
        self.layer = layer
        self.pool = int(pool)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.forward_relu_pool(x, self.pool)

    def extra_repr(self) -> str:
        return f"relu, pool={self.pool}"


def _fusions(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: replacement}``: a :class:`FusedTargetBlock` for each target layer whose epilogue in the
    graph analysis is a ReLU module (and a pool module) called once, ``nn.Identity`` for those modules."""
    analysis = analyse(model, fuse=True, batch_norm=False)
    if analysis is None:
        return {}
    found: dict[str, nn.Module] = {}
    for name, epi in analysis.epilogues.items():
        if (not epi.relu or epi.batch_norm is not None or len(epi.modules) != len(epi.nodes)
                or any(analysis.calls.get(m) != 1 for m in epi.modules)):
            continue
        found[name] = FusedTargetBlock(model.get_submodule(name), epi.pool)
        found.update((m, nn.Identity()) for m in epi.modules)
    return found


def _view(module: nn.Module, replacements: dict[str, nn.Module], prefix: str = "") -> nn.Module:
    """``module`` itself when nothing below it is replaced; otherwise a shallow copy with its own child dict."""
    if prefix.rstrip(".") in replacements:
        return replacements[prefix.rstrip(".")]
    if not any(r.startswith(prefix) for r in replacements):
        return module
    view = copy.copy(module)
    view._modules = {name: None if child is None else _view(child, replacements, f"{prefix}{name}.")
                     for name, child in module._modules.items()}
    return view


def fused_training_view(model: nn.Module) -> tuple[nn.Module, int]:
    """A view of ``model`` (sharing its parameters) with target layer + ReLU (+ pool) runs fused; and how many.

    The runs are those the graph analysis finds (see the module documentation).

    Returns ``(model, 0)`` itself when there is nothing to fuse.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(TargetConv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        >>> view, fused = fused_training_view(net)
        >>> fused, view[0].pool, type(net[1]).__name__
        (1, 2, 'ReLU')
        >>> x = torch.randn(2, 1, 8, 8)
        >>> bool(torch.equal(view(x), net(x)))
        True
    """
    replacements = _fusions(model)
    if not replacements:
        return model, 0
    view = _view(model, replacements)
    return view, sum(isinstance(m, FusedTargetBlock) for m in view.modules())
