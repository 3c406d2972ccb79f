"""The shared argument checks of :mod:`tkn.validate`: the values they return and the messages they raise."""
from __future__ import annotations

import math
import re

import pytest
import torch

from tkn.validate import (at_least, chw, each, in_range, int_pair, non_negative, non_negative_int, one_of,
                          positive_int, positive_number)


def _message(call) -> str:
    with pytest.raises(ValueError) as exc:
        call()
    return str(exc.value)


def test_positive_int():
    assert positive_int("n", 3) == 3
    assert positive_int("n", torch.tensor(4)) == 4
    for bad in (0, -1, 2.0, True, "3", None):
        assert _message(lambda: positive_int("n", bad)) == f"n must be a positive int, got {bad!r}"


def test_non_negative_int():
    assert non_negative_int("seed", 0) == 0 and non_negative_int("seed", 7) == 7
    for bad in (-1, 1.5, False):
        assert _message(lambda: non_negative_int("seed", bad)) == f"seed must be a non-negative int, got {bad!r}"


def test_positive_number_and_non_negative():
    assert positive_number("lr", 1) == 1.0 and isinstance(positive_number("lr", 1), float)
    assert non_negative("l2", 0) == 0.0
    assert _message(lambda: positive_number("lr", 0)) == "lr must be a finite number > 0, got 0"
    assert _message(lambda: positive_number("lr", math.inf)) == "lr must be a finite number > 0, got inf"
    assert _message(lambda: non_negative("l2", -1)) == "l2 must be a finite non-negative number, got -1"
    assert _message(lambda: non_negative("l2", True)) == "l2 must be a finite non-negative number, got True"


@pytest.mark.parametrize("kwargs, good, bad, expected", [
    (dict(low=0, high=1), [0, 0.5, 1], [-0.1, 1.5, math.nan], "a finite number in [0, 1]"),
    (dict(low=0, high=1, high_open=True), [0, 0.99], [1], "a finite number in [0, 1)"),
    (dict(low=1, high=2, low_open=True), [1.5, 2], [1, 2.5], "a finite number in (1, 2]"),
    (dict(low=2, integer=True), [2, 10], [1, 2.0, True], "an int >= 2"),
    (dict(high=3, high_open=True), [-5, 2.9], [3], "a finite number < 3"),
])
def test_in_range(kwargs, good, bad, expected):
    for value in good:
        out = in_range("x", value, **kwargs)
        assert out == value and type(out) is (int if kwargs.get("integer") else float)
    for value in bad:
        assert _message(lambda: in_range("x", value, **kwargs)) == f"x must be {expected}, got {value!r}"


def test_in_range_with_none_and_a_note():
    assert in_range("dropout", None, 0, 1, allow_none=True) is None
    assert _message(lambda: in_range("dropout", None, 0, 1)) == "dropout must be a finite number in [0, 1], got None"
    assert _message(lambda: in_range("dropout", 1, 0, 1, high_open=True, allow_none=True, note="None: default")) == (
        "dropout must be None or a finite number in [0, 1) (None: default), got 1")


def test_at_least():
    assert at_least("target_speedup", 4, 1) == 4.0
    assert at_least("min_roi", None, 1, integer=True, allow_none=True) is None
    assert _message(lambda: at_least("target_speedup", 0.5, 1, note="dense MACs / ROI MACs")) == (
        "target_speedup must be a finite number >= 1 (dense MACs / ROI MACs), got 0.5")


def test_one_of():
    assert one_of("optimizer", "sgd", ("sgd", "adam")) == "sgd"
    assert one_of("batch", 2, range(1, 4)) == 2
    assert _message(lambda: one_of("optimizer", "rmsprop", ["sgd", "adam"])) == (
        "optimizer must be one of sgd, adam; got 'rmsprop'")
    assert _message(lambda: one_of("optimizer", ["sgd"], ["sgd", "adam"])) == (
        "optimizer must be one of sgd, adam; got ['sgd']")


def test_each():
    assert each("--widths", (1, 0.5), positive_number) == [1.0, 0.5]
    assert each("--batch", [], positive_int) == []
    assert _message(lambda: each("--target-speedup", [2, 0.5], lambda n, v: at_least(n, v, 1))) == (
        "each --target-speedup value must be a finite number >= 1, got 0.5; all given: [2, 0.5]")


def test_pairs_and_shapes():
    assert int_pair("stride", 2) == (2, 2) and int_pair("kernel_size", (3, 5)) == (3, 5)
    assert _message(lambda: int_pair("input_size", (28, 0))) == (
        "input_size must be a positive int or a pair of positive ints, got (28, 0)")
    assert chw("--input-size", "3x32x32") == (3, 32, 32)
    assert re.fullmatch(r"--input-size must be C,H,W: .*got '1,2'", _message(lambda: chw("--input-size", "1,2")))
