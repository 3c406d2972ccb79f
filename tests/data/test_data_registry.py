"""tkn.data registry: names, DatasetInfo values, argument checking."""
from __future__ import annotations

import dataclasses

import pytest

import tkn.data as data

EXPECTED = {
    # name: (num_classes, input_shape, task, needs_root)
    "mnist-5k": (10, (1, 28, 28), "classification", False),
    "tlmnist-5k": (10, (1, 56, 56), "classification", False),
    "tlmnist28-5k": (10, (1, 28, 28), "classification", False),
    "mnist": (10, (1, 28, 28), "classification", True),
    "tlmnist": (10, (1, 56, 56), "classification", True),
    "svhn": (10, (3, 32, 32), "classification", True),
    "gtsrb": (43, (3, 32, 32), "classification", True),
    "pain": (1, (1, 48, 48), "regression", True),
}


def test_list_datasets_names_every_design_data_set():
    assert data.list_datasets() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_info_values(name):
    meta = data.info(name)
    assert (meta.num_classes, meta.input_shape, meta.task, meta.needs_root) == EXPECTED[name]
    assert meta.name == name
    assert meta.in_channels == EXPECTED[name][1][0]
    assert meta.input_size == EXPECTED[name][1][1]
    assert meta.description


def test_info_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.info("mnist").num_classes = 3


def test_only_pain_has_an_augmentation():
    assert "flip" in data.info("pain").augmentation
    for name in EXPECTED:
        if name != "pain":
            assert data.info(name).augmentation.startswith("none")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'; known: gtsrb, mnist, mnist-5k, pain"):
        data.info("cifar10")
    with pytest.raises(ValueError, match=r"unknown data set 'mnist5k'.*tlmnist-5k"):
        data.load("mnist5k", "train")


def test_bad_split():
    with pytest.raises(ValueError, match=r"split: expected one of train, test for mnist-5k, got 'validation'"):
        data.load("mnist-5k", "validation")
    with pytest.raises(ValueError, match=r"split: expected one of train, test, extra for svhn"):
        data.load("svhn", "val", root=".")


def test_unexpected_keyword():
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['holdout'\] for mnist-5k"):
        data.load("mnist-5k", "train", holdout=3)
    with pytest.raises(TypeError, match=r"\['sigma'\] for pain; it accepts \['holdout'"):
        data.load("pain", "train", root=".", sigma=1.0)


def test_download_only_for_mnist():
    with pytest.raises(ValueError,
                       match=r"download: only mnist and tlmnist can be downloaded; put the svhn files in root"):
        data.load("svhn", "train", root=".", download=True)


@pytest.mark.parametrize("name", ["mnist", "tlmnist", "svhn", "gtsrb", "pain"])
def test_missing_root(name, tmp_path):
    with pytest.raises(ValueError, match=rf"{name.removeprefix('tl')}: root is required: the folder holding"):
        data.load(name, "train")
    with pytest.raises(FileNotFoundError, match=r"root .*nowhere is not an existing folder \(expected it to hold"):
        data.load(name, "train", root=tmp_path / "nowhere")


def test_bad_seed():
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got -2"):
        data.load("pain", "train", root=".", seed=-2)
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got True"):
        data.load("mnist-5k", "train", seed=True)
