"""tkn: Targeted Kernel Networks (Chitta, 2018) for PyTorch.

Attentive Regularization layers, target convolutions that compute only each
kernel's region of interest, a converter for any CNN, the paper's models, data
sets and recipes, and an engine that turns the ROIs into wall-clock speed.
"""
__version__ = "0.1.0"

from tkn.functional import window
from tkn.layers import AttentiveRegularization1d, AttentiveRegularization2d, TargetConv2d
from tkn.convert import clip_parameters_, freeze, scale_penalty, target_layers, targetize
from tkn.budget import MacBudget

__all__ = [
    "__version__",
    "window",
    "AttentiveRegularization1d",
    "AttentiveRegularization2d",
    "TargetConv2d",
    "targetize",
    "scale_penalty",
    "target_layers",
    "clip_parameters_",
    "freeze",
    "MacBudget",
]
