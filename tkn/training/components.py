"""The pieces a run is assembled from: model, optimiser, scheduler and loss (MACs: :func:`tkn.flops.count`).

Each function takes the resolved :class:`~tkn.training.config.TrainConfig`
(and what the data told us) and returns a standard PyTorch object, so a user
can assemble their own loop from the same parts.
"""
from __future__ import annotations

import torch
from torch import nn

from tkn.training.config import TrainConfig

__all__ = ["check_names", "build_model", "window_parameters", "build_optimizer", "build_scheduler", "loss_name"]


def check_names(cfg: TrainConfig) -> None:
    """Fail early, before any data is read, on an unknown model or data set or a missing data root.

    Raises:
        ValueError: unknown model / data set, or a data set that needs ``data_root`` without one.
        FileNotFoundError: ``data_root`` is not an existing folder.
    """
    from pathlib import Path

    import tkn.data as tdata
    from tkn.models import list_models

    if cfg.model not in list_models():
        raise ValueError(f"unknown model {cfg.model!r}; known models: {', '.join(list_models())}")
    if cfg.data not in tdata.list_datasets():
        raise ValueError(f"unknown data set {cfg.data!r}; known data sets: {', '.join(tdata.list_datasets())}")
    info = tdata.info(cfg.data)
    if cfg.data_root is None and info.needs_root and not cfg.download:
        raise ValueError(f"data set {cfg.data!r} needs --data-root: the folder holding its files ({info.description})")
    if cfg.data_root is not None and not Path(cfg.data_root).expanduser().is_dir():
        raise FileNotFoundError(f"data root {cfg.data_root!r} is not an existing folder")


def build_model(cfg: TrainConfig, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """``tkn.models.create_model`` for ``cfg.model`` sized for the data (classes, and the channels and input size
    if the model takes them), with the config's model options (:data:`~tkn.training.config.MODEL_KEYS`) and
    ``model_kwargs``.

    Raises:
        ValueError: unknown model name (listing the known ones).
    """
    from tkn.models import create_model, list_models
    from tkn.models.registry import shape_kwargs
    from tkn.training.config import MODEL_KEYS

    if cfg.model not in list_models():
        raise ValueError(f"unknown model {cfg.model!r}; known models: {', '.join(list_models())}")
    options = {name: getattr(cfg, name) for name in MODEL_KEYS}
    return create_model(cfg.model, num_classes=num_classes, **shape_kwargs(cfg.model, input_shape), **options,
                        **cfg.model_kwargs)


def window_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The attention-window parameters (``m``, ``s`` of every AR / target layer) of ``model``."""
    out: dict[int, nn.Parameter] = {}
    for module in model.modules():
        m, s = getattr(module, "m", None), getattr(module, "s", None)
        if isinstance(m, nn.Parameter) and isinstance(s, nn.Parameter):
            out[id(m)], out[id(s)] = m, s
    return list(out.values())


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, no dampening) or Adam with ``cfg.lr`` and ``cfg.weight_decay``.

    Weight decay applies to every parameter except the window parameters:
    those are regularised only by the paper's scale penalty
    (:func:`tkn.scale_penalty`); decaying ``m`` towards 0 would pull every
    window to the top-left corner. The window parameters learn at
    ``cfg.lr * cfg.window_lr_scale``.
    """
    windows = {id(p) for p in window_parameters(model)}
    decayed = [p for p in model.parameters() if p.requires_grad and id(p) not in windows]
    free = [p for p in model.parameters() if p.requires_grad and id(p) in windows]
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}]
    if free:
        groups.append({"params": free, "weight_decay": 0.0, "lr": cfg.lr * cfg.window_lr_scale})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise ValueError(f"optimizer must be sgd or adam, got {cfg.optimizer!r}")


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``MultiStepLR(milestones, gamma)``, stepped once per epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)


def loss_name(cfg: TrainConfig, task: str) -> str:
    """The loss of a run: ``cfg.loss`` or, for ``"auto"``, the task's (cross entropy / MSE)."""
    if cfg.loss != "auto":
        return cfg.loss
    return "cross_entropy" if task == "classification" else "mse"
