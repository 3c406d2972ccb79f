"""GTSRB (German Traffic Sign Recognition Benchmark), official "Final" layout.

Expected in ``root`` (or in ``root/GTSRB``, the folder the official zips unpack to)::

    Final_Training/Images/<class, 5 digits>/GT-<class>.csv   + the class's .ppm files
    Final_Test/Images/GT-final_test.csv                       + the test .ppm files

Every CSV is semicolon-separated with the header
``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``. The ROI corners
are inclusive pixel indices (0-based), so the crop is rows ``Y1..Y2`` and
columns ``X1..X2``. ``GT-final_test.csv`` (with ``ClassId``) comes in the
separate ground-truth download ``GTSRB_Final_Test_GT.zip``; the test-image zip
only has ``GT-final_test.test.csv``, which has no labels. It is also looked for
in ``root`` and ``root/Final_Test``.

Preprocessing (paper section 4.1): crop the ROI, resize it to 32x32 with
antialiased bilinear interpolation (:func:`tkn.data.imageio.resize_uint8`,
PyTorch's ``interpolate``, not PIL), pixel scaling to ``[0, 1]`` at access.
Decoded sets are cached in memory and on disk (:mod:`tkn.data.cache`), keyed
by the folder and a hash of its CSV files.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from tkn.data.cache import cached_npz
from tkn.data.imageio import read_ppm, resize_uint8
from tkn.data.layout import require_file, require_root

__all__ = ["GTSRB_COLUMNS", "GTSRB_NUM_CLASSES", "gtsrb_arrays", "read_gtsrb_csv"]

GTSRB_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
GTSRB_NUM_CLASSES = 43
_SIZE = 32
_EXPECTED = "Final_Training/Images/<class>/GT-<class>.csv and Final_Test/Images/GT-final_test.csv with their .ppm files"


def read_gtsrb_csv(path: Path) -> list[dict[str, str | int]]:
    """Rows of one GTSRB annotation CSV, with the integer columns converted.

    Raises:
        ValueError: a missing column, a non-integer value, or no rows.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=";")
        missing = [c for c in GTSRB_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"gtsrb: {path}: expected the semicolon-separated columns {';'.join(GTSRB_COLUMNS)}, "
                f"missing {missing} (found {reader.fieldnames})"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                parsed: dict[str, str | int] = {c: int(row[c]) for c in GTSRB_COLUMNS[1:]}
            except (TypeError, ValueError) as e:
                raise ValueError(f"gtsrb: {path}, line {line}: expected integer fields, got {row}") from e
            parsed["Filename"] = row["Filename"]
            rows.append(parsed)
    if not rows:
        raise ValueError(f"gtsrb: {path} lists no images")
    return rows


def _crop_resize(folder: Path, row: dict[str, str | int], csv_path: Path) -> np.ndarray:
    path = folder / str(row["Filename"])
    require_file(path, "gtsrb", f"the image listed in {csv_path.name}")
    image = read_ppm(path)
    h, w = image.shape[:2]
    if (w, h) != (row["Width"], row["Height"]):
        raise ValueError(f"gtsrb: {path} is {w}x{h} but {csv_path.name} says {row['Width']}x{row['Height']}")
    x1, y1, x2, y2 = (int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
    if not (0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h):
        raise ValueError(
            f"gtsrb: {csv_path.name}: ROI ({x1},{y1})-({x2},{y2}) of {path.name} lies outside its {w}x{h} image"
        )
    return resize_uint8(image[y1 : y2 + 1, x1 : x2 + 1], (_SIZE, _SIZE))


def _label(row: dict[str, str | int], csv_path: Path) -> int:
    label = int(row["ClassId"])
    if not 0 <= label < GTSRB_NUM_CLASSES:
        raise ValueError(
            f"gtsrb: {csv_path}: ClassId {label} of {row['Filename']} is outside 0..{GTSRB_NUM_CLASSES - 1}"
        )
    return label


def _annotation_files(base: Path, split: str) -> list[tuple[Path, Path]]:
    """``(csv, image folder)`` pairs of a split."""
    if split == "train":
        images = base / "Final_Training" / "Images"
        if not images.is_dir():
            raise FileNotFoundError(f"gtsrb: expected the training folder {images} ({_EXPECTED})")
        classes = sorted(p for p in images.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"gtsrb: {images} holds no class folders (expected 00000 ... 00042)")
        return [(require_file(c / f"GT-{c.name}.csv", "gtsrb", f"the annotations of class {c.name}"), c)
                for c in classes]
    images = base / "Final_Test" / "Images"
    if not images.is_dir():
        raise FileNotFoundError(f"gtsrb: expected the test folder {images} ({_EXPECTED})")
    for candidate in (images, base / "Final_Test", base):
        if (candidate / "GT-final_test.csv").is_file():
            return [(candidate / "GT-final_test.csv", images)]
    hint = " (GT-final_test.test.csv has no labels)" if (images / "GT-final_test.test.csv").is_file() else ""
    raise FileNotFoundError(
        f"gtsrb: expected the test labels GT-final_test.csv in {images}{hint}; "
        "it is in the official download GTSRB_Final_Test_GT.zip"
    )


def _build(files: list[tuple[Path, Path]]) -> dict[str, np.ndarray]:
    images, labels = [], []
    for csv_path, folder in files:
        for row in read_gtsrb_csv(csv_path):
            images.append(_crop_resize(folder, row, csv_path))
            labels.append(_label(row, csv_path))
    return {"images": np.stack(images).transpose(0, 3, 1, 2).copy(), "labels": np.asarray(labels, dtype=np.int64)}


@functools.lru_cache(maxsize=2)
def _gtsrb_cached(base: str, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    files = _annotation_files(Path(base), split)
    arrays = cached_npz(f"gtsrb-{split}-{key}.npz", ("images", "labels"), lambda: _build(files))
    return arrays["images"], arrays["labels"]


def gtsrb_arrays(root: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..42)`` of one GTSRB split.

    Args:
        root: folder with the official layout (see the module docstring).
        split: ``"train"`` (39,209 images officially) or ``"test"`` (12,630).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test' for gtsrb, got {split!r}")
    base = require_root(root, "gtsrb", _EXPECTED).resolve()
    if not (base / "Final_Training").is_dir() and not (base / "Final_Test").is_dir() and (base / "GTSRB").is_dir():
        base = base / "GTSRB"
    files = _annotation_files(base, split)
    h = hashlib.sha256(str(base).encode())
    for csv_path, _ in files:
        h.update(str(csv_path).encode())
        h.update(csv_path.read_bytes())
    return _gtsrb_cached(str(base), split, h.hexdigest()[:16])
