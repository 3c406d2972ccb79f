"""Resolution transfer: running a TKN at a resolution other than the one it was trained at.

The paper's section 5 ("Fully Convolutional TKNs") observes that every window
parameter (``m_y, m_x, s_y, s_x``) is relative to the height and width of the
map it acts on. The same learned parameters therefore define windows and ROIs
at any map size: ``F_att`` is simply sampled on the new grid, and ROIs are
recomputed as ``floor/ceil((m ± s/√2) · L)`` for the new ``L``. Two details
make this more than a resize:

* the lower clip of ``s`` (an ROI never narrower than the kernel) depends on
  the map length, so a tiny map can widen a window that a large map keeps;
* ROI borders are snapped to whole pixels at each size independently.

Two ways to use a model trained on ``S × S`` inputs on a larger image:

1. **Stretch** (:func:`attention_at`, ``tkn.freeze(..., input_size=...)``):
   feed the whole image; each window covers the same *fraction* of the new
   map. Right when the layout is the same at a different resolution (e.g. a
   tlMNIST model on 112×112 renderings of the same scenes).
2. **Slide** (:func:`score_map`): the paper's face-detector use. The model
   keeps seeing ``S × S`` windows and is evaluated at every position of a
   grid over the large image, giving one score vector per position. This is
   exact for any architecture (a dense head, an STN, a DenseNet), at the cost
   of recomputing overlapping crops; it is what "applying the classifier
   fully convolutionally" means for a model whose windows are tied to its
   input frame. (Running a global-average-pool DenseNet directly on the large
   image is *not* the same thing: its windows would stretch over the whole
   image, case 1.)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn.layers import TargetConv2d
from tkn.validate import int_pair, positive_int

__all__ = ["attention_at", "rois_at", "grid_positions", "score_map"]


def attention_at(layer: TargetConv2d, height: int, width: int) -> Tensor:
    """The windows ``F_att`` ``(C, height, width)`` a target layer applies on a ``height × width`` output map.

    This is exactly :meth:`TargetConv2d.attention`: the relative parameters,
    clipped for the new size, sampled on the new pixel centres. It exists to
    name the operation; see the module docstring.
    """
    if not isinstance(layer, TargetConv2d):
        raise TypeError(f"layer must be a tkn.TargetConv2d, got {type(layer).__name__}")
    return layer.attention(positive_int("height", height), positive_int("width", width))


def rois_at(layer: TargetConv2d, height: int, width: int) -> Tensor:
    """The integer ROIs ``(C, 4)`` (``y0, y1, x0, x1``) of a target layer on a ``height × width`` output map."""
    if not isinstance(layer, TargetConv2d):
        raise TypeError(f"layer must be a tkn.TargetConv2d, got {type(layer).__name__}")
    return layer.rois(positive_int("height", height), positive_int("width", width))


def grid_positions(image_size: Sequence[int], window_size, stride) -> tuple[Tensor, Tensor]:
    """Top-left corners ``(ys, xs)`` of the windows :func:`score_map` evaluates (row and column offsets)."""
    h, w = int_pair("image_size", tuple(image_size))
    wh, ww = int_pair("window_size", window_size)
    sy, sx = int_pair("stride", stride)
    if wh > h or ww > w:
        raise ValueError(f"window_size {(wh, ww)} is larger than the image {(h, w)}")
    return torch.arange(0, h - wh + 1, sy), torch.arange(0, w - ww + 1, sx)


@torch.no_grad()
def score_map(
    model: nn.Module,
    image: Tensor,
    window_size,
    stride=None,
    *,
    batch_size: int = 256,
) -> Tensor:
    """Evaluate a classifier trained on ``window_size`` crops at every grid position of a larger image.

    Args:
        model: maps ``(N, C, wh, ww)`` to ``(N, K)`` (logits or any per-crop
            output); a frozen model planned at ``window_size`` works too. It is
            run in ``eval()`` mode and its mode is restored afterwards.
        image: ``(C, H, W)`` or ``(1, C, H, W)``.
        window_size: ``S`` or ``(wh, ww)``: the input size the model was trained on.
        stride: step between windows, int or pair; default ``window_size // 4``
            (at least 1).
        batch_size: crops per forward pass.

    Returns:
        ``(K, ny, nx)``: ``out[:, i, j] = model(image[..., ys[i]:ys[i]+wh, xs[j]:xs[j]+ww])``
        with ``ys, xs`` from :func:`grid_positions`. Crops are gathered with
        ``F.unfold`` and evaluated in batches.

    Example:
        >>> net = nn.Sequential(TargetConv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> score_map(net, torch.rand(1, 20, 30), 8, stride=4).shape
        torch.Size([2, 4, 6])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
        raise ValueError(
            f"image must be a (C, H, W) or (1, C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}"
        )
    if not image.is_floating_point():
        raise TypeError(f"image must be floating point, got {image.dtype}")
    positive_int("batch_size", batch_size)
    x = image if image.dim() == 4 else image[None]
    wh, ww = int_pair("window_size", window_size)
    stride = int_pair("stride", stride if stride is not None else (max(1, wh // 4), max(1, ww // 4)))
    ys, xs = grid_positions(x.shape[-2:], (wh, ww), stride)
    c = x.shape[1]
    cols = F.unfold(x, (wh, ww), stride=stride)  # (1, C*wh*ww, ny*nx), row-major over positions
    crops = cols[0].transpose(0, 1).reshape(-1, c, wh, ww)
    was_training = model.training
    model.eval()
    try:
        outs = [model(crops[i:i + batch_size]) for i in range(0, crops.shape[0], batch_size)]
    finally:
        model.train(was_training)
    out = torch.cat(outs)
    if out.dim() != 2:
        raise ValueError(f"model must return (N, K) per crop, got an output of shape {tuple(out.shape)}")
    return out.T.reshape(out.shape[1], len(ys), len(xs))
