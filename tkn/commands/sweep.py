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
import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tkn.commands import add_study_arguments
from tkn.io import atomic_write_text
from tkn.validate import at_least, each, non_negative, positive_number

__all__ = ["COLUMNS", "DEFAULTS", "add_parser", "run", "run_sweep", "setting_name", "write_rows", "baseline_macs"]

#: Columns of ``sweep.csv`` / keys of each ``sweep.json`` row.
COLUMNS = (
    "kind", "model", "data", "l2", "beta", "target_speedup", "epochs", "best_epoch", "metric", "test_error", "final_test_error",
    "macs", "baseline_macs", "speedup", "collapsed", "params", "out",
)

#: The documented small default (used when ``--config`` is not given).
DEFAULTS: dict[str, Any] = {
    "model": "tdn10", "data": "tlmnist-5k", "epochs": 6, "milestones": [4], "max_train_samples": 2000,
    "batch_size": 64, "l2": (3e-3, 1e-2), "beta": (1.0, 2.0),
}


def setting_name(l2: float, beta: float) -> str:
    """Run-folder name of one setting, e.g. ``l2-0.001_beta-2``."""
    return f"l2-{l2:g}_beta-{beta:g}"


def baseline_macs(model: str, num_classes: int, input_shape: Sequence[int]) -> tuple[str, int]:
    """``(baseline name, its MACs)`` for the dense baseline of ``model`` at ``input_shape`` (C, H, W)."""
    from tkn import flops
    from tkn.models import baseline_of, create_model
    from tkn.models.registry import shape_kwargs

    name = baseline_of(model)
    if name is None:
        raise ValueError(f"model {model!r} has no dense baseline: sweep a targeted model (e.g. tdn10, tkn6)")
    dense = create_model(name, num_classes=num_classes, **shape_kwargs(name, input_shape))
    return name, int(flops.count(dense.eval(), tuple(input_shape)).macs)


def _row(result, kind: str, l2: float | None, beta: float | None, metric: str, base_macs: int,
         target: float | None = None) -> dict[str, Any]:
    final = result.final or {}
    # a budget holds from the end of its ramp on: its row is the last epoch (the paper's rows are the best one)
    best = final if kind == "budget" else (result.best or {})
    macs = best.get("macs")
    return {
        "kind": kind, "model": result.config.model, "data": result.config.data, "l2": l2, "beta": beta,
        "target_speedup": target, "epochs": result.epochs_completed, "best_epoch": best.get("epoch"), "metric": metric,
        "test_error": best.get(metric), "final_test_error": final.get(metric),
        "macs": macs, "baseline_macs": base_macs,
        "speedup": base_macs / macs if macs else None,
        "collapsed": "+".join(result.collapsed["reasons"]) if result.collapsed else None,
        "params": result.params, "out": str(result.out),
    }


def run_sweep(
    base: dict[str, Any],
    l2s: Sequence[float],
    betas: Sequence[float],
    out: str | Path,
    *,
    recipe: str | None = None,
    sets: Sequence[str] = (),
    baseline: bool = True,
    speedups: Sequence[float] = (),
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every ``(l2, beta)`` setting (and the dense baseline) and return one row per run.

    Args:
        base: config overrides shared by all runs (``epochs``, ``max_train_samples``...).
        l2s, betas: the grid; every pair is trained (either may be empty when ``speedups`` is not).
        speedups: budgets: one run per value with ``target_speedup`` set and ``l2 = 0``.
        out: sweep folder; each run goes to ``out/<setting_name>`` (``out/baseline``).
        recipe: YAML config or packaged recipe (as ``tkn train --config``).
        sets: ``key=value`` overrides (as ``tkn train --set``).
        baseline: also train the dense baseline.
        resume: continue runs whose folder holds a ``last.pt`` (a finished run
            is not retrained; its rows are read back).
        overwrite: start runs afresh even if their folder holds a run.
        log: receives progress lines.

    Returns:
        Rows with the keys of :data:`COLUMNS`; ``test_error`` is the best
        epoch's test metric named by ``metric``: ``test_error`` in % for
        classification, ``test_mse`` for regression data.
    """
    from tkn.models import baseline_of
    from tkn.training import resolve_config, train
    from tkn.training.loaders import build_data

    if bool(l2s) != bool(betas) or not (l2s or speedups):
        raise ValueError("give an --l2 and --beta grid (both), --target-speedup values, or all three")
    l2s = each("--l2", l2s, non_negative)
    betas = each("--beta", betas, positive_number)
    speedups = each("--target-speedup", speedups, lambda name, v: at_least(name, v, 1))
    out = Path(out)
    probe = resolve_config(recipe, {**base, "out": str(out / "probe")}, sets)
    if baseline_of(probe.model) is None:
        raise ValueError(f"model {probe.model!r} has no dense baseline: sweep a targeted model (e.g. tdn10, tkn6)")
    data = build_data(probe)
    metric = "test_error" if data.task == "classification" else "test_mse"
    base_name, base_macs = baseline_macs(probe.model, data.num_classes, data.input_shape)

    jobs = [("tkn", l2, beta, {"l2": l2, "beta": beta}, setting_name(l2, beta)) for beta in betas for l2 in l2s]
    jobs += [("budget", 0.0, None, {"l2": 0.0, "target_speedup": r}, f"speedup-{r:g}") for r in speedups]
    if baseline:
        jobs.append(("baseline", None, None, {"model": base_name}, "baseline"))
    rows = []
    for i, (kind, l2, beta, extra, folder) in enumerate(jobs, 1):
        cfg = resolve_config(recipe, {**base, **extra, "out": str(out / folder)}, sets)
        again = resume and (out / folder / "last.pt").exists()
        log(f"[{i}/{len(jobs)}] {cfg.model} {folder}: {cfg.epochs} epochs -> {cfg.out}")
        result = train(cfg, resume=again, overwrite=overwrite and not again, log=lambda line: log(f"    {line}"))
        rows.append(_row(result, kind, l2, beta, metric, base_macs, extra.get("target_speedup")))
    return rows


def write_rows(rows: Sequence[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """Write ``sweep.csv`` and ``sweep.json`` (one row per setting) into ``out``, each atomically."""
    out = Path(out)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    atomic_write_text(out / "sweep.json", json.dumps(list(rows), indent=2) + "\n")
    return out / "sweep.csv", out / "sweep.json"


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
