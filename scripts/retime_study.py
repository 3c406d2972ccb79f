"""Time CNN6 at several widths against frozen TKN6 with learned windows, in one interleaved run (docs/study.md).

Usage (repository root): ``python scripts/retime_study.py [--repeats N] [--json FILE]``.

A model's speed does not depend on its weight values (a frozen layer's work is fixed by its ROIs and its
producer's), so the CNN6 widths are timed at their initialisation and the TKN6 points are rebuilt from the
packaged window files of trained models (``tkn.windowfile``) with seeded random weights; their test errors
come from the training runs named in each file's provenance and in docs/study.md. Each TKN6 is frozen at the
batch size it is timed at (``tkn.freeze``, default options). Prints milliseconds per batch and per image and
the speed-up over CNN6 width 1 at batch 1 and 64.
"""
from __future__ import annotations

import argparse

import torch

from tkn.benchmark import write_rows
from tkn.timing import BLOCK_S, interleaved
from tkn.engine import freeze
from tkn.flops import count
from tkn.models import create_model
from tkn.windowfile import load_windows

WIDTHS = (1.0, 0.5, 0.25, 0.125)
WINDOWS = ("tkn6-mnist-5x", "tkn6-mnist-12.9x", "tkn6-tlmnist28-4x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds per batch size (default 10)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = {f"CNN6 width {w:g}": create_model("cnn6", input_size=28, width=w).eval() for w in WIDTHS}
    tkns = {f"TKN6 {name}": load_windows(name)[0] for name in WINDOWS}
    macs = {name: count(m, (1, 28, 28)).macs for name, m in {**dense, **tkns}.items()}
    rows: dict[str, dict] = {name: {"macs": macs[name]} for name in macs}
    for batch in (1, 64):
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        models = {**dense, **{name: freeze(m, x) for name, m in tkns.items()}}
        with torch.no_grad():
            times = interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, args.repeats,
                                min_block_s=BLOCK_S)
        ref = times["CNN6 width 1"]["min"]
        for name, t in times.items():
            rows[name][f"batch{batch}_ms"] = 1e3 * t["min"]
            rows[name][f"speedup_b{batch}"] = ref / t["min"]
    print(f"{'point':<26} {'MACs':>8} {'b1 ms':>7} {'x b1':>6} {'b64 ms/img':>10} {'x b64':>6}")
    for name, r in rows.items():
        print(f"{name:<26} {r['macs'] / 1e6:>7.1f}M {r['batch1_ms']:>7.2f} {r['speedup_b1']:>6.2f} "
              f"{r['batch64_ms'] / 64:>10.3f} {r['speedup_b64']:>6.2f}")
    if args.json:
        write_rows(args.json, rows)


if __name__ == "__main__":
    main()
