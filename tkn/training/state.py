"""Random-number-generator state as plain data, so that checkpoints load with ``weights_only=True``.

:func:`capture_rng` snapshots the global generators that a training epoch
draws from (PyTorch CPU and CUDA, NumPy's legacy global generator, Python's
``random``); :func:`restore_rng` puts them back. Everything is stored as
tensors, lists, ints and floats: no pickled objects.

Example:
    >>> snap = capture_rng()
    >>> a = torch.rand(3); restore_rng(snap); b = torch.rand(3)
    >>> torch.equal(a, b)
    True
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from tkn.validate import non_negative_int

__all__ = ["capture_rng", "restore_rng", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed PyTorch (CPU and CUDA), NumPy's global generator and Python's ``random``."""
    non_negative_int("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The global generators' states as plain data (see module docstring)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned.

    Raises:
        ValueError: ``state`` is not such a snapshot.
    """
    try:
        torch.set_rng_state(state["torch"].cpu())
        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"rng state in checkpoint is malformed ({exc!r})") from None
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
