"""The L2/β sweep of the paper's Fig. 5: one TKN per ``(l2, beta)`` setting or speed-up budget, plus the dense
baseline, trained and read back into one row each.

:func:`run_sweep` trains every run with :func:`tkn.training.train` (the code of ``tkn train``) into its own
folder (:func:`setting_name`, ``speedup-<R>``, ``baseline``); each row gives the run's test error (the best epoch,
as the paper reports; for a budget run the last epoch, where the budget holds), its ROI-aware MACs and the
relative speed-up ``baseline MACs / model MACs`` (:func:`baseline_macs`: the dense baseline counted on the
dense model, whether or not it is trained). :func:`write_rows` writes ``sweep.csv`` and ``sweep.json``.

Example:
    >>> setting_name(1e-3, 2.0)
    'l2-0.001_beta-2'
    >>> baseline_macs("tkn6", 10, (1, 28, 28))
    ('cnn6', 368406912)
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tkn.io import atomic_write_text
from tkn.validate import at_least, each, non_negative, positive_number

__all__ = ["COLUMNS", "DEFAULTS", "run_sweep", "setting_name", "write_rows", "baseline_macs"]

#: Columns of ``sweep.csv`` / keys of each ``sweep.json`` row.
COLUMNS = (
    "kind", "model", "data", "l2", "beta", "target_speedup", "epochs", "best_epoch", "metric", "test_error",
    "final_test_error", "macs", "baseline_macs", "speedup", "collapsed", "params", "out",
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
