"""The in-memory data set that every array-backed loader returns.

Images are kept as one ``uint8`` tensor ``(N, C, H, W)`` and converted to
``float32`` in ``[0, 1]`` one item at a time, so 60,000 MNIST digits cost
47 MB, not 188 MB, and a ``DataLoader`` with workers shares one buffer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["TensorImageDataset"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class TensorImageDataset(Dataset):
    """``(image, label)`` pairs backed by a ``uint8`` image tensor and integer labels.

    Args:
        images: ``uint8`` array or tensor of shape ``(N, C, H, W)``.
        labels: integer array or tensor of shape ``(N,)``.
        name: the data set's registry name (shown in ``repr``).
        split: the split these items come from.
        transform: optional callable applied to the float image of each item
            (after scaling to ``[0, 1]``).

    Shape:
        ``dataset[i]`` is ``(image, label)`` with ``image`` a ``float32``
        tensor ``(C, H, W)`` in ``[0, 1]`` and ``label`` a Python ``int``.

    Attributes:
        images: the ``uint8`` tensor ``(N, C, H, W)`` (for whole-set evaluation:
            ``dataset.images.float() / 255``). It may share memory with the
            per-process cache of decoded files: do not modify it in place.
        targets: the ``int64`` label tensor ``(N,)``.

    Example:
        >>> ds = TensorImageDataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([3, 7]))
        >>> x, y = ds[1]
        >>> x.shape, x.dtype, y
        (torch.Size([1, 4, 4]), torch.float32, 7)
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        name: str = "",
        split: str = "",
        transform: Transform | None = None,
    ) -> None:
        images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images: expected a uint8 array of shape (N, C, H, W), got {images.dtype} "
                f"of shape {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels: expected shape ({images.shape[0]},) to match the images, got {tuple(labels.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError(f"{name or 'data set'} ({split or 'split'}): no items")
        self.images = images.contiguous()
        self.targets = labels.to(torch.int64).contiguous()
        self.name = name
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, shape=({c}, {h}, {w}))"
