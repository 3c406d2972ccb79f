"""Argument checks shared by the whole package: each raises a ``ValueError`` naming the argument,
what was expected and what was given.

This module is the bottom layer of ``tkn`` (it imports only ``torch``), so every other module may use it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["positive_int", "int_pair", "chw", "positive_number", "check_finite"]


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an ``int >= 1`` (``bool`` is not an int here; a 0-d integer tensor, as sizes are
    traced under ``torch.jit.trace``, is converted).

    >>> positive_int("channels", 3)
    3
    >>> positive_int("channels", 0)
    Traceback (most recent call last):
    ...
    ValueError: channels must be a positive int, got 0
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def int_pair(name: str, value: Any) -> tuple[int, int]:
    """``(a, b)`` from a positive int ``a`` (both the same) or a pair of positive ints.

    >>> int_pair("stride", 2)
    (2, 2)
    >>> int_pair("kernel_size", [3, 5])
    (3, 5)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def chw(name: str, value: Any) -> tuple[int, int, int]:
    """An input shape ``(C, H, W)`` of positive ints from ``"C,H,W"`` (or ``"CxHxW"``, as typed on the command
    line), a sequence of three ints, or of four (``(N, C, H, W)``, e.g. a tensor's ``.shape``: ``N`` is dropped).

    >>> chw("--input-size", "1,28,28")
    (1, 28, 28)
    >>> chw("input_size", torch.zeros(8, 3, 32, 32).shape)
    (3, 32, 32)
    >>> chw("--input-size", "1,28")
    Traceback (most recent call last):
    ...
    ValueError: --input-size must be C,H,W: three positive ints (e.g. 1,28,28), got '1,28'
    """
    if isinstance(value, Tensor):
        raise TypeError(f"{name} must be a shape (C, H, W), not a tensor: pass tensor.shape")
    dims: Any = ()
    if isinstance(value, str):
        try:
            dims = tuple(int(v) for v in value.replace("x", ",").split(","))
        except ValueError:
            pass
        dims = dims if len(dims) == 3 else ()
    elif isinstance(value, (tuple, list)) and len(value) in (3, 4):
        dims = tuple(value)[-3:]
    if len(dims) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ValueError(f"{name} must be C,H,W: three positive ints (e.g. 1,28,28), got {value!r}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``float(value)`` if it is a finite real number ``> 0`` (``>= 0`` with ``allow_zero``).

    >>> positive_number("target_speedup", 4)
    4.0
    >>> positive_number("l2", 0, allow_zero=True)
    0.0
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        kind = "a finite non-negative number" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value)


def check_finite(name: str, t: Tensor) -> None:
    """Raise unless every element of ``t`` is finite (no NaN, no inf)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values (NaN or inf) in {tuple(t.shape)} tensor")
