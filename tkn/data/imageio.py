"""Reading the image files of the published data sets, and the one resize they need.

* PPM (binary ``P6``, 8 bit), as GTSRB ships: read here with NumPy, no PIL.
* PNG, as the Pain archive ships: read with Pillow (``pip install 'tkn[data]'``),
  converted to grey with Pillow's ``"L"`` mode (ITU-R 601-2 luma:
  ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``).
* :func:`resize_uint8`: bilinear with antialiasing
  (``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
  align_corners=False)``), rounded back to ``uint8``. It agrees with Pillow's
  ``Image.resize(..., Image.BILINEAR)`` to within one grey level.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["read_ppm", "read_png_grey", "resize_uint8"]

_WHITESPACE = b" \t\r\n\x0b\x0c"


def _header_tokens(data: bytes, count: int) -> tuple[list[bytes], int]:
    """The first ``count`` whitespace-separated header tokens (``#`` comments skipped) and the offset after them."""
    tokens: list[bytes] = []
    i = 0
    while len(tokens) < count:
        while i < len(data) and data[i] in _WHITESPACE:
            i += 1
        if i < len(data) and data[i] == ord("#"):
            while i < len(data) and data[i] not in b"\r\n":
                i += 1
            continue
        start = i
        while i < len(data) and data[i] not in _WHITESPACE and data[i] != ord("#"):
            i += 1
        if start == i:
            raise ValueError("truncated header")
        tokens.append(data[start:i])
    return tokens, i + 1


def read_ppm(path: str | os.PathLike) -> np.ndarray:
    """Read a binary 8-bit PPM (``P6``) file.

    Returns:
        ``uint8`` array ``(height, width, 3)``.

    Raises:
        ValueError: not a P6 file, a max value other than 1..255, or too few pixel bytes.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] != b"P6":
        raise ValueError(f"{path}: expected a binary PPM file (magic 'P6'), found {data[:2]!r}")
    try:
        (magic, w, h, maxval), offset = _header_tokens(data, 4)
        width, height, maxv = int(w), int(h), int(maxval)
    except ValueError as e:
        raise ValueError(f"{path}: malformed PPM header ({e})") from e
    if not 0 < maxv < 256 or width <= 0 or height <= 0:
        raise ValueError(f"{path}: expected an 8-bit PPM with positive size, got {width}x{height}, max value {maxv}")
    need = width * height * 3
    body = data[offset : offset + need]
    if len(body) != need:
        raise ValueError(f"{path}: PPM header declares {width}x{height} RGB ({need} bytes) but {len(body)} follow")
    image = np.frombuffer(body, dtype=np.uint8).reshape(height, width, 3).copy()
    if maxv != 255:
        image = np.round(image.astype(np.float64) * (255.0 / maxv)).astype(np.uint8)
    return image


def read_png_grey(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG or anything Pillow opens) as ``uint8 (height, width)`` grey."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading PNG frames needs Pillow: pip install 'tkn[data]'") from e
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as an image: {e}") from e


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 (H, W, C)`` to ``uint8 (size[0], size[1], C)``: antialiased bilinear, rounded.

    A constant image stays exactly constant.
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
