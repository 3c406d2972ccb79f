"""Reading the image files of the published data sets, and the one resize they need.

* PPM (binary ``P6``, 8 bit), as GTSRB ships, read as RGB, and PNG, as the
  Pain archive ships, converted to grey with Pillow's ``"L"`` mode (ITU-R 601-2
  luma: ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``): both decoded by
  Pillow (``pip install 'tkn[data]'``).
* :func:`resize_uint8`: bilinear with antialiasing
  (``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
  align_corners=False)``), rounded back to ``uint8``. It agrees with Pillow's
  ``Image.resize(..., Image.BILINEAR)`` to within one grey level.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["read_ppm", "read_png_grey", "resize_uint8"]


def _pillow():
    """``PIL.Image``, or an ``ImportError`` naming the extra that installs it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading image files needs Pillow: pip install 'tkn[data]'") from e
    return Image


def read_ppm(path: str | os.PathLike) -> np.ndarray:
    """Read a PPM file (binary ``P6`` as GTSRB ships, or plain ``P3``) as ``uint8 (height, width, 3)`` RGB.

    Pillow decodes it; a max value other than 255 is rescaled to 0..255.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a PPM file, a malformed header, or too few pixel bytes.
    """
    Image = _pillow()
    try:
        with Image.open(path) as im:
            if im.format != "PPM":
                raise ValueError(f"expected a PPM file, found {im.format or 'an unknown format'}")
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read as a PPM image: {e}") from e


def read_png_grey(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG or anything Pillow opens) as ``uint8 (height, width)`` grey."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as an image: {e}") from e


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 (H, W, C)`` to ``uint8 (size[0], size[1], C)``: antialiased bilinear, rounded.

    A constant image stays exactly constant.
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
