"""GTSRB official layout: inclusive ROI crops, the 32x32 resize, labels, the test ground truth, errors."""
from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest
import torch

import tkn.data as data
from tkn.data.imageio import read_png_grey, read_ppm
from tkn_data_formats import write_gtsrb_csv, write_ppm

RED, BLUE, GREY = (200, 10, 30), (5, 60, 250), (90, 90, 90)


def boxed_sign(h, w, box, inside, outside=GREY):
    """An image of colour ``outside`` with the inclusive box (x1, y1, x2, y2) painted ``inside``."""
    x1, y1, x2, y2 = box
    image = np.empty((h, w, 3), np.uint8)
    image[:] = outside
    image[y1 : y2 + 1, x1 : x2 + 1] = inside
    return image


def write_tree(root):
    """Two training classes, three test images; returns the expected (colour, label) lists."""
    train = root / "Final_Training" / "Images"
    expect_train = []
    for cls, colour, boxes in ((0, RED, [(5, 6, 40, 37), (1, 1, 8, 9)]), (12, BLUE, [(3, 4, 33, 30)])):
        folder = train / f"{cls:05d}"
        rows = []
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            h, w = y2 + 4, x2 + 3
            name = f"00000_{k:05d}.ppm"
            write_ppm(folder / name, boxed_sign(h, w, (x1, y1, x2, y2), colour), comment=k == 0)
            rows.append((name, w, h, x1, y1, x2, y2, cls))
            expect_train.append((colour, cls))
        write_gtsrb_csv(folder / f"GT-{cls:05d}.csv", rows)
    test = root / "Final_Test" / "Images"
    rows, expect_test = [], []
    for k, (colour, cls) in enumerate(((BLUE, 42), (RED, 0), (BLUE, 7))):
        box = (2 + k, 3, 30 + 2 * k, 29 + k)
        write_ppm(test / f"{k:05d}.ppm", boxed_sign(40, 45, box, colour))
        rows.append((f"{k:05d}.ppm", 45, 40, *box, cls))
        expect_test.append((colour, cls))
    write_gtsrb_csv(test / "GT-final_test.csv", rows)
    return expect_train, expect_test


def test_crops_are_inclusive_and_resized(tmp_path):
    expect_train, expect_test = write_tree(tmp_path)
    for split, expect in (("train", expect_train), ("test", expect_test)):
        ds = data.load("gtsrb", split, root=tmp_path)
        assert len(ds) == len(expect)
        for i, (colour, cls) in enumerate(expect):
            image, label = ds[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.float32
            # the box is exactly the ROI, so no grey from outside may leak in: one row or
            # column too many (an exclusive x2/y2 read as inclusive +1) would show at the borders
            want = torch.tensor(colour, dtype=torch.float32)[:, None, None].expand(3, 32, 32) / 255.0
            torch.testing.assert_close(image, want, rtol=0, atol=1e-7)
            assert label == cls


def test_dropping_the_last_row_and_column_is_caught(tmp_path):
    # ROI whose last row and last column are a different colour: they must appear
    x1, y1, x2, y2 = 0, 0, 63, 63
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :] = RED
    image[63, :] = BLUE
    image[:, 63] = BLUE
    write_ppm(tmp_path / "Final_Test" / "Images" / "00000.ppm", image)
    write_gtsrb_csv(tmp_path / "Final_Test" / "Images" / "GT-final_test.csv",
                    [("00000.ppm", 64, 64, x1, y1, x2, y2, 1)])
    out = data.load("gtsrb", "test", root=tmp_path)[0][0]
    assert float(out[2, 31, 31]) > float(out[2, 15, 15]) + 0.2  # blue at the bottom-right corner


def antialiased_halving(a):
    """Reference for resizing 64 -> 32 along axis 0: triangle filter of radius 2 input pixels.

    Output pixel i is centred at input coordinate 2i + 0.5; the weights of the
    input pixels 2i-1, 2i, 2i+1, 2i+2 are 1, 3, 3, 1 (renormalised at the borders).
    """
    out = np.zeros((a.shape[0] // 2,) + a.shape[1:])
    for i in range(out.shape[0]):
        acc, total = 0.0, 0.0
        for k, wgt in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1)):
            if 0 <= k < a.shape[0]:
                acc = acc + wgt * a[k].astype(np.float64)
                total += wgt
        out[i] = acc / total
    return out


def test_resize_matches_an_antialiased_bilinear_reference_and_keeps_axes(tmp_path):
    rng = np.random.default_rng(0)
    roi = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    image = np.zeros((70, 75, 3), np.uint8)
    image[2:66, 7:71] = roi  # x1=7, y1=2, x2=70, y2=65
    write_ppm(tmp_path / "Final_Test" / "Images" / "00000.ppm", image)
    write_gtsrb_csv(tmp_path / "Final_Test" / "Images" / "GT-final_test.csv", [("00000.ppm", 75, 70, 7, 2, 70, 65, 3)])
    out = data.load("gtsrb", "test", root=tmp_path)[0][0].numpy()
    ref = antialiased_halving(antialiased_halving(roi).transpose(1, 0, 2)).transpose(1, 0, 2)
    ref = np.round(ref).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(out, ref, atol=1.01 / 255)


def test_zip_folder_layout_and_test_labels_next_to_root(tmp_path):
    _, expect_test = write_tree(tmp_path / "GTSRB")
    gt = tmp_path / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.csv"
    gt.rename(tmp_path / "GTSRB" / "GT-final_test.csv")
    ds = data.load("gtsrb", "test", root=tmp_path)
    assert ds.targets.tolist() == [cls for _, cls in expect_test]


def test_cached_on_disk(tmp_path, tkn_cache):
    write_tree(tmp_path)
    a = data.load("gtsrb", "train", root=tmp_path)
    files = sorted(tkn_cache.glob("gtsrb-train-*.npz"))
    assert files
    with np.load(files[-1]) as z:
        np.testing.assert_array_equal(z["images"], a.images.numpy())


def test_read_ppm_header_variants(tmp_path):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    (tmp_path / "a.ppm").write_bytes(b"P6 # comment\n3\t2 # another\n255\n" + pixels.tobytes())
    np.testing.assert_array_equal(read_ppm(tmp_path / "a.ppm"), pixels)
    (tmp_path / "b.ppm").write_bytes(b"P6\n3 2\n15\n" + np.full((2, 3, 3), 15, np.uint8).tobytes())
    np.testing.assert_array_equal(read_ppm(tmp_path / "b.ppm"), np.full((2, 3, 3), 255, np.uint8))
    # plain (ASCII) PPM and 16-bit samples: Pillow reads them too (16 bit rescaled to 8)
    (tmp_path / "c.ppm").write_text("P3\n3 2\n255\n" + " ".join(map(str, pixels.ravel())) + "\n")
    np.testing.assert_array_equal(read_ppm(tmp_path / "c.ppm"), pixels)
    (tmp_path / "d.ppm").write_bytes(b"P6\n1 1\n65535\n" + bytes([0xFF, 0xFF, 0x80, 0x00, 0, 1]))
    np.testing.assert_array_equal(read_ppm(tmp_path / "d.ppm"), [[[255, 128, 0]]])


@pytest.mark.parametrize(
    "content,message",
    [
        (b"P6\n2 2\n255\n" + bytes(5), r"cannot read as a PPM image: image file is truncated"),
        (b"P6\n2", r"cannot read as a PPM image: .*EOF while reading header"),
        (b"not an image", r"cannot read as a PPM image: cannot identify image file"),
        (gzip.compress(b"P6\n1 1\n255\n\0\0\0"), r"cannot read as a PPM image: cannot identify image file"),
    ],
)
def test_bad_ppm(tmp_path, content, message):
    (tmp_path / "x.ppm").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_ppm(tmp_path / "x.ppm")


def test_ppm_that_is_another_format_or_missing(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "x.ppm", format="PNG")
    with pytest.raises(ValueError, match="expected a PPM file, found PNG"):
        read_ppm(tmp_path / "x.ppm")
    with pytest.raises(FileNotFoundError):
        read_ppm(tmp_path / "missing.ppm")


def test_reading_images_without_pillow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # "import PIL" now fails as if Pillow were not installed
    for read in (read_ppm, read_png_grey):
        with pytest.raises(ImportError, match=r"needs Pillow: pip install 'tkn\[data\]'"):
            read(tmp_path / "x.ppm")


def test_test_labels_missing_with_a_hint(tmp_path):
    write_tree(tmp_path)
    images = tmp_path / "Final_Test" / "Images"
    (images / "GT-final_test.csv").rename(images / "GT-final_test.test.csv")
    with pytest.raises(FileNotFoundError, match=r"expected the test labels GT-final_test.csv in .* "
                       r"\(GT-final_test.test.csv has no labels\).*GTSRB_Final_Test_GT.zip"):
        data.load("gtsrb", "test", root=tmp_path)


def test_missing_folders_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gtsrb: expected the training folder .*Final_Training/Images"):
        data.load("gtsrb", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"gtsrb: expected the test folder .*Final_Test/Images"):
        data.load("gtsrb", "test", root=tmp_path)
    (tmp_path / "Final_Training" / "Images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds no class folders \(expected 00000 ... 00042\)"):
        data.load("gtsrb", "train", root=tmp_path)
    (tmp_path / "Final_Training" / "Images" / "00003").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected the annotations of class 00003 at .*00003/GT-00003.csv"):
        data.load("gtsrb", "train", root=tmp_path)
    write_gtsrb_csv(tmp_path / "Final_Training" / "Images" / "00003" / "GT-00003.csv",
                    [("gone.ppm", 10, 10, 0, 0, 9, 9, 3)])
    with pytest.raises(FileNotFoundError, match=r"expected the image listed in GT-00003.csv at .*gone.ppm"):
        data.load("gtsrb", "train", root=tmp_path)


def single_test_image(root, row, image=None):
    images = root / "Final_Test" / "Images"
    write_ppm(images / "00000.ppm", np.zeros((20, 30, 3), np.uint8) if image is None else image)
    write_gtsrb_csv(images / "GT-final_test.csv", [row])


@pytest.mark.parametrize(
    "row,message",
    [
        (("00000.ppm", 31, 20, 0, 0, 5, 5, 1), r"00000.ppm is 30x20 but GT-final_test.csv says 31x20"),
        (("00000.ppm", 30, 20, 0, 0, 30, 5, 1), r"ROI \(0,0\)-\(30,5\) of 00000.ppm lies outside its 30x20 image"),
        (("00000.ppm", 30, 20, 6, 0, 5, 5, 1), r"ROI \(6,0\)-\(5,5\) of 00000.ppm lies outside"),
        (("00000.ppm", 30, 20, 0, 0, 5, 5, 43), r"ClassId 43 of 00000.ppm is outside 0..42"),
        (("00000.ppm", 30, 20, 0, "a", 5, 5, 1), r"GT-final_test.csv, line 2: expected integer fields"),
    ],
)
def test_bad_annotations(tmp_path, row, message):
    single_test_image(tmp_path, row)
    with pytest.raises(ValueError, match=message):
        data.load("gtsrb", "test", root=tmp_path)


def test_bad_csv_header_and_empty_csv(tmp_path):
    images = tmp_path / "Final_Test" / "Images"
    images.mkdir(parents=True)
    (images / "GT-final_test.csv").write_text("Filename,Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId\n")
    with pytest.raises(ValueError, match=r"expected the semicolon-separated columns Filename;Width;.*;ClassId, "
                                         r"missing \['Filename'"):
        data.load("gtsrb", "test", root=tmp_path)
    write_gtsrb_csv(images / "GT-final_test.csv", [])
    with pytest.raises(ValueError, match=r"GT-final_test.csv lists no images"):
        data.load("gtsrb", "test", root=tmp_path)


@pytest.mark.parametrize("h,w", [(40, 37), (100, 80), (20, 25)])
def test_resize_agrees_with_pillow_bilinear_within_one_level(h, w):
    Image = pytest.importorskip("PIL.Image")
    from tkn.data.imageio import resize_uint8

    roi = np.random.default_rng(h).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(roi).resize((32, 32), Image.BILINEAR)).astype(int)
    assert np.abs(resize_uint8(roi, (32, 32)).astype(int) - pil).max() <= 1
