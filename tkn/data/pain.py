"""UNBC-McMaster Shoulder Pain Expression Archive: PSPI regression on aligned 48x48 faces.

Expected in ``root`` (the archive's distribution layout; subject folders such
as ``042-ll042``, sequence folders such as ``ll042t1aaaff``)::

    Images/<subject>/<sequence>/<frame>.png                       e.g. ll042t1aaaff001.png
    AAM_landmarks/<subject>/<sequence>/<frame>_aam.txt            66 lines "x y"
    Frame_Labels/PSPI/<subject>/<sequence>/<frame>_facs.txt       one number, 0..16

Every frame under ``Images`` must have both annotation files.

Split (paper section 4.1): by subject. The sorted subject folder names are
shuffled by ``numpy.random.default_rng(seed).choice(subjects, holdout,
replace=False)``; those ``holdout`` (default 7 of the 25) subjects form
``test`` (alias ``val``), all others ``train``. ``test_subjects=[...]`` names
them explicitly instead.

Preprocessing: the frame is read as grey (Pillow ``"L"``). The reference
shape is the generalised Procrustes mean of all *training* frames' landmarks,
made upright and placed in the 48x48 crop by
:func:`tkn.data.face.upright_reference` (eye line horizontal, larger bounding
box side 80% of the crop, box centred). For each item, the least-squares
similarity from its 66 landmarks to the reference (Umeyama) warps the frame
into the crop (bilinear, zeros outside the frame); pixel values in ``[0, 1]``.
The target is the frame's PSPI as a ``float32`` scalar tensor.

Augmentation (``augment=True``, the default for training in the paper): i.i.d.
Gaussian noise of standard deviation ``landmark_noise`` (default 1.5 source
pixels) on every landmark coordinate before the fit, then a horizontal flip of
the crop with probability ``flip_prob`` (0.5). Randomness comes from
``torch``'s global generator, so ``torch.manual_seed`` and ``DataLoader``
worker seeding govern it.

Frames are decoded lazily in ``__getitem__`` (the full archive is ~3.7 GB as
grey pixels); landmarks and labels are read once, at construction.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tkn.data.face import procrustes_mean, similarity_transform, upright_reference, warp_affine
from tkn.data.imageio import read_png_grey
from tkn.data.layout import require_root

__all__ = [
    "PAIN_SIZE",
    "PAIN_HOLDOUT",
    "PAIN_LANDMARK_NOISE",
    "PainIndex",
    "pain_index",
    "read_landmarks",
    "read_pspi",
    "held_out_subjects",
    "PainDataset",
]

PAIN_SIZE = 48
#: Subjects held out for ``test``/``val`` (paper: 7 of 25).
PAIN_HOLDOUT = 7
#: Default standard deviation of the landmark noise, in source-frame pixels.
PAIN_LANDMARK_NOISE = 1.5
_NUM_LANDMARKS = 66
_EXPECTED = ("Images/<subject>/<sequence>/<frame>.png, AAM_landmarks/.../<frame>_aam.txt, "
             "Frame_Labels/PSPI/.../<frame>_facs.txt")


def read_landmarks(path: Path) -> np.ndarray:
    """``float64 (66, 2)`` landmarks ``(x, y)`` from one ``*_aam.txt`` file."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise FileNotFoundError(f"pain: expected the landmark file {path}, found no such file") from None
    except ValueError as e:
        raise ValueError(f"pain: {path}: expected {_NUM_LANDMARKS} lines 'x y' of numbers ({e})") from e
    if values.size != 2 * _NUM_LANDMARKS or not np.all(np.isfinite(values)):
        raise ValueError(
            f"pain: {path}: expected {_NUM_LANDMARKS} lines 'x y' of finite numbers, found {values.size} numbers"
        )
    return values.reshape(_NUM_LANDMARKS, 2)


def read_pspi(path: Path) -> float:
    """The PSPI score (0..16) in one ``Frame_Labels/PSPI/...*_facs.txt`` file."""
    try:
        tokens = path.read_text().split()
    except FileNotFoundError:
        raise FileNotFoundError(f"pain: expected the PSPI label file {path}, found no such file") from None
    try:
        if len(tokens) != 1:
            raise ValueError(f"{len(tokens)} values")
        value = float(tokens[0])
    except ValueError as e:
        raise ValueError(f"pain: {path}: expected one PSPI number in 0..16 ({e})") from e
    if not 0.0 <= value <= 16.0:
        raise ValueError(f"pain: {path}: expected a PSPI in 0..16, found {value}")
    return value


@dataclass(frozen=True)
class PainIndex:
    """Every annotated frame of an archive, in sorted path order.

    Attributes:
        frames: image paths.
        subjects: subject folder name of each frame.
        landmarks: ``float64 (M, 66, 2)``.
        pspi: ``float32 (M,)``.
    """

    frames: tuple[Path, ...]
    subjects: tuple[str, ...]
    landmarks: np.ndarray
    pspi: np.ndarray


def _scan(root: Path) -> PainIndex:
    images = root / "Images"
    if not images.is_dir():
        raise FileNotFoundError(f"pain: expected the folder {images} ({_EXPECTED})")
    frames = sorted(images.glob("*/*/*.png"))
    if not frames:
        raise FileNotFoundError(f"pain: found no frames matching {images}/<subject>/<sequence>/<frame>.png")
    landmarks, pspi, subjects = [], [], []
    for frame in frames:
        rel = frame.relative_to(images)
        subject, sequence, stem = rel.parts[0], rel.parts[1], frame.stem
        landmarks.append(read_landmarks(root / "AAM_landmarks" / subject / sequence / f"{stem}_aam.txt"))
        pspi.append(read_pspi(root / "Frame_Labels" / "PSPI" / subject / sequence / f"{stem}_facs.txt"))
        subjects.append(subject)
    return PainIndex(tuple(frames), tuple(subjects), np.stack(landmarks), np.asarray(pspi, dtype=np.float32))


@functools.lru_cache(maxsize=2)
def _scan_cached(root: str, stamp: int) -> PainIndex:
    return _scan(Path(root))


def pain_index(root: str | os.PathLike | None) -> PainIndex:
    """Scan an archive folder (cached per process by path and folder mtime)."""
    base = require_root(root, "pain", _EXPECTED).resolve()
    images = base / "Images"
    stamp = images.stat().st_mtime_ns if images.is_dir() else 0
    return _scan_cached(str(base), stamp)


def held_out_subjects(subjects: Sequence[str], seed: int = 0, holdout: int = PAIN_HOLDOUT) -> list[str]:
    """The sorted subjects of the test split: ``default_rng(seed).choice(sorted(set(subjects)), holdout)``."""
    names = sorted(set(subjects))
    if not isinstance(holdout, int) or not 0 < holdout < len(names):
        raise ValueError(
            f"holdout: expected an integer in 1..{len(names) - 1} (the archive has {len(names)} subjects), "
            f"got {holdout!r}"
        )
    rng = np.random.default_rng(seed)
    return sorted(str(s) for s in rng.choice(names, size=holdout, replace=False))


class PainDataset(Dataset):
    """Aligned 48x48 grey faces and their PSPI scores (see the module docstring).

    Args:
        index: the scanned archive (:func:`pain_index`).
        split: ``"train"``, ``"test"`` or ``"val"`` (same as ``"test"``).
        seed: seed of the subject hold-out.
        holdout: number of held-out subjects.
        test_subjects: explicit held-out subjects (overrides ``seed``/``holdout``).
        augment: landmark noise and horizontal flips.
        landmark_noise: noise standard deviation in source pixels.
        flip_prob: probability of a horizontal flip.
        reference: ``(66, 2)`` reference landmarks in crop coordinates
            (default: derived from the training frames).

    Shape:
        ``dataset[i]`` is ``(image float32 (1, 48, 48) in [0, 1], pspi float32 ())``.
    """

    def __init__(
        self,
        index: PainIndex,
        split: str,
        *,
        seed: int = 0,
        holdout: int = PAIN_HOLDOUT,
        test_subjects: Sequence[str] | None = None,
        augment: bool = False,
        landmark_noise: float = PAIN_LANDMARK_NOISE,
        flip_prob: float = 0.5,
        reference: np.ndarray | None = None,
    ) -> None:
        if split not in ("train", "test", "val"):
            raise ValueError(f"split: expected 'train', 'test' or 'val' for pain, got {split!r}")
        if not landmark_noise >= 0:
            raise ValueError(f"landmark_noise: expected a non-negative number of pixels, got {landmark_noise!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob: expected a probability in [0, 1], got {flip_prob!r}")
        all_subjects = sorted(set(index.subjects))
        if test_subjects is None:
            held = held_out_subjects(index.subjects, seed, holdout)
        else:
            held = sorted(set(test_subjects))
            unknown = [s for s in held if s not in all_subjects]
            if unknown or not held or len(held) == len(all_subjects):
                raise ValueError(
                    f"test_subjects: expected a non-empty proper subset of the archive's subjects {all_subjects}, "
                    f"got {list(test_subjects)}"
                )
        in_test = np.isin(np.asarray(index.subjects), held)
        keep = np.flatnonzero(~in_test if split == "train" else in_test)
        if reference is None:
            reference = upright_reference(procrustes_mean(index.landmarks[~in_test]), PAIN_SIZE)
        reference = np.asarray(reference, dtype=np.float64)
        if reference.shape != (_NUM_LANDMARKS, 2):
            raise ValueError(f"reference: expected shape ({_NUM_LANDMARKS}, 2), got {reference.shape}")
        self.split = "test" if split == "val" else split
        self.test_subjects = held
        self.frames = [index.frames[i] for i in keep]
        self.subjects = [index.subjects[i] for i in keep]
        self.landmarks = index.landmarks[keep]
        self.targets = torch.from_numpy(index.pspi[keep].copy())
        self.reference = reference
        self.augment = bool(augment)
        self.landmark_noise = float(landmark_noise)
        self.flip_prob = float(flip_prob)

    def __len__(self) -> int:
        return len(self.frames)

    def align(self, image: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
        """Warp a grey frame ``(H, W)`` (values 0..255) onto the reference: ``float32 (48, 48)`` in ``[0, 1]``."""
        A = similarity_transform(landmarks, self.reference)
        return warp_affine(image, A, PAIN_SIZE).div_(255.0).clamp_(0.0, 1.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(read_png_grey(self.frames[index]))
        landmarks = self.landmarks[index]
        if self.augment and self.landmark_noise > 0:
            noise = torch.randn(landmarks.shape, dtype=torch.float64).numpy()
            landmarks = landmarks + self.landmark_noise * noise
        face = self.align(image, landmarks)
        if self.augment and self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            face = face.flip(-1)
        return face[None], self.targets[index].clone()

    def __repr__(self) -> str:
        return (f"PainDataset(split={self.split!r}, n={len(self)}, subjects={len(set(self.subjects))}, "
                f"augment={self.augment})")
