"""SVHN (cropped digits): ``{train,test,extra}_32x32.mat`` from ``root``.

Each file holds ``X`` of shape ``(32, 32, 3, N)`` ``uint8`` and ``y`` of shape
``(N, 1)`` with labels 1..10, where 10 stands for the digit 0. The loader
returns ``(N, 3, 32, 32)`` images (pixel scaling only, as in the paper) and
labels 0..9.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from tkn.data.layout import require_file, require_root

__all__ = ["SVHN_FILES", "svhn_arrays"]

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError("svhn needs scipy to read .mat files: pip install 'tkn[data]'") from e
    try:
        return loadmat(path, variable_names=("X", "y"))
    except (ValueError, OSError, TypeError, NotImplementedError) as e:
        raise ValueError(f"svhn: {path} is not a readable MATLAB .mat file: {e}") from e


@functools.lru_cache(maxsize=2)
def _svhn_cached(path: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    mat = _loadmat(Path(path))
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"svhn: {path} must hold variables 'X' and 'y', found {found}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"svhn: {path}: expected X of shape (32, 32, 3, N), got {x.shape}")
    n = x.shape[3]
    if n == 0:
        raise ValueError(f"svhn: {path}: X holds no images")
    if y.shape not in ((n, 1), (n,)):
        raise ValueError(f"svhn: {path}: expected y of shape ({n}, 1) to match X, got {y.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() > 255:
            raise ValueError(f"svhn: {path}: expected uint8 pixels in X, got {x.dtype}")
        x = x.astype(np.uint8)
    y = np.asarray(y).reshape(n).astype(np.int64)
    if y.min() < 1 or y.max() > 10:
        raise ValueError(f"svhn: {path}: expected labels 1..10 in y (10 meaning 0), found {y.min()}..{y.max()}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, y % 10


def svhn_arrays(root: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..9)`` of one SVHN split.

    Args:
        root: folder holding ``train_32x32.mat``, ``test_32x32.mat`` (and
            ``extra_32x32.mat`` for ``split="extra"``).
        split: ``"train"``, ``"test"`` or ``"extra"``.

    Decoded once per process (cached by path, size and mtime).
    """
    if split not in SVHN_FILES:
        raise ValueError(f"split: expected one of {sorted(SVHN_FILES)} for svhn, got {split!r}")
    folder = require_root(root, "svhn", "train_32x32.mat and test_32x32.mat")
    path = require_file(folder / SVHN_FILES[split], "svhn", f"the {split} split ({SVHN_FILES[split]})")
    st = path.stat()
    return _svhn_cached(str(path), (st.st_size, st.st_mtime_ns))
