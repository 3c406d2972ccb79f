"""tkn: Targeted Kernel Networks (Chitta, 2018) for PyTorch.

Attentive Regularization layers, target convolutions that compute only each
kernel's region of interest, a converter for any CNN, the paper's models, data
sets and recipes, and an engine that turns the ROIs into wall-clock speed.
"""
__version__ = "0.1.0"

from tkn.functional import window
from tkn.layers import AttentiveRegularization1d, AttentiveRegularization2d, TargetConv2d
from tkn.convert import clip_parameters_, scale_penalty, target_layers, targetize
from tkn.budget import MacBudget

#: Subpackages loaded on first attribute access (``tkn.models.create_model``, ``tkn.flops.count``, ...).
_SUBMODULES = ("benchmark", "budget", "checkpoint", "convert", "data", "engine", "export", "flops", "functional",
               "io", "latency", "layers", "models", "ops", "rescale", "study", "summary", "training", "validate", "viz",
               "windowfile")

#: Names of :mod:`tkn.models` also reachable as ``tkn.NAME`` (``tkn.create_model("tkn6")``, ``@tkn.register_model``).
_MODEL_NAMES = ("create_model", "list_models", "register_model")


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"tkn.{name}")
    if name == "freeze":  # the engine sits above the layers: loaded on first use, not by ``import tkn``
        from tkn.engine import freeze

        return freeze
    if name in _MODEL_NAMES:  # the model registry (tkn.models): loaded on first use
        from tkn import models

        return getattr(models, name)
    if name == "LatencyBudget":  # calibrates the engine: loaded on first use
        from tkn.latency import LatencyBudget

        return LatencyBudget
    raise AttributeError(f"module 'tkn' has no attribute {name!r}")


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
    "LatencyBudget",
    "create_model",
    "list_models",
    "register_model",
]
