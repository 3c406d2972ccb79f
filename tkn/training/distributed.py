"""Process groups for ``torchrun``: who am I, which device, how to reduce metrics, how to shard data.

``tkn train`` runs unchanged under ``torchrun --nproc_per_node=N`` (or a
multi-node ``torchrun``): the launcher sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (``nccl`` on GPU,
``gloo`` on CPU). Without those variables everything is a group of one.

Batch semantics: ``batch_size`` is the **global** batch. Each of ``W``
processes takes ``batch_size / W`` samples per step from a
``DistributedSampler`` shuffled with the same ``(seed, epoch)`` as a single
process, so the union of the ``W`` per-process batches of step ``k`` is
exactly the single-process batch ``k`` (when the data size is a multiple of
the batch size) and DDP's gradient average equals the single-process
gradient. Batch normalisation is the one difference: on CUDA the model is
converted to ``SyncBatchNorm`` (statistics over the global batch, as in one
process); on CPU PyTorch has no ``SyncBatchNorm``, so each process normalises
with its own half of the batch and results agree only within a tolerance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistContext", "setup", "teardown", "all_reduce_sum", "ShardSampler"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True under a launcher with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files or prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA device is available (use --device cpu or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")


def setup(device: str = "auto") -> DistContext:
    """Read the launcher's environment, pick the device and join the process group if there is one."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        _import_group_defaults()
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def _import_group_defaults() -> None:
    """Import, before the default process group exists, the modules that capture it in default arguments.

    ``torch.distributed.nn.functional`` declares ``group=group.WORLD`` defaults, evaluated at import.
    ``DistributedDataParallel`` imports it on construction (through ``torch.distributed._shard``); imported
    after :func:`torch.distributed.init_process_group`, those defaults hold the default group forever, so
    :func:`torch.distributed.destroy_process_group` cannot free it and its gloo worker threads outlive
    :func:`teardown`. At interpreter exit such a thread releasing the last collective's tensors takes the
    GIL during finalisation and the process aborts (``terminate called without an active exception``,
    SIGABRT). Imported first, the defaults are ``None`` and the group is freed (its threads joined) when
    it is destroyed.
    """
    import torch.distributed.nn  # noqa: F401


def teardown(ctx: DistContext) -> None:
    """Leave the process group joined by :func:`setup` (no-op for a single process).

    The group is destroyed, not merely unregistered: with no reference left (see
    :func:`_import_group_defaults`; the caller has dropped its ``DistributedDataParallel``), its
    destructor waits for the queued work and joins the backend's worker threads, so no thread of the
    group is left to run while the interpreter shuts down (tested: no gloo thread outlives
    :func:`tkn.training.train` under ``torchrun``).
    """
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a list of numbers over all processes (float64; identity for one process)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


class ShardSampler(Sampler[int]):
    """Evaluation shards: process ``r`` of ``W`` takes indices ``r, r + W, r + 2W, ...`` in order.

    Unlike ``DistributedSampler`` nothing is padded or repeated, so sums
    reduced over processes count every sample exactly once.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if length < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid shard: length={length}, rank={rank}, world_size={world_size}")
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
