"""Face alignment from landmarks: similarity fit, reference shape, warp.

Coordinates are ``(x, y)`` in pixel units with pixel centres at integer
positions (0-based; ``x`` to the right, ``y`` down), both in the source frame
and in the output crop, whose pixel ``(row i, column j)`` sits at ``(j, i)``.

The fit is the least-squares similarity (rotation, isotropic scale,
translation; no reflection) of Umeyama (1991), "Least-squares estimation of
transformation parameters between two point patterns", eq. 40-42.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LEFT_EYE",
    "RIGHT_EYE",
    "REFERENCE_FILL",
    "similarity_transform",
    "apply_affine",
    "procrustes_mean",
    "upright_reference",
    "warp_affine",
]

#: Landmark indices of the eye contours in the 66-point AAM mark-up of the
#: Pain archive (the 68-point iBUG/Multi-PIE order without the two inner mouth
#: corners; the eyes, 36..47, are numbered as in the 68-point scheme). "Left"
#: is the eye on the image's left.
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
#: Fraction of the crop side that the reference shape's larger bounding-box side fills.
REFERENCE_FILL = 0.8


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``A`` (2x3) with ``dst ≈ src @ A[:, :2].T + A[:, 2]`` (Umeyama).

    Args:
        src: ``(..., K, 2)`` points (a batch is allowed).
        dst: ``(K, 2)`` or ``(..., K, 2)`` target points.

    Returns:
        ``float64 (..., 2, 3)``: ``[s R | t]`` with ``R`` a proper rotation.

    Example:
        >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> A = similarity_transform(src, 2 * src + 3)
        >>> np.round(A, 6).tolist()
        [[2.0, 0.0, 3.0], [0.0, 2.0, 3.0]]
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape[-1] != 2 or src.ndim < 2 or src.shape[-2] < 2:
        raise ValueError(f"src: expected points of shape (..., K, 2) with K >= 2, got {src.shape}")
    if dst.shape[-2:] != src.shape[-2:]:
        raise ValueError(f"dst: expected {src.shape[-2:]} points to match src, got {dst.shape}")
    mu_s = src.mean(axis=-2, keepdims=True)
    mu_d = dst.mean(axis=-2, keepdims=True)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum(axis=(-2, -1)) / src.shape[-2]
    if np.any(var_s <= 0):
        raise ValueError("src: all points coincide; a similarity transform is undefined")
    cov = np.swapaxes(xd, -1, -2) @ xs / src.shape[-2]
    u, d, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sign = np.where(sign == 0, 1.0, sign)
    s_mat = np.zeros(cov.shape)
    s_mat[..., 0, 0] = 1.0
    s_mat[..., 1, 1] = sign
    rot = u @ s_mat @ vt
    scale = (d[..., 0] + sign * d[..., 1]) / var_s
    lin = scale[..., None, None] * rot
    t = mu_d[..., 0, :] - (lin @ mu_s[..., 0, :, None])[..., 0]
    return np.concatenate([lin, t[..., :, None]], axis=-1)


def apply_affine(A: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points @ A[:, :2].T + A[:, 2]`` for ``A`` (..., 2, 3) and points (..., K, 2)."""
    return points @ np.swapaxes(A[..., :2], -1, -2) + A[..., None, :, 2]


def _normalise(shapes: np.ndarray) -> np.ndarray:
    centred = shapes - shapes.mean(axis=-2, keepdims=True)
    return centred / np.sqrt((centred**2).sum(axis=(-2, -1), keepdims=True))


def procrustes_mean(shapes: np.ndarray, iterations: int = 50, tol: float = 1e-10) -> np.ndarray:
    """Generalised Procrustes mean of ``(M, K, 2)`` shapes: centred, unit Frobenius norm.

    Every shape is repeatedly aligned (similarity) to the current mean, which
    is then re-estimated and re-normalised; the first shape fixes the start.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    if shapes.ndim != 3 or shapes.shape[-1] != 2 or shapes.shape[0] == 0:
        raise ValueError(f"shapes: expected (M, K, 2) with M >= 1, got {shapes.shape}")
    shapes = _normalise(shapes)
    mean = shapes[0]
    for _ in range(iterations):
        aligned = apply_affine(similarity_transform(shapes, mean), shapes)
        new = _normalise(aligned.mean(axis=0))
        new = apply_affine(similarity_transform(new, mean), new)
        new = _normalise(new)
        done = np.abs(new - mean).max() < tol
        mean = new
        if done:
            break
    return mean


def upright_reference(mean_shape: np.ndarray, size: int = 48, fill: float = REFERENCE_FILL) -> np.ndarray:
    """Place a mean shape frontal and upright in a ``size`` x ``size`` crop.

    The shape is rotated so that the line from the left-eye centre to the
    right-eye centre (means of :data:`LEFT_EYE` and :data:`RIGHT_EYE`) points
    along +x, scaled so that the larger side of its bounding box is
    ``fill * size`` pixels, and translated so that the box is centred on the
    crop's centre ``((size - 1) / 2, (size - 1) / 2)``.

    Returns:
        ``float64 (K, 2)`` reference positions in crop pixel coordinates.
    """
    shape = np.asarray(mean_shape, dtype=np.float64)
    if shape.ndim != 2 or shape.shape[1] != 2 or shape.shape[0] <= max(RIGHT_EYE):
        raise ValueError(f"mean_shape: expected ({max(RIGHT_EYE) + 1} or more, 2) landmarks, got {shape.shape}")
    eye_vec = shape[list(RIGHT_EYE)].mean(0) - shape[list(LEFT_EYE)].mean(0)
    angle = np.arctan2(eye_vec[1], eye_vec[0])
    c, s = np.cos(-angle), np.sin(-angle)
    shape = shape @ np.array([[c, -s], [s, c]]).T
    lo, hi = shape.min(0), shape.max(0)
    scale = fill * size / (hi - lo).max()
    centre = (size - 1) / 2.0
    return (shape - (lo + hi) / 2) * scale + centre


def warp_affine(image: torch.Tensor, A: np.ndarray, size: int) -> torch.Tensor:
    """Sample ``image`` so that source point ``p`` lands on output point ``A @ [p, 1]``.

    Args:
        image: ``(H, W)`` tensor (any real dtype) of the source frame.
        A: ``(2, 3)`` affine map from source to output coordinates (invertible).
        size: output side length.

    Returns:
        ``float32 (size, size)``: bilinear samples, zero outside the source frame.
    """
    A = np.asarray(A, dtype=np.float64)
    lin = A[:, :2]
    if abs(np.linalg.det(lin)) < 1e-12:
        raise ValueError("A: expected an invertible affine map")
    inv = np.linalg.inv(lin)
    h, w = image.shape
    jj, ii = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    out_pts = np.stack([jj, ii], axis=-1) - A[:, 2]
    src = out_pts @ inv.T
    grid = np.empty_like(src)
    grid[..., 0] = 2.0 * src[..., 0] / max(w - 1, 1) - 1.0
    grid[..., 1] = 2.0 * src[..., 1] / max(h - 1, 1) - 1.0
    g = torch.from_numpy(grid).to(torch.float32)[None]
    x = image.to(torch.float32)[None, None]
    return F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
