"""``tkn train``: train a model from a YAML recipe and/or flags; resumable; runs under ``torchrun``.

Resolution order: defaults < ``--config`` < flags < ``--set key=value``.
Writes ``config.yaml``, ``metrics.csv``, ``last.pt`` (every epoch), ``best.pt``
(best test metric) and TensorBoard events (if installed) into ``--out``.

Examples::

    tkn train --config paper/tdn10-tlmnist-cauchy --data tlmnist-5k --out runs/tdn10
    tkn train --model dn10 --data mnist-5k --epochs 3 --max-train-samples 1000 --out runs/dn10
    tkn train --out runs/tdn10 --resume            # continue after an interruption
    torchrun --nproc_per_node=2 -m tkn.cli train --config paper/dn10-mnist --data mnist-5k --out runs/ddp
    tkn train --import mypkg.models --model mynet --data mnist-5k --set model_kwargs.hidden=64 --out runs/mynet
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tkn.checkpoint import load_checkpoint
from tkn.commands import OneLineErrorParser, add_import_argument, add_model_option_arguments
from tkn.training.config import BUDGETS, DEVICES, EXECUTIONS, MODEL_KEYS, OPTIMIZERS, list_recipes, resolve_config

__all__ = ["add_parser", "get_args_parser", "config_from_args", "run", "main"]

# flag dest -> config key (flags whose value maps directly onto the config); the model options' flags
# (MODEL_KEYS: --window, --l2, --beta, --min-roi, --width) come from tkn.models.options.MODEL_OPTIONS
_FLAG_KEYS = (
    "model", "data", "data_root", "epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov",
    "weight_decay", "milestones", "gamma", *MODEL_KEYS, "target_speedup", "budget",
    "latency_batch", "latency_threads", "latency_feedback", "window_lr_scale",
    "execution", "seed", "max_train_samples",
    "max_test_samples", "workers", "device", "amp", "out", "progress", "download", "augment",
)


def _fill(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("configuration (defaults < --config < flags < --set)")
    g.add_argument("--config", metavar="FILE",
                   help="YAML config file or packaged recipe, e.g. paper/tdn10-tlmnist-cauchy")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (dotted keys allowed, value parsed as YAML); repeatable")
    g.add_argument("--list-recipes", action="store_true", help="list the packaged recipes and exit")
    m = parser.add_argument_group("model and data")
    m.add_argument("--model", help="model name (tkn.models.list_models(), or one registered by an --import module)")
    m.add_argument("--data", help="data set name (tkn.data.list_datasets())")
    m.add_argument("--data-root", help="folder holding the data set's files")
    m.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download missing files (mnist, tlmnist)")
    m.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="training augmentation")
    add_model_option_arguments(m, MODEL_KEYS)
    m.add_argument("--target-speedup", type=float, metavar="R",
                   help="train to this whole-network speed-up: dense MACs / ROI MACs (--budget macs, tkn.MacBudget) "
                        "or the frozen model's measured speed-up (--budget latency, tkn.LatencyBudget)")
    m.add_argument("--budget", choices=BUDGETS,
                   help="what --target-speedup counts: 'macs' (default) or 'latency' (measured on this machine)")
    m.add_argument("--latency-batch", type=int, metavar="N",
                   help="batch size at which a latency budget's speed-up is measured (default 64)")
    m.add_argument("--latency-threads", type=int, metavar="N",
                   help="threads on which a latency budget's speed-up is measured (default: the training process's)")
    m.add_argument("--latency-feedback", type=int, metavar="K",
                   help="times a latency budget measures the model during training and corrects its prediction "
                        "(default 3 below batch 16, else 0; the measurements need a quiet machine)")
    m.add_argument("--max-train-samples", type=int, metavar="N", help="train on a seeded random subset of N samples")
    m.add_argument("--max-test-samples", type=int, metavar="N", help="evaluate on a seeded random subset of N samples")
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int, help="global batch size (split evenly across torchrun processes)")
    o.add_argument("--lr", type=float, help="initial learning rate")
    o.add_argument("--optimizer", choices=OPTIMIZERS)
    o.add_argument("--momentum", type=float)
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    o.add_argument("--weight-decay", type=float, help="weight decay (not applied to window parameters)")
    o.add_argument("--milestones", type=int, nargs="*", metavar="EPOCH",
                   help="epochs at which the lr is multiplied by --gamma")
    o.add_argument("--gamma", type=float, help="lr factor at each milestone (default 0.1)")
    o.add_argument("--seed", type=int)
    r = parser.add_argument_group("execution and output")
    o.add_argument("--window-lr-scale", type=float, metavar="F",
                   help="learning-rate factor of the window parameters m, s (default 1)")
    r.add_argument("--execution", choices=EXECUTIONS,
                   help="target layers compute only their ROI blocks (fast) or the full map (dense); "
                        "default auto: fast for one CPU process, dense on a GPU or under torchrun")
    r.add_argument("--workers", type=int, help="DataLoader worker processes (default 0: bitwise-reproducible)")
    r.add_argument("--device", choices=DEVICES, help="auto: CUDA when available")
    r.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on CUDA only)")
    r.add_argument("--out", metavar="DIR", help="output folder")
    r.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from DIR/last.pt (or the given checkpoint) at its last complete epoch")
    r.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars on stderr")
    r.add_argument("--json", action="store_true", help="print the result as JSON on stdout (epoch lines go to stderr)")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    add_import_argument(r)
    return parser


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """A stand-alone parser with every ``tkn train`` option (as in PyTorch's reference scripts)."""
    return _fill(OneLineErrorParser(
        prog="tkn train", description=__doc__.splitlines()[0], add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tkn train`` on the ``tkn`` command line."""
    parser = subparsers.add_parser("train", help="train a model (paper recipes, resumable, torchrun)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _fill(parser)
    parser.set_defaults(func=run)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in _FLAG_KEYS if getattr(args, key, None) is not None}


def config_from_args(args: argparse.Namespace):
    """The resolved config and the checkpoint to resume from (``None`` for a fresh run)."""
    cfg = resolve_config(args.config, _overrides(args), args.sets)
    if not args.resume:
        return cfg, None
    ckpt = Path(cfg.out) / "last.pt" if args.resume is True else Path(args.resume)
    payload = load_checkpoint(ckpt)
    saved = payload.get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {str(ckpt)!r} holds no training config to resume")
    return resolve_config(args.config, _overrides(args), args.sets, base=saved), ckpt


def run(args: argparse.Namespace) -> int:
    """Execute ``tkn train`` (see module docstring); returns the exit code."""
    from tkn.training.loop import train

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    cfg, ckpt = config_from_args(args)
    stream = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=stream, flush=True)

    result = train(cfg, resume=ckpt if ckpt is not None else False, overwrite=args.overwrite, log=log)
    if os.environ.get("RANK", "0") not in ("", "0"):
        return 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    elif result.best is not None:
        key = "test_error" if result.task == "classification" else "test_mse"
        log(f"best {key} {result.best[key]:.4f} at epoch {result.best['epoch']}; files in {result.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tkn.commands.train``: the options of ``tkn train`` (errors raise, with their traceback)."""
    from tkn.models import import_plugins

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    import_plugins(args.imports)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
