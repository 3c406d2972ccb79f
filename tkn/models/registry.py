"""The model registry: build any network of the paper, or one of your own, by name.

Each entry records its builder, whether it is a targeted model and the dense
baseline it is compared with (the paper's Fig. 5 speed-up is
``FLOPs(baseline) / FLOPs(targeted)``). The keyword arguments a model takes
are read off its builder's signature: the model options of
:data:`~tkn.models.options.MODEL_OPTIONS` it names (validated by
:func:`create_model`), plus any other keyword of its own (passed through).

Register your own model with :func:`register_model` and import its module
before use: ``tkn COMMAND --import MODULE`` or ``TKN_PLUGINS=MODULE[,MODULE...]``
on the command line (:func:`import_plugins`).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from tkn.models.options import MODEL_OPTIONS, SHAPE_OPTIONS

__all__ = [
    "ModelEntry", "register", "register_model", "unregister", "create_model", "list_models", "get_entry",
    "baseline_of", "shape_kwargs", "import_plugins", "rebuild", "PLUGINS_ENV",
]

#: Environment variable naming modules (comma separated) that the command line imports before it runs.
PLUGINS_ENV = "TKN_PLUGINS"

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Attributes:
        name: registry name (lower case).
        builder: ``builder(**kwargs) -> nn.Module``, a function or an ``nn.Module`` class.
        baseline: name of the dense baseline of a targeted model, else ``None``.
        description: one line for listings.
        options: the model options (:data:`~tkn.models.options.MODEL_OPTIONS`) the builder takes.
        extras: the builder's other keyword arguments (passed through unchecked).
        module: the module that defines the builder (recorded in ``model.spec`` for a model outside ``tkn``).
    """

    name: str
    builder: Callable[..., nn.Module]
    baseline: str | None = None
    description: str = ""
    options: tuple[str, ...] = tuple(MODEL_OPTIONS)
    extras: tuple[str, ...] = ()
    module: str = ""

    @property
    def targeted(self) -> bool:
        return self.baseline is not None

    @property
    def external(self) -> bool:
        """Defined outside the ``tkn`` package: its module must be imported before the name is known."""
        return bool(self.module) and self.module != "tkn" and not self.module.startswith("tkn.")


_REGISTRY: dict[str, ModelEntry] = {}


def _signature(builder: Callable[..., nn.Module]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(model options, other keywords)`` of ``builder``; keywords bound by a ``functools.partial`` excluded."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the common options, as to ``**kwargs``
        return tuple(n for n, o in MODEL_OPTIONS.items() if o.common), ()
    bound = set(builder.keywords) if isinstance(builder, functools.partial) else set()
    named = [p.name for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in bound]
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    options = tuple(n for n, o in MODEL_OPTIONS.items() if n in named or (var_keyword and o.common))
    return options, tuple(n for n in named if n not in MODEL_OPTIONS)


def _module_of(builder: Callable[..., nn.Module]) -> str:
    target = builder.func if isinstance(builder, functools.partial) else builder
    return getattr(target, "__module__", "") or ""


def register(
    name: str, builder: Callable[..., nn.Module], *, baseline: str | None = None, description: str = ""
) -> ModelEntry:
    """Register ``builder`` under ``name`` (lower case, unique).

    Registering the same builder again under its name (a module imported twice, a notebook cell run again)
    replaces the entry.

    Args:
        name: the name :func:`create_model` will accept.
        builder: a function or ``nn.Module`` class; it receives the model options its signature names
            (validated, see :func:`create_model`) and any other keyword argument it names.
        baseline: for a targeted model, the registered name of its dense baseline.
        description: one line shown by listings.

    Raises:
        ValueError: ``name`` is empty, not lower case or already registered to another builder.
        TypeError: ``builder`` is not callable.
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name must be a non-empty lower-case string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {type(builder).__name__}")
    old = _REGISTRY.get(name)
    if old is not None and not _same_builder(old.builder, builder):
        raise ValueError(f"a model named {name!r} is already registered (by {old.module or 'an unknown module'})")
    options, extras = _signature(builder)
    entry = ModelEntry(name, builder, baseline, description, options, extras, _module_of(builder))
    _REGISTRY[name] = entry
    return entry


def _same_builder(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Whether ``b`` is ``a`` or its definition again (same module and qualified name)."""
    key = lambda f: (_module_of(f), getattr(f, "__qualname__", None))  # noqa: E731
    return a is b or (not isinstance(a, functools.partial) and key(a) == key(b) and key(a)[1] is not None)


def register_model(name: str | Callable[..., nn.Module] | None = None, *, baseline: str | None = None,
                   description: str | None = None) -> Any:
    """Decorator: register a builder function or an ``nn.Module`` class as a model (see :func:`register`).

    ``@register_model`` alone uses the lower-cased ``__name__``; ``description`` defaults to the first line of
    the docstring. The decorated object is returned unchanged.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> @register_model("tiny", description="a linear classifier")
        ... def tiny(num_classes: int = 10, in_channels: int = 1, input_size=(28, 28), hidden: int = 8):
        ...     h, w = input_size
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, hidden), nn.ReLU(),
        ...                          nn.Linear(hidden, num_classes))
        >>> model = create_model("tiny", num_classes=3, input_size=8, hidden=4)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 3])
        >>> model.spec["kwargs"]
        {'num_classes': 3, 'in_channels': 1, 'input_size': 8, 'hidden': 4}
        >>> _ = unregister("tiny")
    """

    def decorate(builder: Builder) -> Builder:
        key = name if isinstance(name, str) else getattr(builder, "__name__", "").lower()
        text = description if description is not None else (inspect.getdoc(builder) or "").split("\n")[0]
        register(key, builder, baseline=baseline, description=text)
        return builder

    if callable(name):  # bare ``@register_model``
        builder, name = name, None
        return decorate(builder)
    return decorate


def unregister(name: str) -> ModelEntry:
    """Remove ``name`` from the registry and return its entry (e.g. to clean up after a test).

    Raises:
        ValueError: no model of that name.
    """
    entry = get_entry(name)
    del _REGISTRY[entry.name]
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


def shape_kwargs(name: str, input_shape: Sequence[int]) -> dict[str, Any]:
    """``in_channels`` and ``input_size`` of an input shape ``(C, H, W)``, for the model ``name`` takes.

    >>> shape_kwargs("cnn6", (3, 32, 32))
    {'in_channels': 3, 'input_size': 32}
    """
    c, h, w = input_shape
    values = {"in_channels": c, "input_size": h if h == w else (h, w)}
    return {k: v for k, v in values.items() if k in get_entry(name).options}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: one of :func:`list_models` (case-insensitive), e.g. ``"cnn6"``, ``"tkn6"``.
        **kwargs: model options (:data:`~tkn.models.options.MODEL_OPTIONS`, defaults in brackets):

            * ``num_classes`` [10]: outputs of the last layer (10 for MNIST/SVHN, 43 for GTSRB, 1 for Pain).
            * ``in_channels`` [1]: input image channels.
            * ``input_size`` [28]: ``H`` or ``(H, W)``; fixes the FC widths of CNN6/STN (DenseNets are fully
              convolutional and only record it).
            * ``window`` ["cauchy"]: attention window of the target layers, ``"cauchy"`` or ``"gaussian"``.
            * ``l2`` [1e-4]: scale penalty of the target layers of the first block; block ``b`` gets
              ``l2 * beta**b`` (the paper's β build-up).
            * ``beta`` [2.0]: the build-up factor β.
            * ``dropout`` [None]: ``None`` for the paper's value of each model, or a rate in ``[0, 1)``.
            * ``min_roi`` [None]: minimum ROI width of the target layers in output pixels (``None``: each
              kernel's extent, the paper's text; see :class:`~tkn.layers.TargetConv2d`).
            * ``width`` [1.0]: channel multiplier, a finite number > 0 (1: the paper's model). CNN6/TKN6 and
              the DenseNets take it (see :class:`~tkn.models.cnn6.CNN6` and
              :class:`~tkn.models.densenet.DenseNet` for what it scales).

            A builder receives the options its signature names (baselines name ``window``, ``l2``, ``beta``
            and ignore them); an option it does not take is accepted at its default only. Any other keyword
            the builder names is passed through as given.

    Returns:
        The model, with ``model.spec = {"name": name, "kwargs": {...}}``, the resolved arguments that
        rebuild it: ``create_model(spec["name"], **spec["kwargs"])`` (a non-common option such as ``width`` is
        among them only when it is not its default). A model defined outside ``tkn`` also records
        ``spec["module"]``, the module to import before rebuilding it.

    Raises:
        ValueError: unknown name (the message lists the known ones), an option out of range, or an option the
            model does not take given a value other than its default (both named).
        TypeError: a keyword that is neither a model option nor an argument of the builder.

    Example:
        >>> import torch
        >>> model = create_model("tkn6", num_classes=10, input_size=28)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    entry = get_entry(name)
    unknown = [k for k in kwargs if k not in MODEL_OPTIONS and k not in entry.extras]
    if unknown:
        takes = ", ".join((*entry.options, *entry.extras))
        raise TypeError(f"model {entry.name!r} takes no argument {unknown[0]!r}; it takes: {takes}")
    resolved: dict[str, Any] = {}
    for key, option in MODEL_OPTIONS.items():
        value = option.check(kwargs.get(key, option.default))
        if key in entry.options:
            resolved[key] = value
        elif key in kwargs and key not in SHAPE_OPTIONS and value != option.check(option.default):
            takers = ", ".join(n for n in list_models() if key in _REGISTRY[n].options)
            raise ValueError(f"model {entry.name!r} has no {option.what} (got {key}={kwargs[key]!r}); "
                             f"models that take one: {takers or 'none'}")
    extras = {k: kwargs[k] for k in entry.extras if k in kwargs}
    call = dict(resolved)
    if "input_size" in call:
        size = call["input_size"]
        call["input_size"] = (size, size) if isinstance(size, int) else tuple(size)
    model = entry.builder(**call, **extras)
    spec_kwargs = {k: v for k, v in resolved.items()
                   if MODEL_OPTIONS[k].common or v != MODEL_OPTIONS[k].check(MODEL_OPTIONS[k].default)}
    model.spec = {"name": entry.name, "kwargs": {**spec_kwargs, **extras}}
    if entry.external:
        model.spec["module"] = entry.module
    return model


def import_plugins(modules: Iterable[str] = (), *, environ: bool = True) -> list[str]:
    """Import the modules that register models: those of ``$TKN_PLUGINS`` (comma separated), then ``modules``.

    Args:
        modules: module names, e.g. ``["mypkg.models"]`` (what ``--import`` gives on the command line).
        environ: also read :data:`PLUGINS_ENV`.

    Returns:
        The names imported, in order, without duplicates.

    Raises:
        ImportError: a module cannot be imported (the message names it and where it came from).
    """
    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")] if environ else []
    names = list(dict.fromkeys(n for n in (*names, *modules) if n))
    for module in names:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"cannot import model module {module!r} (from --import or ${PLUGINS_ENV}): {exc}; "
                              "it must be importable, e.g. installed or on PYTHONPATH") from exc
    return names


def rebuild(spec: dict[str, Any]) -> nn.Module:
    """``create_model(spec["name"], **spec["kwargs"])`` for a recorded ``model.spec`` (a checkpoint's ``model``).

    Raises:
        ValueError: the model is not registered; for a model defined outside ``tkn`` the message names the
            module to import (``--import MODULE`` or ``$TKN_PLUGINS``). The module is not imported from here:
            what a file names is never executed.
    """
    name, module = spec["name"], spec.get("module")
    if module and isinstance(name, str) and name.lower() not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}: it is registered by module {module!r}; import it first "
                         f"(tkn COMMAND --import {module}, {PLUGINS_ENV}={module}, or import {module} in Python)")
    return create_model(name, **spec.get("kwargs", {}))
