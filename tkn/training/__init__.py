"""Training and evaluation of TKNs: the library behind ``tkn train``, ``tkn eval`` and ``tkn demo``.

One idea per module:

* :mod:`~tkn.training.config`: :class:`TrainConfig` and its layering (defaults < YAML < flags < ``--set``),
  the packaged paper recipes;
* :mod:`~tkn.training.components`: model, optimiser, scheduler, loss;
* :mod:`~tkn.training.loaders`: data subsets, ``(seed, epoch)`` shuffling, sharding;
* :mod:`~tkn.training.metrics`: losses, metric accumulation, :func:`evaluate`;
* :mod:`~tkn.training.loop`: :func:`train` and :func:`train_one_epoch`;
* :mod:`~tkn.training.state`: RNG state as plain data; :mod:`~tkn.training.records`: output files;
* :mod:`~tkn.training.distributed`: ``torchrun`` / DDP support.

Example (a paper recipe, shortened to one epoch on 64 embedded images):
    >>> import tempfile
    >>> from tkn.training import resolve_config, train
    >>> with tempfile.TemporaryDirectory() as out:
    ...     cfg = resolve_config("paper/tdn10-tlmnist-cauchy", {"data": "tlmnist-5k", "epochs": 1, "out": out,
    ...                          "max_train_samples": 64, "max_test_samples": 64, "progress": False})
    ...     result = train(cfg)
    >>> result.config.model, result.epochs_completed, result.history[-1]["speedup"] >= 1.0
    ('tdn10', 1, True)
"""
from __future__ import annotations

from tkn.training.config import TrainConfig, list_recipes, load_config_file, resolve_config
from tkn.training.loop import TrainResult, train, train_one_epoch
from tkn.training.metrics import evaluate

__all__ = [
    "TrainConfig",
    "resolve_config",
    "load_config_file",
    "list_recipes",
    "train",
    "train_one_epoch",
    "TrainResult",
    "evaluate",
]
