"""SVHN from .mat files: axis order, label 10 -> 0, the extra split, malformed files."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

import tkn.data as data


def write_svhn(root, split, x, y):
    savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def make(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    return x, y


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_pixels_axes_and_labels(tmp_path, split):
    x, y = make(len(split), 7)
    y[0, 0], y[1, 0] = 10, 3
    write_svhn(tmp_path, split, x, y)
    ds = data.load("svhn", split, root=tmp_path)
    assert len(ds) == 7
    for n in range(7):
        image, label = ds[n]
        assert image.shape == (3, 32, 32)
        for c, i, j in ((0, 0, 0), (1, 5, 17), (2, 31, 30), (0, 12, 3)):
            assert abs(float(image[c, i, j]) - x[i, j, c, n] / 255.0) < 1e-7
        np.testing.assert_allclose(image.numpy(), x[..., n].transpose(2, 0, 1) / 255.0, atol=1e-7)
        assert label == (0 if y[n, 0] == 10 else int(y[n, 0]))
    assert ds[0][1] == 0 and ds[1][1] == 3


def test_missing_file(tmp_path):
    write_svhn(tmp_path, "train", *make(0, 2))
    with pytest.raises(FileNotFoundError,
                       match=r"svhn: expected the test split \(test_32x32.mat\) at .*test_32x32.mat"):
        data.load("svhn", "test", root=tmp_path)


@pytest.mark.parametrize(
    "x,y,message",
    [
        (np.zeros((32, 32, 1, 2), np.uint8), np.ones((2, 1)),
         r"expected X of shape \(32, 32, 3, N\), got \(32, 32, 1, 2\)"),
        (np.zeros((3, 32, 32, 2), np.uint8), np.ones((2, 1)),
         r"expected X of shape \(32, 32, 3, N\), got \(3, 32, 32, 2\)"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.ones((3, 1)), r"expected y of shape \(2, 1\) to match X, got \(3, 1\)"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[0], [4]]),
         r"expected labels 1..10 in y \(10 meaning 0\), found 0..4"),
        (np.full((32, 32, 3, 2), 300.0), np.ones((2, 1)), r"expected uint8 pixels in X, got float64"),
    ],
)
def test_malformed_contents(tmp_path, x, y, message):
    write_svhn(tmp_path, "train", x, y)
    with pytest.raises(ValueError, match=message):
        data.load("svhn", "train", root=tmp_path)


def test_missing_variable_and_not_a_mat_file(tmp_path):
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8)})
    with pytest.raises(ValueError, match=r"must hold variables 'X' and 'y', found \['X'\]"):
        data.load("svhn", "train", root=tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"this is not a MATLAB file" * 10)
    with pytest.raises(ValueError, match=r"test_32x32.mat is not a readable MATLAB .mat file"):
        data.load("svhn", "test", root=tmp_path)
