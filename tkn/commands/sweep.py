"""``tkn sweep``: the error / speed-up trade-off of the paper's Fig. 5, trained and plotted.

For every pair of ``--l2`` and ``--beta`` values, and for every
``--target-speedup`` budget (:class:`tkn.MacBudget`, the paper's L2 then set
to 0), one TKN is trained with the training library
(:func:`tkn.training.train`, the same code as ``tkn train``), plus the dense
baseline of the model (``tdn10 -> dn10``, ``tkn6 -> cnn6``).
Each run's best checkpoint (the paper reports the best epoch; for a budget
run, the last epoch, where the budget holds) gives its test error and its
ROI-aware MACs; the relative speed-up factor is, as in Fig. 5,
``baseline MACs / model MACs`` (the baseline's MACs are counted on the dense
model, whether or not it is trained). Writes into ``--out``:

* one run folder per setting (``l2-0.001_beta-2/``, ``speedup-4/``, ``baseline/``), as ``tkn train``;
* ``sweep.csv`` and ``sweep.json``: one row per setting (columns in :data:`COLUMNS`; ``collapsed``
  names the criteria of :func:`tkn.training.collapse.detect_collapse` that a run failed, empty for a
  healthy run);
* ``sweep.png``: test error against speed-up, one curve per β, baseline marked.

Every file is replaced atomically (:mod:`tkn.io`). A sweep that was
interrupted continues with the same arguments and ``--resume``: finished runs
are read back, not retrained; an unfinished run continues from its last
complete epoch; a run that had not finished its first epoch starts again.

The default (no ``--config``) is a small sweep of TDN10 on the embedded
``tlmnist-5k``: L2 ∈ {3e-3, 1e-2} × β ∈ {1, 2}, plus DN10: 5 runs of 6 epochs
on 2,000 training images (batch 64, SGD with Nesterov momentum, lr 0.1 then
0.01 from epoch 5), evaluated on the 1,000 test images. The L2 values are far
larger than the paper's (1e-4..2e-4) because such a run takes ~190 optimiser
steps where the paper's take ~9,000, and with momentum 0.9 the penalty
shrinks ``s`` by about ``2·lr·L2/(1-0.9) = 2·L2`` of its value per step at
lr 0.1. It is a small-scale picture of the trade-off, not a reproduction;
wall time is in docs/figures.md.

Examples::

    tkn sweep --out runs/sweep
    tkn sweep --config paper/tkn6-mnist --l2 1e-4 2e-4 4e-4 --beta 1 2 4 --out runs/fig5
    tkn sweep --model tkn6 --data mnist-5k --target-speedup 2 4 8 16 --set min_roi=2 --out runs/fig5-budget
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tkn.commands import add_study_arguments
from tkn.study.sweep import DEFAULTS, run_sweep, setting_name, write_rows

__all__ = ["add_parser", "run"]


def _table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'setting':<24} {'test error':>10} {'MACs':>10} {'speed-up':>9}"]
    for r in rows:
        if r["kind"] == "baseline":
            name = "baseline " + r["model"]
        elif r["kind"] == "budget":
            name = f"target speed-up {r['target_speedup']:g}"
        else:
            name = setting_name(r["l2"], r["beta"])
        err = "-" if r["test_error"] is None else f"{r['test_error']:.2f}"
        macs = "-" if r["macs"] is None else f"{r['macs'] / 1e6:.2f}M"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        flag = f"  collapsed ({r['collapsed']})" if r.get("collapsed") else ""
        lines.append(f"{name:<24} {err:>10} {macs:>10} {speed:>9}{flag}")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        help="train one TKN per (L2, beta) and plot error vs speed-up (paper Fig. 5)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--config", metavar="FILE", help="YAML config or packaged recipe shared by every run "
                                                    "(default: TDN10 on tlmnist-5k, see DEFAULTS)")
    p.add_argument("--model", help="targeted model to sweep (default tdn10, or the config's)")
    p.add_argument("--data", help="data set (default tlmnist-5k, or the config's)")
    p.add_argument("--l2", type=float, nargs="+", metavar="V", help="L2 values (default 3e-3 1e-2)")
    p.add_argument("--beta", type=float, nargs="+", metavar="V", help="beta values (default 1 2)")
    p.add_argument("--target-speedup", type=float, nargs="+", metavar="R", default=[],
                   help="train one TKN per speed-up budget (tkn.MacBudget, L2 0) instead of, or beside, the grid")
    p.add_argument("--out", default="runs/sweep", metavar="DIR", help="sweep folder (default runs/sweep)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per run")
    p.add_argument("--max-train-samples", type=int, metavar="N", help="train on a seeded subset of N samples")
    p.add_argument("--max-test-samples", type=int, metavar="N", help="evaluate on a seeded subset of N samples")
    p.add_argument("--no-baseline", action="store_true", help="do not train the dense baseline")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_study_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    base: dict[str, Any] = {}
    if args.config is None:
        base = {k: v for k, v in DEFAULTS.items() if k not in ("l2", "beta")}
    for key in ("model", "data", "epochs", "max_train_samples", "max_test_samples"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    base["progress"] = args.progress
    grid_default = args.config is None and not args.target_speedup
    l2s = args.l2 or (DEFAULTS["l2"] if grid_default else [])
    betas = args.beta or (DEFAULTS["beta"] if grid_default else [])
    if not (l2s and betas) and not args.target_speedup:
        raise ValueError("with --config, give the grid explicitly (--l2 V [V ...] --beta V [V ...]) "
                         "or budgets (--target-speedup R [R ...])")
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    rows = run_sweep(base, l2s, betas, args.out, recipe=args.config, sets=args.sets, baseline=not args.no_baseline,
                     speedups=args.target_speedup,
                     resume=args.resume, overwrite=args.overwrite, log=log)
    csv_path, json_path = write_rows(rows, args.out)
    figure = None
    try:
        from tkn import viz

        label = "test MSE" if rows and rows[0]["metric"] == "test_mse" else "test error (%)"
        title = None
        if rows:
            models = " vs ".join(dict.fromkeys(r["model"] for r in rows))
            title = f"{models} on {rows[0]['data']}, {rows[0]['epochs']} epochs: error vs speed-up"
        figure = viz.save_figure(viz.sweep_figure(rows, ylabel=label, title=title), Path(args.out) / "sweep.png")
    except RuntimeError as exc:  # matplotlib missing: the table is still written
        log(f"no figure: {exc}")
    if args.json:
        print(json.dumps({"rows": rows, "csv": str(csv_path), "json": str(json_path),
                          "figure": None if figure is None else str(figure)}, indent=2))
        return 0
    print(_table(rows))
    print(f"wrote {csv_path}, {json_path}" + (f", {figure}" if figure else ""))
    return 0
