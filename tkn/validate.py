"""Argument checks shared by the whole package: each raises a ``ValueError`` naming the argument,
what was expected and what was given.

This module is the bottom layer of ``tkn`` (it imports only ``torch``), so every other module may use it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "positive_int", "non_negative_int", "int_pair", "chw", "positive_number", "non_negative", "at_least", "in_range",
    "one_of", "each", "check_finite",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` if it is an ``int >= 0`` (not a ``bool``): a seed, a count that may be zero.

    >>> non_negative_int("seed", 0)
    0
    >>> non_negative_int("seed", -1)
    Traceback (most recent call last):
    ...
    ValueError: seed must be a non-negative int, got -1
    """
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
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
    if not _is_real(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "a finite non-negative number" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value)


def non_negative(name: str, value: Any) -> float:
    """``float(value)`` if it is a finite real number ``>= 0``.

    >>> non_negative("weight_decay", 0)
    0.0
    >>> non_negative("l2", -1e-4)
    Traceback (most recent call last):
    ...
    ValueError: l2 must be a finite non-negative number, got -0.0001
    """
    return positive_number(name, value, allow_zero=True)


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``"in [0, 1)"``, ``">= 1"``, ``"> 0"``, ``"<= 2"`` or ``""``."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def in_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, integer: bool = False, allow_none: bool = False,
             note: str = "") -> Any:
    """``value`` if it is a finite real number (an ``int`` with ``integer``) within the bounds; ``None`` too with
    ``allow_none``.

    Args:
        name: the argument, for the message.
        value: what was given.
        low, high: the bounds (``None``: unbounded); ``low_open``/``high_open`` exclude them.
        integer: require an ``int`` (not a ``bool``) and return it unchanged; otherwise return ``float(value)``.
        allow_none: accept (and return) ``None``.
        note: what the value means, added in parentheses after the expected range.

    Raises:
        ValueError: naming the argument, the expected range and the value.

    >>> in_range("dropout", 0.5, 0, 1, high_open=True)
    0.5
    >>> in_range("band", 3, 1, 2, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: band must be a finite number in (1, 2], got 3
    >>> in_range("min_roi", 0, 1, integer=True, allow_none=True, note="output pixels")
    Traceback (most recent call last):
    ...
    ValueError: min_roi must be None or an int >= 1 (output pixels), got 0
    """
    if value is None and allow_none:
        return None
    ok = _is_int(value) if integer else _is_real(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        kind = "an int" if integer else "a finite number"
        expected = " ".join(filter(None, ("None or" if allow_none else "", kind, _bounds(low, high, low_open,
                                                                                          high_open))))
        raise ValueError(f"{name} must be {expected}{f' ({note})' if note else ''}, got {value!r}")
    return value if integer else float(value)


def at_least(name: str, value: Any, minimum: float, *, integer: bool = False, allow_none: bool = False,
             note: str = "") -> Any:
    """``value`` if it is ``>= minimum``: :func:`in_range` with only a lower bound.

    >>> at_least("num_classes", 2, 2, integer=True)
    2
    >>> at_least("target_speedup", 0.5, 1, note="dense MACs / ROI MACs")
    Traceback (most recent call last):
    ...
    ValueError: target_speedup must be a finite number >= 1 (dense MACs / ROI MACs), got 0.5
    """
    return in_range(name, value, minimum, integer=integer, allow_none=allow_none, note=note)


def one_of(name: str, value: Any, choices: Iterable[T]) -> T:
    """``value`` if it is among ``choices``.

    >>> one_of("optimizer", "adam", ("sgd", "adam"))
    'adam'
    >>> one_of("optimizer", "rmsprop", ("sgd", "adam"))
    Traceback (most recent call last):
    ...
    ValueError: optimizer must be one of sgd, adam; got 'rmsprop'
    """
    choices = tuple(choices)
    try:
        if value in choices:
            return value
    except TypeError:  # an unhashable value (e.g. a list) is not among hashable choices
        pass
    raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def each(name: str, values: Sequence[Any], check: Callable[[str, Any], T]) -> list[T]:
    """``[check(name, v) for v in values]``; the message names the value at fault and repeats the list.

    Args:
        name: the list (e.g. a command-line option that takes several values).
        values: its values.
        check: a validator of one value, ``check(name, value)`` (e.g. :func:`positive_int`, or a
            ``lambda n, v: at_least(n, v, 1)``).

    >>> each("--batch", [1, 64], positive_int)
    [1, 64]
    >>> each("--batch", [1, 0], positive_int)
    Traceback (most recent call last):
    ...
    ValueError: each --batch value must be a positive int, got 0; all given: [1, 0]
    """
    out = []
    for value in values:
        try:
            out.append(check(f"each {name} value", value))
        except ValueError as exc:
            raise ValueError(f"{exc}; all given: {list(values)!r}") from None
    return out


def check_finite(name: str, t: Tensor) -> None:
    """Raise unless every element of ``t`` is finite (no NaN, no inf)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values (NaN or inf) in {tuple(t.shape)} tensor")
