"""Losses, metric accumulation and evaluation for the two tasks of the paper.

* ``"classification"``: softmax cross entropy; ``error`` is the misclassified
  percentage (the paper's tables).
* ``"regression"``: the Euclidean (mean squared error) loss; ``mse`` and
  ``mae`` are means over all predicted values (paper Table 6).

Sums are accumulated in float64 per process and can be reduced over
processes (:func:`tkn.training.distributed.all_reduce_sum`) before dividing,
so distributed metrics equal single-process ones.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn.training.distributed import DistContext, all_reduce_sum
from tkn.validate import one_of

__all__ = ["TASKS", "compute_loss", "Meter", "evaluate", "metric_names", "best_metric"]

TASKS = ("classification", "regression")


def _check_task(task: str) -> str:
    return one_of("task", task, TASKS)


def compute_loss(output: Tensor, target: Tensor, loss: str) -> Tensor:
    """Mean loss of a batch: ``"cross_entropy"`` or ``"mse"`` (targets reshaped to the output's shape)."""
    if loss == "cross_entropy":
        return F.cross_entropy(output.float(), target)
    if loss == "mse":
        return F.mse_loss(output.float(), target.reshape(output.shape).float())
    raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")


def metric_names(task: str) -> tuple[str, ...]:
    """The per-split metrics of a task besides ``loss``: ``("error",)`` or ``("mse", "mae")``."""
    return ("error",) if _check_task(task) == "classification" else ("mse", "mae")


def best_metric(task: str) -> str:
    """The test metric that selects ``best.pt`` (lower is better)."""
    return "test_error" if _check_task(task) == "classification" else "test_mse"


class Meter:
    """Accumulates a split's loss and task metrics batch by batch.

    Example:
        >>> m = Meter("classification")
        >>> m.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), loss=0.5)
        >>> m.compute()["error"]
        50.0
    """

    def __init__(self, task: str) -> None:
        self.task = _check_task(task)
        self.samples = 0.0
        self.loss_sum = 0.0
        self.a = 0.0  # classification: wrong; regression: squared error sum
        self.b = 0.0  # regression: absolute error sum
        self.values = 0.0  # regression: number of predicted values

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor, loss: float) -> None:
        """Add one batch: ``loss`` is the batch's mean loss."""
        n = output.shape[0]
        self.samples += n
        self.loss_sum += float(loss) * n
        if self.task == "classification":
            self.a += float((output.argmax(dim=1) != target).sum())
        else:
            diff = output.double() - target.reshape(output.shape).double()
            self.a += float((diff * diff).sum())
            self.b += float(diff.abs().sum())
            self.values += diff.numel()

    def compute(self, ctx: DistContext | None = None) -> dict[str, float]:
        """Means over every sample seen (by all processes when ``ctx`` is distributed)."""
        sums = [self.samples, self.loss_sum, self.a, self.b, self.values]
        if ctx is not None:
            sums = all_reduce_sum(sums, ctx)
        samples, loss_sum, a, b, values = sums
        if samples == 0:
            return {"loss": float("nan"), **{k: float("nan") for k in metric_names(self.task)}}
        out = {"loss": loss_sum / samples}
        if self.task == "classification":
            out["error"] = 100.0 * a / samples
        else:
            out["mse"] = a / values
            out["mae"] = b / values
        return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    task: str = "classification",
    *,
    device: torch.device | str | None = None,
    loss: str | None = None,
    ctx: DistContext | None = None,
    amp: bool = False,
    progress=None,
) -> dict[str, float]:
    """Loss and task metrics of ``model`` (in eval mode) over ``loader``.

    Args:
        model: the network; switched to ``eval()`` for the pass and restored after.
        loader: iterable of ``(inputs, targets)`` batches.
        task: ``"classification"`` (``loss``, ``error`` in %) or ``"regression"`` (``loss``, ``mse``, ``mae``).
        device: where to run (default: the model's device).
        loss: ``"cross_entropy"`` / ``"mse"`` (default: the task's).
        ctx: reduce over processes when distributed.
        amp: autocast the forward pass.
        progress: optional wrapper of ``loader`` (e.g. a tqdm factory).

    Returns:
        ``{"loss": ..., "error": ...}`` or ``{"loss": ..., "mse": ..., "mae": ...}``.
    """
    _check_task(task)
    loss = loss or ("cross_entropy" if task == "classification" else "mse")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meter = Meter(task)
    try:
        for inputs, targets in (progress(loader) if progress else loader):
            inputs, targets = inputs.to(device), targets.to(device)
            with torch.autocast(device.type, enabled=amp, dtype=_amp_dtype(device)):
                output = model(inputs)
            meter.update(output.float(), targets, compute_loss(output, targets, loss).item())
    finally:
        model.train(was_training)
    return meter.compute(ctx)


def _amp_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16
