"""``tkn show``: where a TKN's kernels look (paper Fig. 4 / Fig. 1) and a per-layer table.

Examples::

    tkn show runs/tdn10/best.pt                       # runs/tdn10/attention.png
    tkn show runs/tdn10/best.pt --input 3 --data tlmnist-5k --out act.png
    tkn show runs/tdn10/best.pt --table               # text table, no figure
    tkn show tdn10 --input-size 1,56,56 --out init.png  # a model name: its initialisation (Fig. 4 (a))
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from tkn.commands import parse_chw

__all__ = ["add_parser", "run", "load_model_arg", "parse_shape", "load_sample"]


def parse_shape(text: str | None, name: str = "--input-size") -> tuple[int, int, int] | None:
    """``"C,H,W"`` -> ``(C, H, W)``; ``None`` stays ``None`` (see :func:`tkn.commands.parse_chw`)."""
    return parse_chw(text, name)


def load_model_arg(source: str, input_size: tuple[int, int, int] | None = None) -> tuple[nn.Module, tuple, dict]:
    """A model from a checkpoint path or a registered model name (built at initialisation).

    Returns:
        ``(model, (C, H, W), payload)``: the model in ``eval()`` mode, its input
        shape (``input_size`` if given, else the checkpoint's recorded
        ``input_shape``, else the model's ``in_channels``/``input_size``) and
        the checkpoint payload (``{}`` for a model name).
    """
    from tkn.checkpoint import model_from_checkpoint

    payload: dict = {}
    if os.path.exists(source):
        model, payload = model_from_checkpoint(source)
    else:
        from tkn.models import create_model, list_models

        if source not in list_models():
            raise FileNotFoundError(
                f"{source!r} is neither a checkpoint file nor a model name (models: {', '.join(list_models())})"
            )
        kwargs = {}
        if input_size is not None:
            kwargs = {"in_channels": input_size[0], "input_size": tuple(input_size[1:])}
        model = create_model(source, **kwargs).eval()
    shape = input_size or payload.get("input_shape")
    if shape is None and hasattr(model, "in_channels") and hasattr(model, "input_size"):
        size = model.input_size
        shape = (model.in_channels, *((size, size) if isinstance(size, int) else size))
    if shape is None:
        raise ValueError("cannot tell the model's input size: pass --input-size C,H,W")
    return model, tuple(int(v) for v in shape), payload


def load_sample(spec: str, data: str | None, shape: tuple[int, int, int], split: str = "test",
                root: str | None = None) -> tuple[Tensor, str]:
    """One input ``(C, H, W)`` from a data set index (``--data`` needed) or an image/``.npy`` file.

    Files are read as floats in ``[0, 1]`` (PNG via matplotlib, ``.npy`` as is),
    turned into ``C`` channels (grey = mean of RGB) and resized to ``H x W``
    bilinearly if needed (the windows are relative, see :mod:`tkn.rescale`).
    """
    if spec.isdigit():
        if data is None:
            raise ValueError("--input INDEX needs --data NAME (e.g. --data tlmnist-5k)")
        from tkn.data import load

        dataset = load(data, split, root)
        index = int(spec)
        if index >= len(dataset):
            raise ValueError(f"--input {index} is out of range: {data} {split} has {len(dataset)} samples")
        image, target = dataset[index]
        return torch.as_tensor(image, dtype=torch.float32), f"{data} {split}[{index}], label {int(target)}"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--input {spec!r} is neither a sample index nor an image file")
    if path.suffix.lower() == ".npy":
        import numpy as np

        array = torch.from_numpy(np.load(path)).float()
    else:
        from tkn.viz import require_matplotlib

        require_matplotlib()
        import matplotlib.image

        array = torch.from_numpy(matplotlib.image.imread(str(path)).copy()).float()
        if array.max() > 1.0:
            array = array / 255.0
    if array.dim() == 2:
        array = array[None]
    elif array.dim() == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3):
        array = array[..., :3].permute(2, 0, 1)
    if array.dim() != 3:
        raise ValueError(f"--input {spec!r}: expected a 2-D or 3-D image, got shape {tuple(array.shape)}")
    c, h, w = shape
    if array.shape[0] != c:
        array = array.mean(0, keepdim=True).expand(c, -1, -1) if c in (1, 3) else None
        if array is None:
            raise ValueError(f"--input {spec!r}: cannot turn the image into {c} channels")
    if tuple(array.shape[-2:]) != (h, w):
        array = torch.nn.functional.interpolate(array[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return array.contiguous(), str(path)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "show",
        help="attention windows and ROIs of a TKN (paper Fig. 4), activations (Fig. 1), per-layer table",
        description=(
            "Draw every target layer's attention windows F_att with their ROIs (one row per layer, one tile per "
            "channel) or, with --input, each channel's attentively regularised activation for one sample. "
            "--table/--json print per-layer centres, scales, ROI areas and MACs instead."
        ),
    )
    p.add_argument("checkpoint", help="a checkpoint written by tkn train, or a model name (its initialisation)")
    p.add_argument("--out", help="figure file (.png/.pdf/.svg); default: next to the checkpoint "
                                 "(attention.png or activations.png), or none with --table/--json")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="only these target layers (qualified names)")
    p.add_argument("--input", metavar="INDEX_OR_IMAGE",
                   help="a sample index of --data, or an image/.npy file: show activations (Fig. 1 style)")
    p.add_argument("--data", help="data set for --input INDEX (e.g. tlmnist-5k)")
    p.add_argument("--data-root", help="folder of the data set's files (not needed for embedded data)")
    p.add_argument("--split", default="test", help="split for --input INDEX (default: test)")
    p.add_argument("--input-size", metavar="C,H,W", help="input shape (default: the checkpoint's)")
    p.add_argument("--max-channels", type=int, default=64, help="channels drawn per layer (default 64)")
    p.add_argument("--table", action="store_true", help="print the per-layer summary table")
    p.add_argument("--json", action="store_true", help="print the per-layer summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tkn import summary

    if args.max_channels < 1:
        raise ValueError(f"--max-channels must be a positive int, got {args.max_channels}")
    model, shape, payload = load_model_arg(args.checkpoint, parse_shape(args.input_size))
    rows = summary.layer_table(model, shape, args.layers)
    if not rows:
        raise ValueError(f"{args.checkpoint!r} has no target layers (tkn.TargetConv2d): nothing to show")
    name = payload.get("model", {}).get("name") or getattr(model, "spec", {}).get("name") or type(model).__name__
    out = args.out
    if out is None and not (args.table or args.json):
        folder = Path(args.checkpoint).parent if os.path.exists(args.checkpoint) else Path(".")
        out = folder / ("activations.png" if args.input else "attention.png")
    if out is not None:
        from tkn import viz

        origin = Path(args.checkpoint).name if payload else "initialisation"
        if "epoch" in payload:
            origin += f", epoch {payload['epoch']}"
        title = f"{name} ({origin}), input {'x'.join(map(str, shape))}"
        if args.input:
            sample, label = load_sample(args.input, args.data, shape, args.split, args.data_root)
            fig = viz.activation_figure(model, sample, layers=args.layers, max_channels=args.max_channels,
                                        title=f"{title}: {label}")
        else:
            fig = viz.attention_figure(model, shape, layers=args.layers, max_channels=args.max_channels,
                                       title=f"{title}: attention windows F_att, ROIs in red")
        path = viz.save_figure(fig, out)
        if not args.json:
            print(f"wrote {path}")
    if args.json:
        report = {
            "checkpoint": args.checkpoint, "model": name, "input_shape": list(shape),
            "layers": [{k: _finite(v) for k, v in r.items()} for r in rows],
            "total": {k: _finite(v) for k, v in summary.totals(rows).items()},
        }
        if out is not None:
            report["figure"] = str(out)
        print(json.dumps(report, indent=2))
    elif args.table:
        print(summary.format_table(rows))
    return 0
