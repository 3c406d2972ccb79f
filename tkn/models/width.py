"""The width multiplier of the builders that take one (CNN6/TKN6, the DenseNets).

A model built with ``width=w`` (a finite number > 0, checked with
:func:`tkn.validate.positive_number`) has ``max(1, round(c * w))`` channels
where the model at width 1 has ``c`` (Python's ``round``: halves go to the
even integer). Width 1 is the paper's model, unchanged.
"""
from __future__ import annotations

__all__ = ["scale_channels"]


def scale_channels(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: a layer's channel count at ``width``.

    Args:
        channels: the count at width 1.
        width: the multiplier, a finite number > 0.
    """
    return max(1, round(channels * width))
