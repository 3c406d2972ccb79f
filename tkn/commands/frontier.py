"""``tkn frontier``: test error against measured time for narrower dense CNNs and for TKNs trained to a budget.

For a targeted model (``--model tkn6``, whose dense twin is ``cnn6``;
``tdn10`` -> ``dn10``) and one data set, trains with the same data and
schedule (:func:`tkn.training.train`, the code of ``tkn train``):

* the dense twin at every ``--widths`` multiplier (``width`` of
  :func:`tkn.models.create_model`), run folders ``dense-w<width>/``;
* the TKN at every ``--target-speedup`` budget, trained to it with
  :class:`tkn.MacBudget` (``--budget latency``: :class:`tkn.LatencyBudget`)
  and the paper's L2 set to 0 as ``tkn sweep --target-speedup`` does, run
  folders ``tkn-speedup-<R>/``; at full width, and at every other
  ``--tkn-widths`` width (composites, ``tkn-w<width>-speedup-<R>/``, their
  budget counted against the dense twin of their width). A budget above the
  model's reachable maximum (:func:`tkn.budget.max_speedup`, which depends on
  ``min_roi``; the latency model's for latency budgets) is skipped, with its
  maximum logged and recorded. ``--plan`` stops there.

Each point is then read back from its checkpoint (the best epoch of a dense
run, as the paper reports; the last epoch of a budget run, where the budget
holds: the same choice as ``tkn sweep``), the TKNs are frozen with
:func:`tkn.freeze`, and all points are timed in one interleaved run per
``--batch`` size (every repetition runs every model once, in turn:
``measure_interleaved`` of ``tkn demo``). Writes into ``--out``:
``frontier.csv`` and ``frontier.json`` (one row per point, columns in
:func:`tkn.study.frontier.columns`; the JSON adds the skipped budgets, the machine conditions
and the arguments) and ``frontier.png`` (test error against time per image,
one panel per batch size). Each file is replaced atomically (:mod:`tkn.io`).
A row's ``collapsed`` names the criteria of
:func:`tkn.training.collapse.detect_collapse` that its run failed (empty for a
healthy run): a budget too close to the maximum can leave a network at chance.

An interrupted study continues with the same arguments and ``--resume``:
finished runs are read back, not retrained; an unfinished run continues from
its last complete epoch; a run that had not finished its first epoch starts
again. The timing, which is not stored per run, is measured again.

Without ``--config`` the runs share a small CPU schedule (:data:`tkn.study.frontier.DEFAULTS`:
the demo's choices, the lr divided by 10 for the last epoch).

Examples::

    tkn frontier --model tkn6 --data tlmnist28-5k --epochs 8 --out runs/frontier-tkn6-tlmnist28
    tkn frontier --model tdn10 --data tlmnist-5k --config paper/tdn10-tlmnist-cauchy --epochs 6 \\
        --target-speedup 2 3 --out runs/frontier-tdn10
    tkn frontier --out runs/frontier-tkn6-tlmnist28 --no-train --batch 1 16 --repeats 30
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tkn.commands import add_study_arguments
from tkn.commands.demo import measure_interleaved
from tkn.study.frontier import BATCHES, DEFAULTS, SPEEDUPS, WIDTHS, Point, run_frontier, time_column, write_frontier

if TYPE_CHECKING:
    from torch import nn

__all__ = ["time_points", "add_parser", "run"]


def time_points(models: dict[str, tuple[Point, nn.Module]], input_shape: Sequence[int], batches: Sequence[int],
                repeats: int, log: Callable[[str], None] = print) -> dict[str, dict[int, float]]:
    """Median seconds per forward pass of every model at every batch size, all models interleaved.

    TKNs are frozen (:func:`tkn.freeze`) once per batch size, for that batch;
    dense points run as they are, in ``eval()`` mode.

    Args:
        models: ``name -> (point, model)``.
        input_shape: ``(C, H, W)``.
        batches: batch sizes; one interleaved run each.
        repeats: timed repetitions (after 2 warm-up rounds).
        log: progress lines.

    Returns:
        ``name -> {batch: seconds}``.
    """
    import torch

    import tkn

    times: dict[str, dict[int, float]] = {name: {} for name in models}
    for b in batches:
        example = torch.rand(b, *input_shape, generator=torch.Generator().manual_seed(0))
        runnable = {name: tkn.freeze(model.eval(), example) if point.kind == "tkn" else model.eval()
                    for name, (point, model) in models.items()}
        log(f"timing {len(runnable)} models interleaved at batch {b} ({repeats} repeats)")
        for name, seconds in measure_interleaved(runnable, tuple(input_shape), batch=b, repeats=repeats).items():
            times[name][b] = seconds
    return times


def _figure(report: dict[str, Any], out: Path, name: str, log: Callable[[str], None]) -> Path | None:
    """Write ``<name>.png`` of ``report`` into ``out``; ``None`` (and a logged line) without matplotlib."""
    from tkn import viz

    label = "test MSE" if report["metric"] == "test_mse" else "test error (%)"
    title = f"{report['dense']} widths vs {report['model']} budgets on {report['data']}"
    rows = report["rows"]
    if any(s["seeds"] > 1 for s in report["summary"]):  # one mark per point: the mean over its seeds, ± sd
        rows = [{**s, "test_error": s["test_error_mean"], "macs": s["macs_mean"]} for s in report["summary"]]
        counts = sorted({s["seeds"] for s in report["summary"]})
        seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        title += f" (mean ± sd over {seeds} seeds)"
    try:
        fig = viz.frontier_figure(rows, [(time_column(b), b) for b in report["batches"]], title=title, ylabel=label)
        return viz.save_figure(fig, out / f"{name}.png")
    except RuntimeError as exc:  # matplotlib missing: the tables are still written
        log(f"no figure: {exc}")
        return None


def _table(report: dict[str, Any]) -> str:
    """One line per point: error, MACs, speed-up and milliseconds per batch at each batch size."""
    b = report["batches"]
    head = f"{'point':<18} {'error':>7} {'MACs':>9} {'speed-up':>8} " + " ".join(f"{'ms@b' + str(x):>9}" for x in b)
    lines = [head]
    for r in report["rows"]:
        times = " ".join(f"{1e3 * r[time_column(x)]:>9.3f}" for x in b)
        lines.append(f"{Path(r['run']).name:<18} {r['test_error']:>7.2f} {r['macs'] / 1e6:>8.2f}M "
                     f"{r['speedup']:>7.2f}x {times}")
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tkn frontier`` on the ``tkn`` command line."""
    p = subparsers.add_parser(
        "frontier", help="train narrower dense CNNs and budgeted TKNs, time them all: error vs measured time",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config or packaged recipe shared by every run "
                                                    "(default: the small schedule of DEFAULTS)")
    p.add_argument("--model", help="targeted model (default tkn6, or the config's); its dense twin gets --widths")
    p.add_argument("--data", help="data set (default tlmnist28-5k, or the config's)")
    p.add_argument("--widths", type=float, nargs="*", default=list(WIDTHS), metavar="W",
                   help="widths of the dense twin (default 1 0.5 0.25 0.125; none: TKNs only)")
    p.add_argument("--target-speedup", type=float, nargs="*", default=list(SPEEDUPS), metavar="R",
                   help="speed-up budgets of the TKN (default 2 4 8 16 32; none: dense widths only)")
    p.add_argument("--tkn-widths", type=float, nargs="+", default=[1.0], metavar="W",
                   help="widths of the TKN trained at every budget (default 1; e.g. 1 0.5 adds the composite "
                        "of a narrower TKN, whose budget counts against the dense twin of its width)")
    p.add_argument("--budget", choices=("macs", "latency"),
                   help="what --target-speedup counts: 'macs' (default, tkn.MacBudget) or 'latency' (the frozen "
                        "model's measured speed-up on this machine, tkn.LatencyBudget)")
    p.add_argument("--latency-batch", type=int, metavar="N",
                   help="batch size at which a latency budget's speed-up is measured (default 64)")
    p.add_argument("--latency-feedback", type=int, metavar="K",
                   help="times a latency budget measures the model during training and corrects its prediction "
                        "(default 3 below batch 16, else 0; 0 for training jobs side by side: they would measure "
                        "each other)")
    p.add_argument("--latency-threads", type=int, metavar="N",
                   help="threads on which a latency budget's speed-up is measured (default: the process's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[None], metavar="S",
                   help="train every point once per seed (default: the config's seed); <name>-summary.csv "
                        "gives mean and spread")
    p.add_argument("--name", default="frontier", metavar="NAME",
                   help="base name of the written table, summary, JSON and figure (default frontier)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per run")
    p.add_argument("--out", default="runs/frontier", metavar="DIR", help="study folder (default runs/frontier)")
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCHES), metavar="B",
                   help="batch sizes to time at (default 1 64)")
    p.add_argument("--repeats", type=int, default=10, metavar="N", help="timed repetitions per batch size (default 10)")
    p.add_argument("--no-train", action="store_true", help="only read back, time and plot the runs already in --out")
    p.add_argument("--train-only", action="store_true",
                   help="train the points, then stop: no timing, table or figure (for studies trained in parallel "
                        "jobs and timed together afterwards with --no-train)")
    p.add_argument("--plan", action="store_true",
                   help="list the points and the skipped budgets, then stop (latency budgets: calibrates and caches "
                        "their latency models, e.g. on a quiet machine before studies train in parallel)")
    p.add_argument("--json", action="store_true", help="print frontier.json's content on stdout")
    add_study_arguments(p)
    p.set_defaults(func=run)
    return p


def _base(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys shared by every run: :data:`DEFAULTS` without ``--config``, then the flags given."""
    base: dict[str, Any] = dict(DEFAULTS) if args.config is None else {}
    for key in ("model", "data", "epochs", "budget", "latency_batch", "latency_threads", "latency_feedback"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.config is None:
        base["milestones"] = [base["epochs"] - 1] if base["epochs"] > 1 else []
    base["progress"] = args.progress
    return base


def run(args: argparse.Namespace) -> int:
    """Execute ``tkn frontier``; returns the exit code."""
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if args.train_only and (args.no_train or args.plan):
        raise ValueError("--train-only trains and stops: not with --no-train or --plan")
    report = run_frontier(_base(args), args.out, timer=time_points, widths=args.widths, speedups=args.target_speedup,
                          seeds=args.seeds, tkn_widths=args.tkn_widths, batches=args.batch, repeats=args.repeats,
                          recipe=args.config, sets=args.sets, train=not args.no_train, plan_only=args.plan,
                          measure=not args.train_only, resume=args.resume, overwrite=args.overwrite, log=log)
    if args.plan:
        print("\n".join(report["planned"]) if report["planned"] else "no point to train")
        return 0
    if args.train_only:
        print("trained " + (", ".join(report["trained"]) if report["trained"] else "no point"))
        return 0
    report["arguments"] = {k: v for k, v in vars(args).items() if k != "func"}
    figure = _figure(report, Path(args.out), args.name, log)
    report["figure"] = None if figure is None else str(figure)
    csv_path, json_path = write_frontier(report, args.out, args.name)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(_table(report))
    print(f"wrote {csv_path}, {json_path}" + (f", {figure}" if figure else ""))
    return 0
