"""The training configuration: one dataclass, layered from defaults, a YAML file, flags and ``--set``.

Resolution order (later wins)::

    TrainConfig() defaults  <  --config FILE  <  command-line flags  <  --set key=value

A config file is YAML read with a ``yaml.SafeLoader`` (never executed). It may
name a file on disk or a recipe shipped inside the package, e.g.
``paper/tdn10-tlmnist-cauchy`` (see :func:`list_recipes`). Numbers such as
``1e-3`` are read as floats (plain YAML 1.1 would read a string). Unknown keys, wrong
types and impossible values raise :class:`ValueError` naming the key.

Example:
    >>> cfg = resolve_config(recipe="paper/dn10-mnist", overrides={"epochs": 2}, sets=["lr=0.05"])
    >>> (cfg.model, cfg.epochs, cfg.lr)
    ('dn10', 2, 0.05)
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tkn.models.options import MODEL_OPTIONS
from tkn.validate import at_least, in_range, one_of

__all__ = [
    "TrainConfig",
    "resolve_config",
    "load_config_file",
    "find_recipe",
    "list_recipes",
    "parse_set",
    "merge",
    "RESUMABLE_CHANGES",
    "MODEL_KEYS",
]

OPTIMIZERS = ("sgd", "adam")
WINDOWS = MODEL_OPTIONS["window"].choices
DEVICES = ("auto", "cpu", "cuda")
EXECUTIONS = ("auto", "fast", "dense")
#: What ``target_speedup`` counts: MACs (:class:`tkn.MacBudget`) or measured time (:class:`tkn.LatencyBudget`).
BUDGETS = ("macs", "latency")
LOSSES = ("auto", "cross_entropy", "mse")

# Fields that may differ between a checkpoint's config and a ``--resume`` call:
# they change where/how a run is executed or how long it goes, never what an
# epoch computes.
RESUMABLE_CHANGES = frozenset({"epochs", "out", "progress", "workers", "device", "data_root"})


@dataclass
class TrainConfig:
    """Everything that defines a training run (plain data; ``asdict`` is what ``config.yaml`` holds).

    The defaults are the paper's MNIST/tlMNIST recipe (section 4.2) for TDN10
    with a Cauchy window on the embedded ``tlmnist-5k`` data.

    Attributes:
        model: registry name (see :func:`tkn.models.list_models`).
        data: data set name (see :mod:`tkn.data`).
        data_root: folder holding the data set's files (``None`` for embedded data).
        download: let :func:`tkn.data.load` download missing files where it can.
        augment: the data set's training augmentation (Pain: landmark noise + flips).
        epochs: number of epochs (at least 1).
        batch_size: **global** batch size; with ``W`` processes each takes ``batch_size / W``.
        lr: initial learning rate.
        optimizer: ``"sgd"`` (Nesterov by default, as in the paper) or ``"adam"``.
        momentum, nesterov: SGD settings (no dampening).
        weight_decay: L2 weight decay of every parameter except the window
            parameters ``m``, ``s`` (those are regularised by ``l2`` through
            :func:`tkn.scale_penalty` only).
        milestones, gamma: the learning rate is multiplied by ``gamma`` at each
            milestone epoch (``MultiStepLR``; empty for a constant rate).
        window, l2, beta: target-layer window and scale penalty (``l2 * beta**(block-1)``
            per block), passed to :func:`tkn.models.create_model`.
        min_roi: target layers' minimum ROI width in output pixels (``None``: each
            kernel's extent, the paper's text).
        width: channel multiplier of the model (``1``: the paper's; CNN6/TKN6 and the
            DenseNets take it, see :func:`tkn.models.create_model`).
            These five are the model options of :data:`MODEL_KEYS`: their defaults and
            checks are those of :data:`tkn.models.options.MODEL_OPTIONS`.
        target_speedup: train to this whole-network speed-up ``dense MACs / ROI MACs``
            with :class:`tkn.MacBudget` (``None``: no budget; the paper's recipes use
            ``l2``/``beta`` instead). Both may be combined.
        budget_ramp: fraction of the steps over which a ``target_speedup`` budget
            ramps from dense to its target (:class:`tkn.MacBudget`'s ``ramp``).
        budget: what ``target_speedup`` counts: ``"macs"`` (dense MACs / ROI MACs,
            :class:`tkn.MacBudget`) or ``"latency"`` (the frozen model's measured speed-up
            over the dense model at ``latency_batch`` on the training machine,
            :class:`tkn.LatencyBudget`; calibrated at the start, cached).
        latency_batch: the batch size a ``"latency"`` budget's speed-up is measured at.
        latency_threads: the threads it is measured on (``None``: the training process's), e.g. 2 for a
            model deployed on two cores and trained by a process that runs on one.
        latency_feedback: how many times a ``"latency"`` budget measures the model itself during training
            and corrects its latency model (:class:`tkn.LatencyBudget`'s ``feedback``; ``None``: its default,
            3 below batch 16 and none from there on; 0: never). The measurements are timings: they need an
            otherwise quiet machine.
        window_lr_scale: learning-rate factor of the window parameters ``m``, ``s``
            (1: the same rate as the weights). On short schedules a larger factor
            lets the windows travel to where the information is before they shrink.
        execution: how target layers train: ``"fast"`` (only ROI blocks are computed,
            :mod:`tkn.ops.fast_conv`; layers it does not cover fall back to dense
            by themselves), ``"dense"`` (the reference) or ``"auto"`` (the default:
            fast for a single process on the CPU; dense on a GPU, where the block
            convolutions measured 18x slower than one dense convolution, and in
            distributed runs, where the fast path is not validated). Same values
            and gradients.
        model_kwargs: any further keyword arguments of the model builder.
        loss: ``"auto"`` (cross entropy for classification, mean squared error
            for regression), ``"cross_entropy"`` or ``"mse"``.
        seed: seeds weights, shuffling (derived from ``(seed, epoch)``), dropout.
        max_train_samples, max_test_samples: use a seeded random subset of this size.
        workers: ``DataLoader`` worker processes (``0``: load in the main process).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        amp: mixed precision; ``None`` means on for CUDA, off on CPU.
        deterministic: ask PyTorch for deterministic algorithms during the run.
        out: output folder.
        progress: tqdm progress bars on stderr.
        paper: the paper's reported numbers for this recipe (documentation only).
        description: free text.
    """

    model: str = "tdn10"
    data: str = "tlmnist-5k"
    data_root: str | None = None
    download: bool = False
    augment: bool = False
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [10, 15])
    gamma: float = 0.1
    window: str = MODEL_OPTIONS["window"].default
    l2: float = MODEL_OPTIONS["l2"].default
    beta: float = MODEL_OPTIONS["beta"].default
    min_roi: int | None = MODEL_OPTIONS["min_roi"].default
    width: float = MODEL_OPTIONS["width"].default
    target_speedup: float | None = None
    budget_ramp: float = 0.25
    budget: str = "macs"
    latency_batch: int = 64
    latency_threads: int | None = None
    latency_feedback: int | None = None
    window_lr_scale: float = 1.0
    execution: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "auto"
    seed: int = 0
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    workers: int = 0
    device: str = "auto"
    amp: bool | None = None
    deterministic: bool = True
    out: str = "runs/tkn"
    progress: bool = True
    paper: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, numbers, strings), safe for YAML and ``weights_only`` checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build and validate a config from plain data; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a training config must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}"
            )
        cfg = cls(**{k: _copy(v) for k, v in data.items()})
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Check types and ranges in place (coercing ints to floats where a float is expected).

        Raises:
            ValueError: naming the key and what was expected.
        """
        _str(self, "model")
        _str(self, "data")
        if self.data_root is not None:
            _str(self, "data_root")
        for name in ("download", "augment", "nesterov", "deterministic", "progress"):
            _bool(self, name)
        _int(self, "epochs", minimum=1)
        _int(self, "batch_size", minimum=1)
        _float(self, "lr", positive=True)
        _choice(self, "optimizer", OPTIMIZERS)
        _float(self, "momentum", minimum=0.0)
        _float(self, "weight_decay", minimum=0.0)
        _float(self, "gamma", positive=True)
        if not isinstance(self.milestones, list) or not all(_is_int(m) and m >= 1 for m in self.milestones):
            raise ValueError(f"milestones must be a list of positive epoch numbers, got {self.milestones!r}")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {self.milestones!r}")
        for name in MODEL_KEYS:
            setattr(self, name, MODEL_OPTIONS[name].check(getattr(self, name)))
        if self.target_speedup is not None:
            _float(self, "target_speedup", minimum=1.0)
        _float(self, "window_lr_scale", positive=True)
        self.budget_ramp = in_range("budget_ramp", self.budget_ramp, 0, 1, note="a fraction of the steps")
        _choice(self, "execution", EXECUTIONS)
        _choice(self, "budget", BUDGETS)
        _int(self, "latency_batch", minimum=1)
        if self.latency_threads is not None:
            _int(self, "latency_threads", minimum=1)
        if self.latency_feedback is not None:
            _int(self, "latency_feedback", minimum=0)
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a mapping, got {self.model_kwargs!r}")
        repeated = sorted(set(self.model_kwargs) & set(MODEL_KEYS))
        if repeated:
            raise ValueError(f"model_kwargs must not hold {', '.join(repeated)}: set the config key itself")
        _choice(self, "loss", LOSSES)
        _int(self, "seed", minimum=0)
        for name in ("max_train_samples", "max_test_samples"):
            if getattr(self, name) is not None:
                _int(self, name, minimum=1)
        _int(self, "workers", minimum=0)
        _choice(self, "device", DEVICES)
        if self.amp is not None:
            _bool(self, "amp")
        _str(self, "out")
        if not isinstance(self.paper, dict):
            raise ValueError(f"paper must be a mapping of reported numbers, got {self.paper!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {self.description!r}")
        return self


#: The model options (:data:`tkn.models.options.MODEL_OPTIONS`) that are config keys of their own; any other
#: keyword argument of a model goes in ``model_kwargs``.
MODEL_KEYS = tuple(name for name in MODEL_OPTIONS if name in {f.name for f in dataclasses.fields(TrainConfig)})


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _bool(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _int(cfg: TrainConfig, name: str, minimum: int) -> None:
    at_least(name, getattr(cfg, name), minimum, integer=True)


def _float(cfg: TrainConfig, name: str, *, minimum: float | None = None, positive: bool = False) -> None:
    value = in_range(name, getattr(cfg, name), minimum if minimum is not None else 0.0 if positive else None,
                     low_open=positive and minimum is None)
    setattr(cfg, name, value)


def _choice(cfg: TrainConfig, name: str, choices: Iterable[str]) -> None:
    one_of(name, getattr(cfg, name), choices)


# --------------------------------------------------------------------------- files and recipes

class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)


def _yaml_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass: no object construction


_RECIPE_PACKAGE = "tkn.configs"


def _recipe_root():
    return resources.files(_RECIPE_PACKAGE)


def list_recipes() -> list[str]:
    """Names of the recipes shipped in the package, e.g. ``"paper/tdn10-tlmnist-cauchy"``."""
    names = []
    root = _recipe_root()
    stack = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        for child in node.iterdir():
            if child.is_dir():
                stack.append((child, f"{prefix}{child.name}/"))
            elif child.name.endswith(".yaml"):
                names.append(f"{prefix}{child.name[:-5]}")
    return sorted(names)


def find_recipe(name: str) -> str:
    """The YAML text of a config given as a file path or a packaged recipe name.

    A path that exists is read as is; otherwise ``name`` (with or without
    ``.yaml``) is looked up among :func:`list_recipes`.

    Raises:
        FileNotFoundError: neither a file nor a packaged recipe.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"config must be a path or recipe name, got {type(name).__name__}")
    path = Path(name)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    stem = str(name)[:-5] if str(name).endswith(".yaml") else str(name)
    stem = stem.removeprefix("configs/")
    if stem in list_recipes():
        return _recipe_root().joinpath(f"{stem}.yaml").read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"config {str(name)!r} is neither a file nor a packaged recipe (try e.g. 'paper/tdn10-tlmnist-cauchy'; "
        f"`tkn train --list-recipes` lists them)"
    )


def load_config_file(name: str | os.PathLike) -> dict[str, Any]:
    """Parse a config file or packaged recipe into a mapping (a ``yaml.SafeLoader``; nothing is executed)."""
    text = find_recipe(name)
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"config {str(name)!r} is not valid YAML{where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config {str(name)!r} must be a YAML mapping of keys to values, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- layering

def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set key=value``: the key may be dotted (``paper.error``), the value is YAML.

    Example:
        >>> parse_set("milestones=[5, 8]")
        (['milestones'], [5, 8])
    """
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set key {key!r} is empty or has an empty dotted part")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``update``; nested mappings merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = _copy(value)
    return out


def _set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(parts[1:]):
        nested = {part: nested}
    return merge(data, {parts[0]: nested})


def resolve_config(
    recipe: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Layer ``base`` (default: :class:`TrainConfig` defaults) < ``recipe`` < ``overrides`` < ``sets``.

    Args:
        recipe: a YAML file or packaged recipe name (see :func:`find_recipe`).
        overrides: keys given explicitly (e.g. command-line flags); ``None`` values are ignored.
        sets: ``key=value`` strings (dotted keys allowed, values parsed as YAML).
        base: starting values (e.g. a checkpoint's config when resuming).

    Returns:
        A validated :class:`TrainConfig`.
    """
    data = TrainConfig().to_dict() if base is None else merge(TrainConfig().to_dict(), base)
    if recipe is not None:
        data = merge(data, load_config_file(recipe))
    if overrides:
        data = merge(data, {k: v for k, v in overrides.items() if v is not None})
    for item in sets:
        parts, value = parse_set(item)
        data = _set_dotted(data, parts, value)
    return TrainConfig.from_dict(data)
