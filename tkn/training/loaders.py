"""Data sets and loaders of a training run: seeded subsets, ``(seed, epoch)`` shuffling, sharding.

Shuffling never depends on hidden generator state: the order of epoch ``e``
is ``torch.randperm`` under a generator seeded with ``seed + e`` (PyTorch's
``DistributedSampler`` convention, used for one process too), so a run
resumed at an epoch boundary sees exactly the order the uninterrupted run saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from tkn.training.config import TrainConfig
from tkn.training.distributed import DistContext, ShardSampler

__all__ = ["DataBundle", "subset", "build_data", "train_loader", "eval_loader", "set_epoch", "per_process_batch"]


@dataclass
class DataBundle:
    """The two splits of a run and what the model builder needs to know about them."""

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    task: str


def subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``size`` samples (in their original order), or ``dataset`` itself.

    The subset depends only on ``(len(dataset), size, seed)``.
    """
    n = len(dataset)
    if size is None or size >= n:
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:size].sort().values
    return Subset(dataset, idx.tolist())


def build_data(cfg: TrainConfig) -> DataBundle:
    """Load both splits of ``cfg.data`` (``train`` augmented if ``cfg.augment``) and subset them."""
    import tkn.data as tdata

    info = tdata.info(cfg.data)
    kwargs = {"download": cfg.download, "seed": cfg.seed}
    train = tdata.load(cfg.data, "train", cfg.data_root, augment=cfg.augment, **kwargs)
    test = tdata.load(cfg.data, "test", cfg.data_root, augment=False, **kwargs)
    return DataBundle(
        train=subset(train, cfg.max_train_samples, cfg.seed),
        test=subset(test, cfg.max_test_samples, cfg.seed + 1),
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        task=info.task,
    )


def per_process_batch(batch_size: int, ctx: DistContext) -> int:
    """``batch_size / world_size``; an error unless it divides evenly."""
    if batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {batch_size} is the global batch and must be divisible by the number of processes "
            f"({ctx.world_size})"
        )
    return batch_size // ctx.world_size


def train_loader(dataset: Dataset, cfg: TrainConfig, ctx: DistContext) -> DataLoader:
    """Shuffled training batches; call :func:`set_epoch` before each epoch."""
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=False
    )
    return DataLoader(
        dataset,
        batch_size=per_process_batch(cfg.batch_size, ctx),
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
    )


def eval_loader(dataset: Dataset, cfg: TrainConfig, ctx: DistContext) -> DataLoader:
    """Evaluation batches, each sample on exactly one process."""
    return DataLoader(
        dataset,
        batch_size=max(1, per_process_batch(cfg.batch_size, ctx)),
        sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
    )


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Derive every random choice of epoch ``epoch`` from ``(seed, epoch)``: the shuffle and worker seeds."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    loader.generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
