"""``tkn show``: where a TKN's kernels look (paper Fig. 4 / Fig. 1) and a per-layer table.

Examples::

    tkn show --checkpoint runs/tdn10/best.pt                 # runs/tdn10/attention.png
    tkn show --checkpoint runs/tdn10/best.pt --sample 3 --data tlmnist-5k --out act.png
    tkn show --checkpoint runs/tdn10/best.pt --table         # text table, no figure
    tkn show --model tdn10 --input-size 1,56,56 --out init.png  # its initialisation (Fig. 4 (a))
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from tkn.commands import add_model_arguments, input_size, load_model
from tkn.validate import positive_int

__all__ = ["add_parser", "run", "load_sample"]


def load_sample(spec: str, data: str | None, shape: tuple[int, int, int], split: str = "test",
                root: str | None = None) -> tuple[Tensor, str]:
    """One input ``(C, H, W)`` from a data set index (``--data`` needed) or an image/``.npy`` file.

    Files are read as floats in ``[0, 1]`` (PNG via matplotlib, ``.npy`` as is),
    turned into ``C`` channels (grey = mean of RGB) and resized to ``H x W``
    bilinearly if needed (the windows are relative, see :mod:`tkn.rescale`).
    """
    if spec.isdigit():
        if data is None:
            raise ValueError("--sample INDEX needs --data NAME (e.g. --data tlmnist-5k)")
        from tkn.data import load

        dataset = load(data, split, root)
        index = int(spec)
        if index >= len(dataset):
            raise ValueError(f"--sample {index} is out of range: {data} {split} has {len(dataset)} samples")
        image, target = dataset[index]
        return torch.as_tensor(image, dtype=torch.float32), f"{data} {split}[{index}], label {int(target)}"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--sample {spec!r} is neither a sample index nor an image file")
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
        raise ValueError(f"--sample {spec!r}: expected a 2-D or 3-D image, got shape {tuple(array.shape)}")
    c, h, w = shape
    if array.shape[0] != c:
        array = array.mean(0, keepdim=True).expand(c, -1, -1) if c in (1, 3) else None
        if array is None:
            raise ValueError(f"--sample {spec!r}: cannot turn the image into {c} channels")
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
            "channel) or, with --sample, each channel's attentively regularised activation for one sample. "
            "--table/--json print per-layer centres, scales, ROI areas and MACs instead."
        ),
    )
    add_model_arguments(p)
    p.add_argument("--out", help="figure file (.png/.pdf/.svg); default: next to the checkpoint "
                                 "(attention.png or activations.png), or none with --table/--json")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="only these target layers (qualified names)")
    p.add_argument("--sample", metavar="INDEX_OR_IMAGE",
                   help="a sample index of --data, or an image/.npy file: show activations (Fig. 1 style)")
    p.add_argument("--data", help="data set for --sample INDEX (e.g. tlmnist-5k)")
    p.add_argument("--data-root", help="folder of the data set's files (not needed for embedded data)")
    p.add_argument("--split", default="test", help="split for --sample INDEX (default: test)")
    p.add_argument("--input-size", metavar="C,H,W", help="input shape (default: the checkpoint's)")
    p.add_argument("--max-channels", type=int, default=64, help="channels drawn per layer (default 64)")
    p.add_argument("--table", action="store_true", help="print the per-layer summary table")
    p.add_argument("--json", action="store_true", help="print the per-layer summary as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tkn import summary

    positive_int("--max-channels", args.max_channels)
    model, shape, payload = load_model(args, input_size(args))
    rows = summary.layer_table(model, shape, args.layers)
    if not rows:
        raise ValueError(f"{args.checkpoint or args.model!r} has no target layers (tkn.TargetConv2d): nothing to show")
    name = payload.get("model", {}).get("name") or getattr(model, "spec", {}).get("name") or type(model).__name__
    out = args.out
    if out is None and not (args.table or args.json):
        folder = Path(args.checkpoint).parent if args.checkpoint else Path(".")
        out = folder / ("activations.png" if args.sample else "attention.png")
    if out is not None:
        from tkn import viz

        origin = Path(args.checkpoint).name if payload else "initialisation"
        if "epoch" in payload:
            origin += f", epoch {payload['epoch']}"
        title = f"{name} ({origin}), input {'x'.join(map(str, shape))}"
        if args.sample:
            sample, label = load_sample(args.sample, args.data, shape, args.split, args.data_root)
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
