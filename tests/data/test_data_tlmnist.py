"""Top-left MNIST: quadrant contents, same-split distractors, determinism in and across processes."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import tkn.data as data
from tkn.data import tlmnist as tl
from tkn.data.mnist import mnist5k_split
from tkn_data_formats import write_mnist

DIGEST_SNIPPET = (
    "import hashlib, tkn.data as d\n"
    "ds = d.load('tlmnist-5k', 'train', seed=5)\n"
    "print(hashlib.sha256(ds.images.numpy().tobytes()).hexdigest())\n"
)


def quadrants(images):
    """(N, 56, 56) -> (N, 4, 28, 28) in the order TL, TR, BL, BR."""
    return np.stack([images[:, :28, :28], images[:, :28, 28:], images[:, 28:, :28], images[:, 28:, 28:]], axis=1)


@pytest.mark.parametrize("split", ["train", "test"])
def test_quadrants_hold_digits_of_the_same_split(split):
    digits, labels = mnist5k_split(split)
    ds = data.load("tlmnist-5k", split)
    images = ds.images[:, 0].numpy()
    assert images.shape == (len(digits), 56, 56)
    q = quadrants(images)
    # top-left is digit i of the split, and the label is its label
    np.testing.assert_array_equal(q[:, 0], digits)
    np.testing.assert_array_equal(ds.targets.numpy(), labels)
    # every distractor is a digit of this split, never the top-left digit itself
    own = {d.tobytes(): i for i, d in enumerate(digits)}
    assert len(own) == len(digits), "the split has duplicate digits; identify distractors differently"
    for i in range(len(images)):
        found = [own.get(q[i, k].tobytes()) for k in (1, 2, 3)]
        assert None not in found, f"image {i}: a distractor is not a {split} digit"
        assert i not in found and len(set(found)) == 3
    image, label = ds[7]
    np.testing.assert_allclose(image[0, :28, :28].numpy(), digits[7] / 255.0, atol=1e-7)
    assert label == labels[7]


def test_distractor_indices_are_distinct_and_never_the_digit_itself():
    d = tl.distractor_indices(50, seed=3, split="train")
    assert d.shape == (50, 3) and d.min() >= 0 and d.max() < 50
    for i, row in enumerate(d):
        assert len(set(row.tolist()) | {i}) == 4
    # small sets exercise the rejection loop hard
    d4 = tl.distractor_indices(4, seed=0, split="test")
    for i, row in enumerate(d4):
        assert sorted(row.tolist()) == [j for j in range(4) if j != i]


def test_generator_is_the_documented_one():
    d = tl.distractor_indices(1000, seed=11, split="test")
    rng = np.random.default_rng([11, 1])
    first = rng.integers(0, 1000, size=(1000, 3))
    ok = [i for i in range(1000) if len({*first[i].tolist(), i}) == 4]
    np.testing.assert_array_equal(d[ok], first[ok])


def test_same_seed_same_images_different_seed_different_images():
    a = data.load("tlmnist-5k", "test", seed=1).images.clone()
    tl._MEMO.clear()
    b = data.load("tlmnist-5k", "test", seed=1).images
    c = data.load("tlmnist-5k", "test", seed=2).images
    assert np.array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    np.testing.assert_array_equal(a[:, :, :28, :28].numpy(), c[:, :, :28, :28].numpy())


def test_generated_once_per_process():
    a = data.load("tlmnist-5k", "train", seed=4)
    b = data.load("tlmnist-5k", "train", seed=4)
    assert a.images.data_ptr() == b.images.data_ptr()


@pytest.mark.slow  # starts a second Python that imports torch: 2-7 s on a busy 2-core machine
def test_identical_across_processes():
    here = hashlib.sha256(data.load("tlmnist-5k", "train", seed=5).images.numpy().tobytes()).hexdigest()
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", DIGEST_SNIPPET], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == here


def test_tlmnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    digits = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 12), ("test", 6))}
    labels = {s: rng.integers(0, 10, size=len(digits[s]), dtype=np.uint8) for s in digits}
    for s in digits:
        write_mnist(tmp_path, s, digits[s], labels[s])
    for s in digits:
        ds = data.load("tlmnist", s, root=tmp_path, seed=9)
        q = quadrants(ds.images[:, 0].numpy())
        np.testing.assert_array_equal(q[:, 0], digits[s])
        np.testing.assert_array_equal(ds.targets.numpy(), labels[s])
        d = tl.distractor_indices(len(digits[s]), 9, s)
        for k in range(3):
            np.testing.assert_array_equal(q[:, k + 1], digits[s][d[:, k]])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"n: top-left MNIST needs at least 4 source digits, got 3"):
        tl.distractor_indices(3, 0, "train")
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got -1"):
        data.load("tlmnist-5k", "train", seed=-1)
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got 1.5"):
        tl.distractor_indices(10, 1.5, "train")
    with pytest.raises(ValueError, match=r"split: expected 'train' or 'test', got 'val'"):
        tl.distractor_indices(10, 0, "val")


@pytest.mark.parametrize("split", ["train", "test"])
def test_tlmnist28_is_tlmnist_at_half_resolution(split):
    full = data.load("tlmnist-5k", split, seed=2).images[:, 0].numpy().astype(np.int64)
    half = data.load("tlmnist28-5k", split, seed=2)
    assert tuple(half.images.shape[1:]) == (1, 28, 28) and half.images.dtype.is_floating_point is False
    # pixel (i, j) is the mean of the 2x2 block (2i..2i+1, 2j..2j+1) rounded half to even, by a loop on a few images
    got = half.images[:, 0].numpy()
    for k in (0, 7, len(got) - 1):
        for i in range(28):
            for j in range(28):
                block = full[k, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                assert got[k, i, j] == round(int(block.sum()) / 4), (k, i, j)
    np.testing.assert_array_equal(half.targets.numpy(), data.load("tlmnist-5k", split, seed=2).targets.numpy())
