"""Full MNIST from IDX files: gz and raw, both layouts, every malformed-file error, download failure."""
from __future__ import annotations

import gzip
import urllib.error

import numpy as np
import pytest
import torch

import tkn.data as data
from tkn.data import mnist as mnist_mod
from tkn_data_formats import write_idx, write_mnist


def fake_mnist(seed, n):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_pixels_and_labels(tmp_path, gz):
    x_train, y_train = fake_mnist(0, 9)
    x_test, y_test = fake_mnist(1, 5)
    write_mnist(tmp_path, "train", x_train, y_train, gz=gz)
    write_mnist(tmp_path, "test", x_test, y_test, gz=gz)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        ds = data.load("mnist", split, root=tmp_path)
        assert len(ds) == len(x)
        for i in range(len(x)):
            image, label = ds[i]
            assert image.shape == (1, 28, 28) and image.dtype == torch.float32
            np.testing.assert_allclose(image[0].numpy(), x[i] / 255.0, atol=1e-7)
            assert label == int(y[i])
    assert float(ds[0][0].max()) <= 1.0


def test_torchvision_layout_and_dotted_names(tmp_path):
    x, y = fake_mnist(2, 4)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", x, gz=False)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels.idx1-ubyte", y, gz=True)
    ds = data.load("mnist", "test", root=tmp_path)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), x)
    np.testing.assert_array_equal(ds.targets.numpy(), y)


def test_missing_file_names_what_and_where(tmp_path):
    x, y = fake_mnist(3, 4)
    write_mnist(tmp_path, "train", x, y)
    with pytest.raises(FileNotFoundError,
                       match=r"MNIST: expected t10k-images-idx3-ubyte or t10k-images-idx3-ubyte.gz in .*download=True"):
        data.load("mnist", "test", root=tmp_path)


def test_wrong_magic(tmp_path):
    x, y = fake_mnist(4, 4)
    write_mnist(tmp_path, "train", x, y)
    write_idx(tmp_path / "train-labels-idx1-ubyte", x[:, 0, :4], gz=True)  # a 2-d file: magic 2050
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: expected IDX magic number 2049, found 2050"):
        data.load("mnist", "train", root=tmp_path)


def test_truncated_body(tmp_path):
    x, y = fake_mnist(5, 4)
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", x, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y, gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"header declares shape \(4, 28, 28\) \(3136 bytes\) but the file holds 3126"):
        data.load("mnist", "test", root=tmp_path)


def test_short_header_and_broken_gzip(tmp_path):
    (tmp_path / "a").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"too short for an IDX header \(2 bytes\)"):
        mnist_mod.read_idx(tmp_path / "a", 2049)
    (tmp_path / "b.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"b.gz: cannot read as an IDX file \(gzip\)"):
        mnist_mod.read_idx(tmp_path / "b.gz", 2049)


def test_label_count_and_range_and_image_size(tmp_path):
    x, y = fake_mnist(6, 4)
    write_mnist(tmp_path, "train", x, y[:3])
    with pytest.raises(ValueError, match=r"3 labels for 4 images"):
        data.load("mnist", "train", root=tmp_path)
    write_mnist(tmp_path, "train", x, np.array([1, 2, 12, 3], np.uint8))
    with pytest.raises(ValueError, match=r"expected labels 0..9, found 12"):
        data.load("mnist", "train", root=tmp_path)
    write_mnist(tmp_path, "train", np.zeros((4, 32, 32), np.uint8), y)
    with pytest.raises(ValueError, match=r"expected 28x28 images, found \(32, 32\)"):
        data.load("mnist", "train", root=tmp_path)


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match=r"could not download train-images-idx3-ubyte.gz into "
                                           r".*is the machine online\?.*no route to host"):
        data.load("mnist", "train", root=tmp_path / "new", download=True)
    assert not any((tmp_path / "new").iterdir())


def test_download_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen",
                        lambda url, timeout=None: io.BytesIO(gzip.compress(b"junk")))
    with pytest.raises(RuntimeError, match=r"MD5 [0-9a-f]{32}, expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        data.load("mnist", "train", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_download_skips_files_already_there(tmp_path, monkeypatch):
    x, y = fake_mnist(7, 4)
    write_mnist(tmp_path, "test", x, y)

    def fail(url, timeout=None):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", fail)
    np.testing.assert_array_equal(data.load("mnist", "test", root=tmp_path, download=True).targets.numpy(), y)
