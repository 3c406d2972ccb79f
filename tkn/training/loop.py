"""The training loop: :func:`train` runs a whole :class:`TrainConfig`; :func:`train_one_epoch` one epoch.

Per step: forward, task loss + :func:`tkn.scale_penalty` (+ the budget's
penalty when the config has a ``target_speedup``), backward, optimiser step,
:func:`tkn.clip_parameters_` (and :meth:`tkn.MacBudget.step`). Target layers
run with the config's ``execution`` (the fast ROI-block path by default). Per
epoch (on rank 0): evaluation on the test split, the model's ROI-aware MACs and
exact speed-up, one row in ``metrics.csv``, an atomic ``last.pt`` (holding the
budget's state too) and, when the test metric improved, ``best.pt``.

A run that did not learn (:func:`tkn.training.collapse.detect_collapse`: the
training loss did not fall, or the test error ended at chance) is reported,
not hidden: :attr:`TrainResult.collapsed` and every checkpoint's
``"collapsed"`` hold the verdict, and the end of the run logs a warning (a
:class:`~tkn.training.collapse.CollapseWarning` when no ``log`` is given).

Reproducibility: everything random in an epoch derives from ``(seed, epoch)``
or from the global generators, whose state is saved in every checkpoint at
the epoch boundary (evaluation and MAC counting run with the generators
saved and put back, so they consume nothing). ``resume`` therefore continues
exactly where the uninterrupted run would be: with ``workers=0`` and
deterministic algorithms the final weights are bitwise identical.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tkn.budget import MacBudget
from tkn.checkpoint import load_checkpoint, save_checkpoint
from tkn.convert import clip_parameters_, scale_penalty, target_layers
from tkn.flops import count
from tkn.training import components, distributed, loaders
from tkn.training.collapse import USABLE_FRACTION, detect_collapse, warn_collapse
from tkn.training.config import RESUMABLE_CHANGES, TrainConfig
from tkn.training.fusion import fused_training_view
from tkn.training.metrics import Meter, best_metric, compute_loss, evaluate, metric_names
from tkn.training.records import RunWriter
from tkn.training.state import capture_rng, restore_rng, seed_everything

__all__ = ["TrainResult", "train", "train_one_epoch", "check_resume_config"]


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; only rank 0 wrote ``out``)."""

    config: TrainConfig
    out: Path
    task: str
    epochs_completed: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    params: int
    model: nn.Module = field(repr=False)
    collapsed: dict[str, Any] | None = None
    """``None``, or the collapse verdict of :func:`~tkn.training.collapse.detect_collapse` on ``history``
    (``reasons``, ``message``, ``epoch``)."""

    @property
    def final(self) -> dict[str, Any] | None:
        """The last epoch's metrics row."""
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "out": str(self.out),
            "model": self.config.model,
            "data": self.config.data,
            "task": self.task,
            "epochs_completed": self.epochs_completed,
            "params": self.params,
            "final": self.final,
            "best": self.best,
            "collapsed": self.collapsed,
        }


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    def wrap(iterable, **kwargs):
        return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)

    return wrap


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    *,
    task: str,
    loss: str,
    device: torch.device,
    penalty_model: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    ctx: distributed.DistContext | None = None,
    progress=None,
    budget: MacBudget | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: returns the mean ``loss`` and task metrics of the training batches.

    Args:
        model: the network to step (possibly wrapped in DDP).
        penalty_model: the unwrapped network whose target layers carry the
            scale penalty and window parameters (default: ``model``).
        scaler: gradient scaler for float16 autocast on CUDA.
        progress: optional wrapper of ``loader`` (e.g. a tqdm factory).
        budget: a :class:`tkn.MacBudget` over ``penalty_model``: its penalty joins
            the loss and it steps after every optimiser step.
    """
    penalty_model = penalty_model if penalty_model is not None else model
    model.train()
    meter = Meter(task)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    batches = progress(loader) if progress else loader
    for inputs, targets in batches:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp, dtype=amp_dtype):
            output = model(inputs)
        batch_loss = compute_loss(output, targets, loss)
        total = batch_loss + scale_penalty(penalty_model)
        if budget is not None:
            total = total + budget.penalty()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        clip_parameters_(penalty_model)
        if budget is not None:
            budget.step()
        value = batch_loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"training diverged: the loss became {value} (try a lower --lr)")
        meter.update(output.detach().float(), targets, value)
        if progress and hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{value:.4f}", refresh=False)
    return meter.compute(ctx)


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume with a config that changes what an epoch computes.

    Only the fields in :data:`~tkn.training.config.RESUMABLE_CHANGES` (epochs,
    out, progress, workers, device, data_root) may differ from the checkpoint's.
    """
    now = cfg.to_dict()
    diffs = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k] and k in saved)
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in diffs)
        raise ValueError(f"cannot resume with a different configuration ({detail})")


def _prepare_out(out: Path, ctx: distributed.DistContext, resume: bool, overwrite: bool) -> None:
    if not ctx.is_main:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tkn-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output folder {str(out)!r} is not writable ({exc.strerror or exc})") from None
    if not resume and not overwrite and (out / "last.pt").exists():
        raise ValueError(
            f"output folder {str(out)!r} already holds a run (last.pt); pass --resume to continue it, "
            "--overwrite to start again, or choose another --out"
        )


def _agree(ctx: distributed.DistContext, step: Callable[[], None]) -> None:
    """Run ``step`` on this rank; if it fails on any rank, raise on every rank (no rank is left waiting)."""
    error: Exception | None = None
    try:
        step()
    except (ValueError, OSError) as exc:
        error = exc
    failed = distributed.all_reduce_sum([1.0 if error is not None else 0.0], ctx)[0]
    if error is not None:
        raise error
    if failed:
        raise ValueError("another process failed while preparing the output folder (see rank 0's message)")


@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device):
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def train(
    config: TrainConfig,
    *,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``config`` to completion (or continue a run) and return the summary.

    Args:
        config: a validated :class:`TrainConfig`.
        resume: ``True`` to continue from ``config.out/last.pt``, or a checkpoint path.
        overwrite: start afresh even if ``config.out`` holds a run.
        log: called on rank 0 with one line per epoch, and with a ``WARNING: training collapsed: ...`` line
            at the end when the run collapsed (without ``log``, a
            :class:`~tkn.training.collapse.CollapseWarning` is issued instead).

    Raises:
        ValueError: bad configuration, unwritable output, unusable checkpoint.

    Example (one epoch on 64 embedded digits, a second or two):
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as out:
        ...     cfg = TrainConfig(model="dn10", data="mnist-5k", epochs=1, max_train_samples=64,
        ...                       max_test_samples=64, progress=False, out=out)
        ...     result = train(cfg)
        ...     files = sorted(p.name for p in Path(out).glob("*.*"))
        >>> result.epochs_completed, files
        (1, ['best.pt', 'config.yaml', 'last.pt', 'metrics.csv'])
        >>> sorted(k for k in result.history[-1] if k.startswith("test_"))
        ['test_error', 'test_loss']
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    cfg = config.validate()
    ctx = distributed.setup(cfg.device)
    try:
        with _deterministic(cfg.deterministic, ctx.device):
            emit = log if (log is not None and ctx.is_main) else (lambda line: None)
            result = _train(cfg, ctx, resume, overwrite, emit)
        if result.collapsed is not None and ctx.is_main:
            if log is not None:
                log(f"WARNING: {result.collapsed['message']}")
            else:
                warn_collapse(result.collapsed)
        if ctx.distributed:  # leave together: a rank tearing down while another still writes its files can abort
            distributed.all_reduce_sum([0.0], ctx)
        return result
    finally:
        distributed.teardown(ctx)


def _train(cfg: TrainConfig, ctx, resume, overwrite: bool, log) -> TrainResult:
    out = Path(cfg.out)
    components.check_names(cfg)
    payload = None
    if resume:
        ckpt = out / "last.pt" if resume is True else Path(resume)
        if not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: {str(ckpt)!r} does not exist")
        payload = load_checkpoint(ckpt)
        if "optimizer_state" not in payload or "rng" not in payload:
            raise ValueError(f"checkpoint {str(ckpt)!r} has no training state (optimizer, rng) to resume from")
        check_resume_config(payload.get("config", {}), cfg)
    _agree(ctx, lambda: _prepare_out(out, ctx, bool(resume), overwrite))

    seed_everything(cfg.seed)
    data = loaders.build_data(cfg)
    loss = components.loss_name(cfg, data.task)
    model = components.build_model(cfg, data.num_classes, data.input_shape).to(ctx.device)
    # auto: the fast path for single-process CPU runs only (on a GPU it is slower; under DDP it is not
    # validated, so distributed runs use the dense reference unless asked)
    auto = "fast" if ctx.device.type == "cpu" and not ctx.distributed else "dense"
    execution = cfg.execution if cfg.execution != "auto" else auto
    for _, layer in target_layers(model):
        layer.execution = execution
    net: nn.Module = model
    if execution == "fast" and not ctx.distributed:
        # the optimiser steps a view whose target layer + ReLU (+ pool) runs are computed per ROI block;
        # the model itself is evaluated, counted and saved (tkn.training.fusion)
        net, _ = fused_training_view(model)
    if ctx.distributed:
        if ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    optimizer = components.build_optimizer(cfg, model)
    scheduler = components.build_scheduler(cfg, optimizer)
    amp = cfg.amp if cfg.amp is not None else ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp and ctx.device.type == "cuda")
    train_data = loaders.train_loader(data.train, cfg, ctx)
    test_data = loaders.eval_loader(data.test, cfg, ctx)
    params = sum(p.numel() for p in model.parameters())
    budget = None
    if cfg.target_speedup is not None:
        steps = cfg.epochs * len(train_data)
        if cfg.budget == "latency":
            from tkn.latency import LatencyBudget

            log(f"calibrating the engine's latency at batch {cfg.latency_batch} (cached per machine)")
            t0 = time.perf_counter()
            budget = LatencyBudget(model, data.input_shape, cfg.target_speedup, steps, cfg.latency_batch,
                                   ramp=cfg.budget_ramp, threads=cfg.latency_threads,
                                   feedback=cfg.latency_feedback)
            feedback = (f"; measures the model after steps {budget.feedback_steps()}" if budget.feedback
                        else "")
            log(f"latency model {budget.latency.key} ready in {time.perf_counter() - t0:.1f} s (from the cache "
                f"when well under a second); largest speed-up {budget.max_speedup:.2f}x{feedback}")
        else:
            budget = MacBudget(model, data.input_shape, cfg.target_speedup, steps, ramp=cfg.budget_ramp)

    start, history, best = 0, [], None
    if payload is not None:
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        scheduler.load_state_dict(payload["scheduler_state"])
        if payload.get("scaler_state"):
            scaler.load_state_dict(payload["scaler_state"])
        restore_rng(payload["rng"])
        start, history, best = int(payload["epoch"]), list(payload.get("history", [])), payload.get("best")
        if budget is not None:
            budget.load_state_dict(payload["budget_state"])

    writer = RunWriter(out, data.task, enabled=ctx.is_main)
    writer.write_config(cfg.to_dict())
    writer.write_metrics(history)
    progress = _progress(cfg.progress and ctx.is_main)
    key = best_metric(data.task)

    def verdict() -> dict[str, Any] | None:
        found = detect_collapse(history, data.task, data.num_classes if data.task == "classification" else None)
        if found is not None and budget is not None and cfg.target_speedup > USABLE_FRACTION * budget.max_speedup:
            found["message"] += (f"; the target speed-up {cfg.target_speedup:g}x is more than "
                                 f"{USABLE_FRACTION:.0%} of the model's maximum {budget.max_speedup:.2f}x, where "
                                 "budgets were measured to collapse: lower the target or the min_roi")
        return found
    if start >= cfg.epochs:
        log(f"nothing to do: {str(out)!r} already completed {start} of {cfg.epochs} epochs")
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loaders.set_epoch(train_data, cfg.seed, epoch)
        lr = optimizer.param_groups[0]["lr"]
        wrap = (lambda it: progress(it, desc=f"epoch {epoch + 1}/{cfg.epochs} train")) if progress else None
        train_m = train_one_epoch(
            net, train_data, optimizer, task=data.task, loss=loss, device=ctx.device,
            penalty_model=model, scaler=scaler, amp=amp, ctx=ctx, progress=wrap, budget=budget,
        )
        scheduler.step()
        rng = capture_rng()
        wrap = (lambda it: progress(it, desc=f"epoch {epoch + 1}/{cfg.epochs} test")) if progress else None
        test_m = evaluate(model, test_data, data.task, device=ctx.device, loss=loss, ctx=ctx, amp=amp, progress=wrap)
        counted = count(model, data.input_shape) if ctx.is_main else None  # eval mode, no grad; modes restored
        macs, speedup = (None, None) if counted is None else (counted.macs, counted.dense_macs / counted.macs)
        penalty = float(scale_penalty(model).detach())
        restore_rng(rng)
        row: dict[str, Any] = {"epoch": epoch + 1}
        for split, values in (("train", train_m), ("test", test_m)):
            row[f"{split}_loss"] = values["loss"]
            for name in metric_names(data.task):
                row[f"{split}_{name}"] = values[name]
        row.update(macs=macs, speedup=speedup, penalty=penalty,
                   budget_multiplier=None if budget is None else budget.multiplier,
                   predicted_speedup=budget.speedup() if cfg.budget == "latency" and budget is not None else None,
                   lr=lr, epoch_time_s=time.perf_counter() - t0)
        history.append(row)
        improved = best is None or row[key] < best[key]
        if improved:
            best = dict(row)
        if ctx.is_main:
            state = {
                "model": dict(model.spec),
                "model_state": model.state_dict(),
                "epoch": epoch + 1,
                "config": cfg.to_dict(),
                "metrics": row,
                "history": history,
                "best": best,
                "task": data.task,
                "input_shape": list(data.input_shape),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "scaler_state": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": rng,
                "budget_state": None if budget is None else budget.state_dict(),
                "collapsed": verdict(),
            }
            writer.write_metrics(history)
            writer.add_scalars(row)
            if improved:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(out / "last.pt", state)
        log(_epoch_line(row, cfg.epochs, data.task, improved))
    writer.close()
    return TrainResult(
        config=cfg, out=out, task=data.task, epochs_completed=int(history[-1]["epoch"]) if history else start,
        history=history, best=best, params=params, model=model, collapsed=verdict(),
    )


def _epoch_line(row: dict[str, Any], epochs: int, task: str, improved: bool) -> str:
    if task == "classification":
        metric = f"train error {row['train_error']:.2f}%  test error {row['test_error']:.2f}%"
    else:
        metric = f"train mse {row['train_mse']:.4f}  test mse {row['test_mse']:.4f}  test mae {row['test_mae']:.4f}"
    macs = "" if row["macs"] is None else f"  MACs {row['macs'] / 1e6:.2f}M ({row['speedup']:.2f}x)"
    star = "  *best" if improved else ""
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  {metric}{macs}  "
        f"lr {row['lr']:.3g}  {row['epoch_time_s']:.1f}s{star}"
    )
