"""``tkn flops``: parameters and the paper's FLOPs (MACs) of a model, per layer, and a TKN's speed-up.

Examples::

    tkn flops --model cnn6                                       # 1x28x28, the paper's MNIST setting
    tkn flops --model dn40 --input-size 3,32,32                  # SVHN
    tkn flops --model stn --input-size 3,32,32 --num-classes 43  # GTSRB
    tkn flops --checkpoint runs/tkn6/best.pt       # a trained TKN: MACs of its ROIs, speed-up vs CNN6
    tkn flops --model tdn10 --json                 # one JSON object
    tkn flops --import mypkg.models --model mynet  # a model of your own (tkn.register_model)

The speed-up of a targeted model is the paper's (Fig. 5): FLOPs of its dense
baseline (same arguments, same input) divided by its own FLOPs.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from torch import nn

from tkn.commands import add_model_arguments, add_model_option_arguments, input_size, load_model, model_option_values
from tkn.models.options import MODEL_OPTIONS, SHAPE_OPTIONS

__all__ = ["add_parser", "run", "flops_summary"]

#: The model options ``tkn flops`` takes as flags: all but the shape, which ``--input-size`` gives.
_OPTIONS = tuple(name for name in MODEL_OPTIONS if name not in SHAPE_OPTIONS)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "flops",
        help="params and FLOPs (MACs) per layer; speed-up of a TKN over its baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, checkpoint_help="count a trained model from a tkn checkpoint")
    parser.add_argument("--input-size", metavar="C,H,W", help="input size (default: the model's own)")
    add_model_option_arguments(parser.add_argument_group("model options (with --model; --input-size gives the "
                                                        "channels and input size)"), _OPTIONS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)
    return parser


def _build(args: argparse.Namespace, dims: tuple[int, int, int] | None
           ) -> tuple[nn.Module, str, dict[str, Any], tuple[int, int, int]]:
    """The model to count, its registry name, the keyword arguments it was built with and the input shape
    (``dims``, else the checkpoint's or the model's, see :func:`~tkn.commands.load_model`)."""
    options = model_option_values(args, _OPTIONS)
    if args.checkpoint is not None and options:
        flag = MODEL_OPTIONS[next(iter(options))].flag
        raise ValueError(f"{flag} cannot be combined with --checkpoint (the checkpoint fixes it)")
    model, shape, _ = load_model(args, dims, **options)
    return model, model.spec["name"], dict(model.spec["kwargs"]), shape


def flops_summary(
    model: nn.Module, name: str, kwargs: dict[str, Any], dims: tuple[int, int, int] | None
) -> dict[str, Any]:
    """Count ``model`` (registry ``name``, built with ``kwargs``) and, if targeted, its baseline.

    Returns the report's :meth:`~tkn.flops.FlopReport.to_dict` plus ``model``,
    ``baseline`` (``None`` or ``{"name", "params", "macs"}``) and ``speedup``
    (``baseline macs / macs``, ``None`` for a baseline).
    """
    from tkn.flops import count
    from tkn.models import baseline_of, create_model

    report = count(model, dims)
    out: dict[str, Any] = {"model": name, **report.to_dict(), "baseline": None, "speedup": None}
    base_name = baseline_of(name)
    if base_name is not None:
        base = count(create_model(base_name, **kwargs), report.input_size)
        out["baseline"] = {"name": base_name, "params": base.params, "macs": base.macs}
        out["speedup"] = base.macs / report.macs if report.macs else float("inf")
    return out


def run(args: argparse.Namespace) -> int:
    from tkn.flops import FlopReport, LayerCount

    model, name, kwargs, dims = _build(args, input_size(args))
    summary = flops_summary(model, name, kwargs, dims)
    if args.json:
        print(json.dumps(summary))
        return 0
    report = FlopReport(
        input_size=tuple(summary["input_size"]),
        params=summary["params"],
        macs=summary["macs"],
        layers=[LayerCount(**{**row, "output_shape": tuple(row["output_shape"])}) for row in summary["layers"]],
    )
    print(f"model      {name}")
    print(report.format_table())
    if summary["baseline"] is not None:
        base = summary["baseline"]
        print(f"baseline   {base['name']}: {base['macs']:,} MACs, {base['params']:,} params")
        print(f"speed-up   {summary['speedup']:.2f}x (baseline FLOPs / {name} FLOPs)")
    return 0
