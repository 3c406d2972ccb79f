"""``tkn export``: the frozen (ROI-only) model as TorchScript or ONNX, checked against PyTorch.

Examples::

    tkn export --checkpoint runs/tdn10/best.pt --format torchscript     # runs/tdn10/best.torchscript.pt
    tkn export --checkpoint runs/tdn10/best.pt --format onnx --out tdn10.onnx
    tkn export --checkpoint runs/tdn10/best.pt --format onnx --input-size 1,112,112  # another resolution
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tkn.commands import add_model_arguments, input_size, load_model
from tkn.validate import positive_number

__all__ = ["add_parser", "run", "default_path"]

_SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}


def default_path(args: argparse.Namespace) -> Path:
    """``--checkpoint best.pt`` -> ``best.torchscript.pt`` / ``best.onnx`` next to it; ``--model NAME`` ->
    ``NAME.<suffix>`` in the current folder."""
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        return path.with_name(path.stem + _SUFFIX[args.format])
    return Path(args.model + _SUFFIX[args.format])


def add_parser(subparsers) -> argparse.ArgumentParser:
    from tkn.export import FORMATS

    p = subparsers.add_parser(
        "export",
        help="export the frozen (fast) model to TorchScript or ONNX",
        description=(
            "Freeze the model on an example input (only the ROIs are computed), export it, re-load the file "
            "(torch.jit.load / onnx.checker + onnxruntime) and compare its outputs with PyTorch's. The export "
            "is valid for the input shape C,H,W it was planned for."
        ),
    )
    add_model_arguments(p)
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--input-size", metavar="C,H,W", help="input shape to plan for (default: the checkpoint's)")
    p.add_argument("--out", help="output file (default: next to the checkpoint, e.g. best.onnx)")
    p.add_argument("--no-freeze", action="store_true", help="export the dense model (no ROI plan) instead")
    p.add_argument("--atol", type=float, default=1e-4, help="accepted |export - PyTorch| (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tkn.export import export_model

    positive_number("--atol", args.atol)
    model, shape, _ = load_model(args, input_size(args))
    example = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    out = Path(args.out) if args.out else default_path(args)
    result = export_model(model, example, out, args.format, freeze=not args.no_freeze, atol=args.atol)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    kind = "frozen (ROI-only)" if result.frozen else "dense"
    batch = "any batch size" if result.dynamic_batch else f"batch size {example.shape[0]} only"
    print(f"wrote {result.path}: {kind} model, {args.format}, input {'x'.join(map(str, shape))} ({batch}); "
          f"max |export - PyTorch| = {result.max_abs_diff:.3g} (by {result.exporter})")
    for note in result.notes:
        print(f"note: {note}")
    return 0
