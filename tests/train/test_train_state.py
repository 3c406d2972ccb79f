"""RNG snapshots survive a weights_only round trip and restore every generator exactly."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tkn.training.state import capture_rng, restore_rng, seed_everything


def _draw():
    return torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], np.random.randn(1)


def test_rng_roundtrip_through_weights_only_file(tmp_path):
    seed_everything(7)
    _draw()
    np.random.randn(1)  # leaves a cached gaussian in NumPy's legacy state
    snap = capture_rng()
    expected = _draw()
    torch.save({"rng": snap}, tmp_path / "s.pt")
    seed_everything(123)
    _draw()
    restore_rng(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = _draw()
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
    assert np.array_equal(expected[3], got[3])


def test_seed_everything_matches_reference_generators():
    seed_everything(11)
    a = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(a[0], torch.rand(3, generator=torch.Generator().manual_seed(11)))
    assert np.array_equal(a[1], np.random.RandomState(11).rand(3))
    assert a[2] == random.Random(11).random()


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="rng state"):
        restore_rng({"torch": torch.get_rng_state()})
