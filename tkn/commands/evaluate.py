"""``tkn eval``: test a checkpoint: error (or MSE/MAE), params, ROI-aware MACs and the relative speed-up.

The relative speed-up is the paper's (Fig. 5): the MACs of the same model
with every target layer computing its whole map (``tkn.flops`` ``dense_macs``,
which equals the CNN baseline's count, e.g. DN10 for TDN10) divided by the
model's ROI-aware MACs.

Example::

    tkn eval --checkpoint runs/tdn10/best.pt --data tlmnist-5k --json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tkn.validate import positive_int


__all__ = ["add_parser", "evaluate_checkpoint", "format_report", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tkn eval`` on the ``tkn`` command line."""
    p = subparsers.add_parser("eval", help="evaluate a checkpoint: error, params, MACs, speed-up",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", metavar="PATH", required=True,
                   help="a .pt file written by tkn train (last.pt or best.pt)")
    p.add_argument("--data", help="data set name (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root", help="folder holding the data set's files")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--max-samples", type=int, metavar="N", help="evaluate a seeded random subset of N samples")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-samples subset (and tlmnist distractors)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
    return p


def evaluate_checkpoint(
    checkpoint: str,
    data: str | None = None,
    *,
    data_root: str | None = None,
    split: str = "test",
    max_samples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a data split; returns a JSON-ready dict.

    Keys: ``checkpoint, model, epoch, data, split, samples, task, loss`` and
    ``error`` (classification, %) or ``mse``/``mae`` (regression), then
    ``params, macs, dense_macs, speedup`` and ``paper`` (the recipe's reported
    numbers, or ``None``).

    Raises:
        FileNotFoundError / ValueError: missing or unusable checkpoint, bad data arguments.
    """
    import torch
    from torch.utils.data import DataLoader

    import tkn.data as tdata
    from tkn import flops
    from tkn.checkpoint import model_from_checkpoint
    from tkn.checkpoint import load_checkpoint
    from tkn.training.distributed import resolve_device
    from tkn.training.loaders import subset
    from tkn.training.metrics import evaluate

    positive_int("batch_size", batch_size)
    if max_samples is not None:
        positive_int("max_samples", max_samples)
    model, payload = model_from_checkpoint(load_checkpoint(checkpoint))
    cfg = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    name = data or cfg.get("data")
    if not name:
        raise ValueError("--data is required: the checkpoint does not record the data set it was trained on")
    if name not in tdata.list_datasets():
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(tdata.list_datasets())}")
    info = tdata.info(name)
    if data_root is None and info.needs_root:
        raise ValueError(f"data set {name!r} needs --data-root: the folder holding its files ({info.description})")
    dataset = subset(tdata.load(name, split, data_root, seed=seed), max_samples, seed)
    dev = resolve_device(device)
    model.to(dev)
    loss = cfg.get("loss", "auto")
    if loss == "auto":
        loss = "cross_entropy" if info.task == "classification" else "mse"
    wrap = None
    if progress:
        from tqdm.auto import tqdm

        def wrap(it):
            return tqdm(it, desc=f"eval {name}/{split}", file=sys.stderr, leave=False)

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    metrics = evaluate(model, loader, info.task, device=dev, loss=loss, progress=wrap)
    with torch.no_grad():
        report = flops.count(model.cpu(), tuple(info.input_shape))
    dense = int(report.dense_macs)
    return {
        "checkpoint": str(checkpoint),
        "model": payload["model"]["name"],
        "epoch": payload.get("epoch"),
        "data": name,
        "split": split,
        "samples": len(dataset),
        "task": info.task,
        **metrics,
        "params": int(report.params),
        "macs": int(report.macs),
        "dense_macs": dense,
        "speedup": dense / report.macs if report.macs else float("nan"),
        "paper": cfg.get("paper") or None,
    }


def format_report(result: dict[str, Any]) -> str:
    """Human-readable lines for :func:`evaluate_checkpoint`'s result."""
    from tkn.flops import format_count

    lines = [
        f"checkpoint  {result['checkpoint']} (model {result['model']}, epoch {result['epoch']})",
        f"data        {result['data']}/{result['split']}, {result['samples']} samples",
        f"loss        {result['loss']:.4f}",
    ]
    if result["task"] == "classification":
        lines.append(f"error       {result['error']:.2f}%")
    else:
        lines += [f"mse         {result['mse']:.4f}", f"mae         {result['mae']:.4f}"]
    lines += [
        f"params      {result['params']:,}",
        f"MACs        {result['macs']:,} ({format_count(result['macs'])}; dense {format_count(result['dense_macs'])})",
        f"speed-up    {result['speedup']:.2f}x (dense MACs / ROI MACs)",
    ]
    paper = result.get("paper") or {}
    if paper:
        reported = ", ".join(f"{k} {paper[k]}" for k in ("error", "mse", "mae") if k in paper)
        lines.append(f"paper       {paper.get('row', '')}: params {paper.get('params_text', '?')}, "
                     f"FLOPs {paper.get('flops_text', '?')}, {reported} ({paper.get('table', '')}, full data set)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Execute ``tkn eval``; returns the exit code."""
    result = evaluate_checkpoint(
        args.checkpoint, args.data, data_root=args.data_root, split=args.split, max_samples=args.max_samples,
        batch_size=args.batch_size, seed=args.seed, device=args.device, progress=args.progress and not args.json,
    )
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
