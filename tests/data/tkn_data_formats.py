"""Writers for the published file formats, used by the tkn.data tests to build miniature data sets.

Written from the format descriptions (IDX: LeCun's MNIST page; PPM: netpbm;
GTSRB: its readme; SVHN: its web page; Pain archive: its distribution layout),
independently of the readers in ``tkn.data``.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """IDX file of unsigned bytes: magic 0x00000800 | ndim, big-endian dims, then the data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist(root: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    prefix = "train" if split == "train" else "t10k"
    write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)


def write_ppm(path: Path, rgb: np.ndarray, comment: bool = False) -> None:
    """Binary PPM (P6, max value 255) of an ``(H, W, 3)`` uint8 array."""
    h, w, _ = rgb.shape
    head = b"P6\n" + (b"# written by the tkn tests\n" if comment else b"") + f"{w} {h}\n255\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())


GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def write_gtsrb_csv(path: Path, rows: list[tuple]) -> None:
    """Semicolon-separated annotation file: rows of (filename, w, h, x1, y1, x2, y2, class)."""
    lines = [GTSRB_HEADER] + [";".join(str(v) for v in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_png(path: Path, pixels: np.ndarray) -> None:
    """PNG of an ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(path)


def write_pain_frame(root: Path, subject: str, sequence: str, frame: str, pixels: np.ndarray,
                     landmarks: np.ndarray, pspi: float) -> None:
    """One frame of the UNBC-McMaster layout: PNG, ``_aam.txt`` (66 lines "x y"), PSPI ``_facs.txt``."""
    write_png(root / "Images" / subject / sequence / f"{frame}.png", pixels)
    aam = root / "AAM_landmarks" / subject / sequence / f"{frame}_aam.txt"
    aam.parent.mkdir(parents=True, exist_ok=True)
    aam.write_text("".join(f"   {x:.7e}   {y:.7e}\n" for x, y in landmarks))
    label = root / "Frame_Labels" / "PSPI" / subject / sequence / f"{frame}_facs.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(f"   {pspi:.7e}\n")
