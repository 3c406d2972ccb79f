"""What a run leaves in its output folder besides checkpoints: ``config.yaml``, ``metrics.csv``, TensorBoard.

Files are replaced atomically (:func:`tkn.io.atomic_write_text`), so a run killed at
any moment leaves complete files; after ``--resume`` ``metrics.csv`` is
rewritten from the history stored in the checkpoint, so it never holds rows
of an epoch that was interrupted.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from tkn.io import atomic_write_text

__all__ = ["RunWriter", "metric_columns"]


def metric_columns(task: str) -> list[str]:
    """The columns of ``metrics.csv`` for a task, in order."""
    per_split = ["error"] if task == "classification" else ["mse", "mae"]
    cols = ["epoch"]
    for split in ("train", "test"):
        cols += [f"{split}_loss"] + [f"{split}_{m}" for m in per_split]
    return cols + ["macs", "speedup", "penalty", "budget_multiplier", "predicted_speedup", "lr", "epoch_time_s"]


class RunWriter:
    """Writes the run's files on rank 0 (``enabled=False`` on other ranks makes every call a no-op)."""

    def __init__(self, out: Path, task: str, enabled: bool = True) -> None:
        self.out, self.task, self.enabled = Path(out), task, enabled
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"))

    def write_config(self, config: dict[str, Any]) -> None:
        """``config.yaml``: the fully resolved configuration."""
        if self.enabled:
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """``metrics.csv``: one row per completed epoch (rewritten whole)."""
        if not self.enabled:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=metric_columns(self.task), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())

    def add_scalars(self, row: dict[str, Any]) -> None:
        """One epoch's numbers as TensorBoard scalars (if TensorBoard is installed)."""
        if self._tb is None:
            return
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self._tb.add_scalar(key.replace("_", "/", 1), value, step)
        self._tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
