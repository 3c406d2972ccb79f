"""Collapse detection: a run that did not learn is reported as such, not as a success.

A budget that asks for more than the windows can give (``tkn train
--target-speedup`` near :func:`tkn.budget.max_speedup`) can leave a network
whose every window sits at its smallest scale: training runs to the end, the
loss stops falling, and the test error stays near chance. :func:`detect_collapse`
reads a run's per-epoch history (the rows of ``metrics.csv``) and says whether
that happened, by two criteria:

* **loss** (any task, at least :data:`MIN_EPOCHS_FOR_LOSS` epochs): the mean
  training loss of the last quarter of the epochs (at least one epoch) is not
  below the first epoch's training loss by at least :data:`LOSS_DROP` of it,
  i.e. ``mean(last quarter) > (1 - LOSS_DROP) * first``;
* **chance** (classification): the last epoch's test error is within
  :data:`CHANCE_MARGIN` percentage points of chance, ``(1 - 1 / num_classes) * 100``
  (90% for ten classes), i.e. ``test_error >= chance - CHANCE_MARGIN``.

:func:`tkn.training.train` applies it after every epoch: the verdict is
stored in each checkpoint (``"collapsed"``), in :attr:`TrainResult.collapsed
<tkn.training.TrainResult.collapsed>` and its ``to_dict()`` (``tkn train
--json``), and a collapse at the end of training is logged as a warning.
The exit code of ``tkn train`` is unchanged: a collapse is a result, not a
crash.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from tkn.validate import at_least

__all__ = ["LOSS_DROP", "CHANCE_MARGIN", "MIN_EPOCHS_FOR_LOSS", "USABLE_FRACTION", "CollapseWarning",
           "detect_collapse", "checkpoint_collapse", "chance_error", "warn_collapse"]

#: The last quarter's mean training loss must be below ``(1 - LOSS_DROP)`` times the first epoch's.
LOSS_DROP = 0.05
#: A final test error within this many percentage points of chance counts as chance.
CHANCE_MARGIN = 5.0
#: The loss criterion needs at least this many epochs (with one epoch there is nothing to compare).
MIN_EPOCHS_FOR_LOSS = 2
#: Budgets above this fraction of :func:`tkn.budget.max_speedup` were measured to collapse (docs/budget.md,
#: "Usable targets"); a collapsed budget run above it says so in its message.
USABLE_FRACTION = 0.5


class CollapseWarning(UserWarning):
    """Issued by :func:`tkn.training.train` (without a ``log``) when the finished run collapsed."""


def chance_error(num_classes: int) -> float:
    """Test error (%) of guessing among ``num_classes`` balanced classes: ``(1 - 1 / num_classes) * 100``.

    Example:
        >>> chance_error(10)
        90.0
    """
    at_least("num_classes", num_classes, 2, integer=True)
    return (1.0 - 1.0 / num_classes) * 100.0


def _finite(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def detect_collapse(history: Sequence[dict[str, Any]], task: str = "classification",
                    num_classes: int | None = None) -> dict[str, Any] | None:
    """Whether a run's history shows a collapse; ``None`` for a healthy run (or too little history to tell).

    Args:
        history: per-epoch rows in order, with ``train_loss`` and (classification) ``test_error``
            in %, as :func:`tkn.training.train` records them.
        task: ``"classification"`` or ``"regression"`` (the chance criterion needs classes).
        num_classes: the number of classes (classification; ``None`` skips the chance criterion).

    Returns:
        ``None``, or ``{"reasons": [...], "message": str, "epoch": int}``: ``reasons`` lists the criteria
        that fired (``"loss"``, ``"chance"``; see the module docstring), ``message`` says what was
        measured against what, ``epoch`` is the last epoch of ``history``.

    Example:
        >>> rows = [{"epoch": 1, "train_loss": 2.0, "test_error": 60.0},
        ...         {"epoch": 2, "train_loss": 2.1, "test_error": 88.0}]
        >>> detect_collapse(rows, "classification", 10)["reasons"]
        ['loss', 'chance']
        >>> detect_collapse([{"epoch": 1, "train_loss": 2.0, "test_error": 30.0},
        ...                  {"epoch": 2, "train_loss": 0.5, "test_error": 9.0}], "classification", 10) is None
        True
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    rows = list(history)
    if not rows:
        return None
    reasons, parts = [], []
    losses = [_finite(r, "train_loss") for r in rows]
    if len(rows) >= MIN_EPOCHS_FOR_LOSS and all(v is not None for v in losses):
        tail = max(1, len(rows) // 4)
        first, last = losses[0], sum(losses[-tail:]) / tail
        if last > (1.0 - LOSS_DROP) * first:
            reasons.append("loss")
            span = f"epoch {rows[-1]['epoch']}" if tail == 1 else f"epochs {rows[-tail]['epoch']}-{rows[-1]['epoch']}"
            parts.append(f"the training loss did not fall: mean {last:.4f} over {span} against {first:.4f} in "
                         f"epoch {rows[0]['epoch']} (a drop of at least {LOSS_DROP:.0%} was expected)")
    if task == "classification" and num_classes is not None:
        error = _finite(rows[-1], "test_error")
        chance = chance_error(num_classes)
        if error is not None and error >= chance - CHANCE_MARGIN:
            reasons.append("chance")
            parts.append(f"the test error {error:.2f}% at epoch {rows[-1]['epoch']} is at chance level "
                         f"({chance:.1f}% for {num_classes} classes)")
    if not reasons:
        return None
    return {"reasons": reasons, "message": "training collapsed: " + "; ".join(parts), "epoch": int(rows[-1]["epoch"])}


def warn_collapse(collapsed: dict[str, Any], stacklevel: int = 3) -> None:
    """Issue ``collapsed["message"]`` as a :class:`CollapseWarning`."""
    warnings.warn(collapsed["message"], CollapseWarning, stacklevel=stacklevel)


def checkpoint_collapse(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The collapse verdict of a checkpoint written by :func:`tkn.training.train`.

    Its stored ``"collapsed"`` entry, or, for a checkpoint that has none, :func:`detect_collapse` of its
    ``history`` (with its ``task`` and the model's ``num_classes``).
    """
    if "collapsed" in payload:
        return payload["collapsed"]
    task = payload.get("task", "classification")
    classes = (payload.get("model") or {}).get("kwargs", {}).get("num_classes") if task == "classification" else None
    return detect_collapse(payload.get("history") or [], task, classes)
