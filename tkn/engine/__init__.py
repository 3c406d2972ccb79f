"""Inference engine: plans and runs target layers over their fixed ROIs only.

``freeze(model, example_input)`` runs the example once to learn each target
layer's input size, then replaces every :class:`~tkn.layers.TargetConv2d` by a
:class:`FrozenTargetConv2d` whose ROIs, windows and channel groups are computed
once. The frozen model computes the same function as ``model.eval()``.
"""
from tkn.engine.frozen import FrozenTargetConv2d, freeze

__all__ = ["FrozenTargetConv2d", "freeze"]
