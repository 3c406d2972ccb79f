"""What every network of the paper shares: argument checks, the β build-up, layers and initialisation.

Every model built by :func:`tkn.models.create_model` is a :class:`PaperModel`:

* ``forward_features(x)`` returns the last spatial feature map ``(N, C, h, w)``
  (before any flattening or pooling), ``forward_head(features)`` turns it into
  outputs ``(N, num_classes)``, and ``forward(x)`` is their composition;
* input checks that raise clear errors on real inputs and let :mod:`torch.fx` trace the model
  (:func:`traced`): every registered model traces with :func:`torch.fx.symbolic_trace`;
* attributes ``num_classes``, ``in_channels`` and ``input_size`` (``(H, W)``,
  the size the model was built for and the default of :func:`tkn.flops.count`);
* ``spec``: ``{"name": ..., "kwargs": {...}}``, the fully resolved arguments that
  rebuild it with ``create_model(spec["name"], **spec["kwargs"])`` (set by the
  registry).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx, nn

from tkn.layers import TargetConv2d

__all__ = ["PaperModel", "conv", "block_l2", "he_init_", "traced"]


def traced(x: Any) -> bool:
    """Whether ``x`` is a :mod:`torch.fx` proxy: the model is being traced and there are no values to check.

    The models' checks on their inputs and features are skipped then, so that every model traces
    (:func:`torch.fx.symbolic_trace`); the graph has no check, the model itself keeps them.
    """
    return isinstance(x, fx.Proxy)


def block_l2(l2: float, beta: float, block: int) -> float:
    """The paper's β build-up: a target layer of Convolution block ``block`` (0, 1, 2) gets ``l2 * beta**block``."""
    return l2 * beta**block


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    targeted: bool = False,
    window: str = "cauchy",
    l2: float = 0.0,
    min_roi: int | None = None,
) -> nn.Module:
    """A same-padded, bias-free convolution: ``nn.Conv2d`` or, if ``targeted``, a :class:`TargetConv2d`."""
    if targeted:
        return TargetConv2d(in_channels, out_channels, kernel_size, padding="same", bias=False, window=window, l2=l2,
                            min_roi=min_roi)
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", bias=False)


@torch.no_grad()
def he_init_(module: nn.Module) -> None:
    """He (fan-in, ReLU) normal initialisation of every conv and linear weight; zero biases; BN to (1, 0).

    Target layers initialise themselves the same way (and their windows to
    ``m = 0.5, s = 1``) in ``reset_parameters``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, TargetConv2d):
            m.reset_parameters()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


class PaperModel(nn.Module):
    """Base class of the paper's networks: ``forward(x) = forward_head(forward_features(x))``.

    Subclasses implement :meth:`forward_features` and :meth:`forward_head`.

    Args:
        num_classes: outputs of the last layer.
        in_channels: channels of the input images.
        input_size: ``(H, W)`` the model is built for.
    """

    spec: dict[str, Any]

    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = tuple(input_size)

    def check_input(self, x: Any) -> None:
        """Raise a clear error unless ``x`` is a float tensor ``(N, in_channels, H, W)``; nothing when
        :func:`traced`."""
        if traced(x):
            return
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor (N, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"input must have rank 4 (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels but the model expects in_channels={self.in_channels}")
        if not x.is_floating_point():
            raise TypeError(f"input must be floating point, got {x.dtype}")

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
