"""The model registry: build any network of the paper (or a registered one) by name.

Each entry records its builder, whether it is a targeted model and the dense
baseline it is compared with (the paper's Fig. 5 speed-up is
``FLOPs(baseline) / FLOPs(targeted)``).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tkn.models.base import resolve_args
from tkn.validate import positive_number

__all__ = ["ModelEntry", "register", "create_model", "list_models", "get_entry", "baseline_of"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: registry name (lower case).
        builder: ``builder(**resolved_kwargs) -> nn.Module``; receives the
            arguments of :func:`create_model` after validation.
        baseline: name of the dense baseline of a targeted model, else ``None``.
        description: one line for listings.
    """

    name: str
    builder: Callable[..., nn.Module]
    baseline: str | None = None
    description: str = ""

    @property
    def targeted(self) -> bool:
        return self.baseline is not None


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str, builder: Callable[..., nn.Module], *, baseline: str | None = None, description: str = ""
) -> ModelEntry:
    """Register ``builder`` under ``name`` (lower case, unique).

    Args:
        name: the name :func:`create_model` will accept.
        builder: called with the validated keyword arguments ``num_classes,
            in_channels, input_size, window, l2, beta, dropout, min_roi``, and
            ``width`` if its signature names that parameter.
        baseline: for a targeted model, the registered name of its dense baseline.
        description: one line shown by listings.

    Raises:
        ValueError: ``name`` is empty, not lower case or already registered.
        TypeError: ``builder`` is not callable.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name must be a non-empty lower-case string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a model named {name!r} is already registered")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {type(builder).__name__}")
    entry = ModelEntry(name, builder, baseline, description)
    _REGISTRY[name] = entry
    return entry


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no model of that name; the message lists the known names.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    entry = _REGISTRY.get(name.lower())
    if entry is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return entry


def baseline_of(name: str) -> str | None:
    """The dense baseline of a targeted model (``"tkn6" -> "cnn6"``), ``None`` for a baseline."""
    return get_entry(name).baseline


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | tuple[int, int] = 28,
    window: str = "cauchy",
    l2: float = 1e-4,
    beta: float = 2.0,
    dropout: float | None = None,
    min_roi: int | None = None,
    width: float = 1.0,
) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: one of :func:`list_models` (case-insensitive), e.g. ``"cnn6"``, ``"tkn6"``.
        num_classes: outputs of the last layer (10 for MNIST/SVHN, 43 for GTSRB, 1 for Pain).
        in_channels: input image channels.
        input_size: ``H`` or ``(H, W)``; fixes the FC widths of CNN6/STN
            (DenseNets are fully convolutional and only record it).
        window: attention window of the target layers, ``"cauchy"`` or ``"gaussian"``.
        l2: scale penalty of the target layers of the first block; block ``b``
            gets ``l2 * beta**b`` (the paper's β build-up).
        beta: the build-up factor β.
        dropout: ``None`` for the paper's value of each model, or a rate in ``[0, 1)``.
        min_roi: minimum ROI width of the target layers in output pixels (``None``:
            each kernel's extent, the paper's text; see :class:`~tkn.layers.TargetConv2d`).
        width: channel multiplier, a finite number > 0 (1: the paper's model). CNN6/TKN6 and the
            DenseNets take it (see :class:`~tkn.models.cnn6.CNN6` and :class:`~tkn.models.densenet.DenseNet`
            for what it scales); any other width is an error for the other models.

    Baselines accept ``window``, ``l2`` and ``beta`` and ignore them.

    Returns:
        The model, with ``model.spec = {"name": name, "kwargs": {...}}``, the
        resolved arguments that rebuild it: ``create_model(spec["name"], **spec["kwargs"])``
        (``width`` is among them only when it is not 1).

    Raises:
        ValueError: unknown name (the message lists the known ones) or an argument out of range.

    Example:
        >>> import torch
        >>> model = create_model("tkn6", num_classes=10, input_size=28)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    entry = get_entry(name)
    kwargs = resolve_args(
        num_classes=num_classes, in_channels=in_channels, input_size=input_size,
        window=window, l2=l2, beta=beta, dropout=dropout, min_roi=min_roi,
    )
    width = positive_number("width", width)
    if width != 1.0:
        if not _takes_width(entry.builder):
            takers = ", ".join(n for n in list_models() if _takes_width(_REGISTRY[n].builder))
            raise ValueError(f"model {entry.name!r} has no width multiplier (got width={width:g}); "
                             f"models that take one: {takers}")
        kwargs["width"] = width
    size = kwargs["input_size"]
    model = entry.builder(**{**kwargs, "input_size": (size, size) if isinstance(size, int) else tuple(size)})
    model.spec = {"name": entry.name, "kwargs": dict(kwargs)}
    return model


def _takes_width(builder: Callable[..., nn.Module]) -> bool:
    """Whether ``builder``'s signature names a ``width`` parameter."""
    try:
        return "width" in inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a callable without a signature takes no width
        return False
