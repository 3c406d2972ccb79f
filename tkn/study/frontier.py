"""The frontier study: test error against measured time for narrower dense CNNs and for TKNs trained to a budget.

For a targeted model (``tkn6``, whose dense twin is ``cnn6``; ``tdn10`` -> ``dn10``) and one data set,
:func:`run_frontier` trains, with the same data and schedule (:func:`tkn.training.train`):

* the dense twin at every width multiplier (``width`` of :func:`tkn.models.create_model`), run folders
  ``dense-w<width>/``;
* the TKN at every speed-up budget, trained to it with :class:`tkn.MacBudget` (or :class:`tkn.LatencyBudget`)
  and the paper's L2 set to 0, as :func:`tkn.study.sweep.run_sweep` does, run folders ``tkn-speedup-<R>/``; at
  full width by default, and at every TKN width asked for (composites: a narrower TKN, run folders
  ``tkn-w<width>-speedup-<R>/``, whose budget counts against the dense twin of the same width). A budget above
  the model's reachable maximum (:func:`tkn.budget.max_speedup`, which depends on ``min_roi``) is skipped, with
  its maximum logged and recorded (:func:`split_reachable`).

Each point is then read back from its checkpoint (the best epoch of a dense run, as the paper reports; the last
epoch of a budget run, where the budget holds), and all points are timed by the ``timer`` the caller passes
(``tkn frontier`` passes :func:`tkn.commands.frontier.time_points`: TKNs frozen with :func:`tkn.freeze`, every
model timed in turn). :func:`write_frontier` writes the rows (columns in :func:`columns`), a summary over seeds
(:func:`summarize`) and the whole report, each atomically (:mod:`tkn.io`). A row's ``collapsed`` names the
criteria of :func:`tkn.training.collapse.detect_collapse` that its run failed (empty for a healthy run).

Example:
    >>> [p.folder for p in plan_points("tkn6", widths=[1, 0.5], speedups=[4], seeds=[0, 1])]
    ['dense-w1', 'dense-w1-seed1', 'dense-w0.5', 'dense-w0.5-seed1', 'tkn-speedup-4', 'tkn-speedup-4-seed1']
    >>> columns([1, 64])[-6:]
    ['latency_b1_s', 'time_b64_s', 'throughput_b64', 'checkpoint', 'run', 'config_file']
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tkn.io import atomic_write_text
from tkn.study.sweep import baseline_macs
from tkn.validate import at_least, each, non_negative_int, positive_int, positive_number

if TYPE_CHECKING:
    from torch import nn

    from tkn.training import TrainConfig

__all__ = [
    "DEFAULTS", "WIDTHS", "SPEEDUPS", "BATCHES", "HEAD", "TAIL", "SUMMARY_HEAD", "Point", "PointTimer",
    "plan_points", "split_reachable", "point_config", "load_point", "point_row", "columns", "time_column",
    "add_times", "budget_of", "summarize", "write_frontier", "run_frontier",
]

#: The schedule shared by every run when no ``--config`` is given (``milestones``: the last epoch).
DEFAULTS: dict[str, Any] = {
    "model": "tkn6", "data": "tlmnist28-5k", "epochs": 8, "batch_size": 64, "lr": 0.02, "min_roi": 3,
    "window_lr_scale": 10.0,
}
WIDTHS = (1.0, 0.5, 0.25, 0.125)
SPEEDUPS = (2.0, 4.0, 8.0, 16.0, 32.0)
BATCHES = (1, 64)

#: Columns of ``frontier.csv`` before the timing columns (see :func:`columns`).
HEAD = (
    "kind", "model", "data", "width", "target_speedup", "seed", "speedup", "macs", "dense_macs", "params",
    "metric", "test_error", "epoch", "epoch_rule", "final_test_error", "epochs", "collapsed",
)
TAIL = ("checkpoint", "run", "config_file")


@dataclass(frozen=True)
class Point:
    """One point of the frontier: a dense twin at a width, or a TKN (at a width) at a budget.

    Attributes:
        kind: ``"dense"`` or ``"tkn"``.
        model: registry name of the network trained.
        width: channel multiplier.
        target_speedup: the budget of a TKN, ``None`` for dense points.
        seed: the run's seed (``None``: the config's).
    """

    kind: str
    model: str
    width: float
    target_speedup: float | None = None
    seed: int | None = None

    @property
    def folder(self) -> str:
        """Run-folder name: ``dense-w0.5``, ``tkn-speedup-8`` (full width) or ``tkn-w0.5-speedup-8``, plus
        ``-seed<S>`` for a seed other than 0."""
        if self.kind == "dense":
            name = f"dense-w{self.width:g}"
        else:
            name = "tkn-" + ("" if self.width == 1 else f"w{self.width:g}-") + f"speedup-{self.target_speedup:g}"
        return name + (f"-seed{self.seed}" if self.seed else "")

    @property
    def epoch_rule(self) -> str:
        """Which epoch the point reports: ``"best"`` (dense) or ``"last"`` (budget: it holds from its ramp's end)."""
        return "best" if self.kind == "dense" else "last"

    @property
    def checkpoint_name(self) -> str:
        """``best.pt`` or ``last.pt``, after :attr:`epoch_rule`."""
        return f"{self.epoch_rule}.pt"

    @property
    def overrides(self) -> dict[str, Any]:
        """Config keys of this point (a budget run: ``l2 = 0`` and ``target_speedup``, as ``tkn sweep``)."""
        seed = {} if self.seed is None else {"seed": self.seed}
        if self.kind == "dense":
            return {"model": self.model, "width": self.width, **seed}
        return {"model": self.model, "width": self.width, "l2": 0.0, "target_speedup": self.target_speedup, **seed}


class PointTimer(Protocol):
    """What :func:`run_frontier` times the points with: ``timer(models, input_shape, batches, repeats, log)``.

    Args:
        models: ``name -> (point, model)``, every model in ``eval()`` mode.
        input_shape: ``(C, H, W)``.
        batches: batch sizes to time at.
        repeats: timed repetitions per batch size.
        log: progress lines.

    Returns:
        ``name -> {batch: seconds per forward pass}``.
    """

    def __call__(self, models: dict[str, tuple[Point, nn.Module]], input_shape: Sequence[int],
                 batches: Sequence[int], repeats: int, log: Callable[[str], None]) -> dict[str, dict[int, float]]:
        ...


def plan_points(targeted: str, widths: Sequence[float], speedups: Sequence[float],
                seeds: Sequence[int | None] = (None,), tkn_widths: Sequence[float] = (1.0,)) -> list[Point]:
    """The points of a study: the dense twin of ``targeted`` at ``widths``, ``targeted`` at every width of
    ``tkn_widths`` and every budget of ``speedups``, each once per seed.

    Args:
        targeted: a targeted registry name with a dense twin (``tkn6``, ``tdn10``...).
        widths: channel multipliers of the dense twin (finite, > 0; duplicates dropped; may be empty).
        speedups: budgets ``R >= 1`` of the TKNs (duplicates dropped; may be empty).
        seeds: seeds of every point (``None``: the config's).
        tkn_widths: channel multipliers of the TKNs (default: full width only).

    Example:
        >>> [p.folder for p in plan_points("tkn6", [0.5], [3], tkn_widths=[1, 0.5])]
        ['dense-w0.5', 'tkn-speedup-3', 'tkn-w0.5-speedup-3']

    Raises:
        ValueError: ``targeted`` has no dense twin, a width, budget or seed is out of range, or there is no point.
    """
    from tkn.models import baseline_of

    dense = baseline_of(targeted)
    if dense is None:
        raise ValueError(f"--model must be a targeted model with a dense twin (e.g. tkn6, tdn10), got {targeted!r}")
    seeds = list(dict.fromkeys(seeds)) or [None]
    each("--seeds", [s for s in seeds if s is not None], non_negative_int)
    widths = dict.fromkeys(each("--widths", widths, positive_number))
    speedups = dict.fromkeys(each("--target-speedup", speedups, lambda name, v: at_least(name, v, 1)))
    tkn_widths = dict.fromkeys(each("--tkn-widths", tkn_widths, positive_number))
    if speedups and not tkn_widths:
        raise ValueError("--tkn-widths needs at least one width when budgets are given")
    kinds = [("dense", dense, w, None) for w in widths]
    kinds += [("tkn", targeted, float(w), r) for w in tkn_widths for r in speedups]
    if not kinds:
        raise ValueError("a study needs at least one point: give --widths or --target-speedup values")
    return [Point(kind, model, w, r, seed) for kind, model, w, r in kinds for seed in seeds]


def point_config(point: Point, base: dict[str, Any], out: Path, *, recipe: str | None = None,
                 sets: Sequence[str] = ()) -> TrainConfig:
    """The resolved :class:`~tkn.training.TrainConfig` of ``point``: ``base`` < ``point.overrides`` < ``sets``.

    Args:
        point: the point.
        base: overrides shared by every run (``data``, ``epochs``...).
        out: the study folder; the run goes to ``out / point.folder``.
        recipe: YAML config or packaged recipe (as ``tkn train --config``).
        sets: ``key=value`` overrides (as ``tkn train --set``).

    Raises:
        ValueError: ``sets`` change the model, width or budget that the point itself fixes.
    """
    from tkn.training import resolve_config

    cfg = resolve_config(recipe, {**base, **point.overrides, "out": str(out / point.folder)}, sets)
    clashes = [k for k, v in point.overrides.items() if getattr(cfg, k) != v]
    if clashes:
        raise ValueError(f"--set must not change {', '.join(clashes)}: each point fixes them "
                         "(give dense widths with --widths, budgets with --target-speedup)")
    return cfg


def split_reachable(points: Sequence[Point], cfg: TrainConfig, num_classes: int, input_shape: Sequence[int],
                    log: Callable[[str], None] = print) -> tuple[list[Point], list[dict[str, Any]]]:
    """Drop the budgets above the largest speed-up the TKN of ``cfg`` can reach at its point's width; log and
    return them.

    Args:
        points: the study's points.
        cfg: the config of one TKN point (its model and ``min_roi``, with each point's width, decide the maximum).
        num_classes, input_shape: the data's (``input_shape`` is ``(C, H, W)``).
        log: receives one line per skipped budget, naming the maximum.

    Returns:
        ``(kept points, skipped rows)``; a skipped row has ``kind, model, width, target_speedup,
        max_speedup, min_roi, reason``.
    """
    import dataclasses

    from tkn.budget import max_speedup
    from tkn.training.components import build_model

    def reach_at(width: float) -> float:
        model = build_model(dataclasses.replace(cfg, width=width), num_classes, tuple(input_shape))
        if cfg.budget == "latency":  # the measured maximum, from the latency model (calibrated once, cached)
            from tkn.latency import LatencyBudget

            return LatencyBudget(model, tuple(input_shape), 1.0, 1, batch_size=cfg.latency_batch,
                                 threads=cfg.latency_threads).max_speedup
        return max_speedup(model, tuple(input_shape))

    reach = {w: reach_at(w) for w in dict.fromkeys(p.width for p in points if p.kind == "tkn")}
    for w, r in reach.items():
        what = f"measured at batch {cfg.latency_batch}" if cfg.budget == "latency" else "MACs"
        log(f"{cfg.model} at width {w:g} with min_roi={cfg.min_roi}: largest speed-up {r:.2f}x ({what})")
    kept, skipped = [], []
    for p in points:
        if p.kind == "tkn" and p.target_speedup > reach[p.width]:
            shape = "x".join(map(str, input_shape))
            what = f"measured at batch {cfg.latency_batch}, " if cfg.budget == "latency" else ""
            at = "" if p.width == 1 else f" at width {p.width:g}"
            reason = (f"{p.model}{at} on {shape} inputs with min_roi={cfg.min_roi} reaches at most "
                      f"{reach[p.width]:.2f}x ({what}every ROI at its minimum width)")
            log(f"target speed-up {p.target_speedup:g} skipped: {reason}")
            skipped.append({"kind": p.kind, "model": p.model, "width": p.width, "target_speedup": p.target_speedup,
                            "max_speedup": reach[p.width], "min_roi": cfg.min_roi, "reason": reason})
        else:
            kept.append(p)
    return kept, skipped


def load_point(point: Point, out: Path) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The network a point reports, its checkpoint, and the metrics of its run's last epoch.

    Args:
        point: the point.
        out: the study folder.

    Returns:
        ``(model, payload, last)``: the model (``eval()``) and payload of ``best.pt`` or
        ``last.pt`` (:attr:`Point.checkpoint_name`), and the ``metrics`` row of ``last.pt``
        with the run's collapse verdict added under ``"collapsed"``
        (:func:`tkn.training.collapse.checkpoint_collapse`).

    Raises:
        FileNotFoundError: the run lacks one of these checkpoints.
    """
    from tkn.checkpoint import load_checkpoint, model_from_checkpoint
    from tkn.training.collapse import checkpoint_collapse

    run_dir = out / point.folder
    for name in dict.fromkeys((point.checkpoint_name, "last.pt")):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{str(run_dir / name)!r} does not exist: train the point first "
                                    "(without --no-train)")
    model, payload = model_from_checkpoint(run_dir / point.checkpoint_name)
    last = payload if point.checkpoint_name == "last.pt" else load_checkpoint(run_dir / "last.pt")
    return model, payload, {**last["metrics"], "collapsed": checkpoint_collapse(last)}


def point_row(point: Point, model: nn.Module, payload: dict[str, Any], last: dict[str, Any], out: Path, metric: str,
              dense_macs: int) -> dict[str, Any]:
    """The row of one point (timing columns are added by the caller).

    Args:
        point: the point.
        model: its network, loaded from ``payload``.
        payload: its checkpoint (its ``metrics`` row gives the test error and epoch).
        last: the metrics row of the run's last epoch (``final_test_error``, ``epochs``), with the
            run's collapse verdict under ``"collapsed"`` (``None`` or ``{"reasons": [...], ...}``).
        out: the study folder.
        metric: ``"test_error"`` (in %) or ``"test_mse"``.
        dense_macs: MACs of the width-1 dense twin: ``speedup = dense_macs / macs``.
    """
    from tkn.flops import count

    report = count(model, tuple(payload["input_shape"]))
    cfg = payload["config"]
    run_dir = out / point.folder
    return {
        "kind": point.kind, "model": point.model, "data": cfg["data"], "width": point.width,
        "target_speedup": point.target_speedup, "seed": cfg.get("seed"), "speedup": dense_macs / report.macs,
        "macs": report.macs,
        "dense_macs": dense_macs, "params": report.params, "metric": metric,
        "test_error": payload["metrics"][metric], "epoch": int(payload["epoch"]), "epoch_rule": point.epoch_rule,
        "final_test_error": last[metric], "epochs": int(last["epoch"]),
        "collapsed": "+".join(last["collapsed"]["reasons"]) if last.get("collapsed") else None,
        "checkpoint": str(run_dir / point.checkpoint_name), "run": str(run_dir),
        "config_file": str(run_dir / "config.yaml"), "config": cfg,
    }


def time_column(batch: int) -> str:
    """Timing column of one batch size: ``latency_b1_s`` at batch 1, else ``time_b<B>_s`` (seconds per batch)."""
    return "latency_b1_s" if batch == 1 else f"time_b{batch}_s"


def columns(batches: Sequence[int]) -> list[str]:
    """All columns of ``frontier.csv`` for these batch sizes (``throughput_b<B>``, images/s, for ``B > 1``)."""
    timing = []
    for b in batches:
        timing += [time_column(b)] + ([f"throughput_b{b}"] if b > 1 else [])
    return [*HEAD, *timing, *TAIL]


def add_times(row: dict[str, Any], times: dict[int, float]) -> None:
    """Add the timing columns of ``times`` (``batch -> seconds``) to ``row``."""
    for b, seconds in times.items():
        row[time_column(b)] = seconds
        if b > 1:
            row[f"throughput_b{b}"] = b / seconds


#: Columns of the summary over seeds (``<name>-summary.csv``) before its timing columns.
SUMMARY_HEAD = ("kind", "model", "data", "width", "target_speedup", "budget", "latency_batch", "seeds",
                "test_error_mean", "test_error_std", "test_error_min", "test_error_max", "speedup_mean", "macs_mean")


def budget_of(row: dict[str, Any]) -> tuple[str | None, int | None]:
    """``(budget, latency_batch)`` of a TKN row's run config (``("macs", None)``, ``("latency", 64)``...);
    ``(None, None)`` for a dense row."""
    if row["kind"] != "tkn":
        return None, None
    cfg = row.get("config") or {}
    budget = cfg.get("budget", "macs")
    return budget, (cfg.get("latency_batch", 64) if budget == "latency" else None)


def summarize(rows: Sequence[dict[str, Any]], batches: Sequence[int]) -> list[dict[str, Any]]:
    """One row per point over its seeds: the test error's mean, sample standard deviation (0 for one seed),
    minimum and maximum, the mean FLOP speed-up and MACs, and the mean of each timing column. Runs of the same
    budget counted differently (MACs, or latency at another batch) are different points."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["model"], r["width"], r["target_speedup"], *budget_of(r)), []).append(r)
    out = []
    for (kind, model, width, target, budget, latency_batch), group in groups.items():
        errors = [r["test_error"] for r in group]
        mean = sum(errors) / len(errors)
        std = math.sqrt(sum((e - mean) ** 2 for e in errors) / (len(errors) - 1)) if len(errors) > 1 else 0.0
        row = {"kind": kind, "model": model, "data": group[0]["data"], "width": width, "target_speedup": target,
               "budget": budget, "latency_batch": latency_batch,
               "seeds": len(group), "test_error_mean": mean, "test_error_std": std, "test_error_min": min(errors),
               "test_error_max": max(errors), "speedup_mean": sum(r["speedup"] for r in group) / len(group),
               "macs_mean": sum(r["macs"] for r in group) / len(group)}
        for b in batches:
            col = time_column(b)
            row[col] = sum(r[col] for r in group) / len(group)
        out.append(row)
    return out


def _write_csv(path: Path, names: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (columns ``names``, ``None`` as empty) to ``path`` atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(names), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in names})
    atomic_write_text(path, buf.getvalue())


def write_frontier(report: dict[str, Any], out: str | Path, name: str = "frontier") -> tuple[Path, Path]:
    """Write ``<name>.csv`` (the rows), ``<name>-summary.csv`` (:func:`summarize`) and ``<name>.json``
    (the whole report) into ``out``, each atomically."""
    out = Path(out)
    _write_csv(out / f"{name}.csv", columns(report["batches"]), report["rows"])
    summary_names = [*SUMMARY_HEAD, *(time_column(b) for b in report["batches"])]
    _write_csv(out / f"{name}-summary.csv", summary_names, report["summary"])
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2) + "\n")
    return out / f"{name}.csv", out / f"{name}.json"


def _train_points(points: Sequence[Point], base: dict[str, Any], out: Path, recipe: str | None,
                  sets: Sequence[str], resume: bool, overwrite: bool, log: Callable[[str], None]) -> None:
    """Train every point as ``tkn sweep`` trains its runs (a finished run resumed is not retrained).

    Args:
        points, base, out, recipe, sets: see :func:`point_config`.
        resume, overwrite, log: see :func:`run_frontier`.
    """
    from tkn.training import train

    for i, point in enumerate(points, 1):
        cfg = point_config(point, base, out, recipe=recipe, sets=sets)
        again = resume and (out / point.folder / "last.pt").exists()
        log(f"[{i}/{len(points)}] {cfg.model} {point.folder}: {cfg.epochs} epochs -> {cfg.out}")
        train(cfg, resume=again, overwrite=overwrite and not again, log=lambda line: log(f"    {line}"))


def _existing(points: Sequence[Point], out: Path, log: Callable[[str], None]) -> tuple[list[Point], list[dict]]:
    """``(points with a run in out, skipped rows of the others)``; logs each point left out.

    Args:
        points: the study's points.
        out: the study folder.
        log: receives one line per point without a run.
    """
    kept, skipped = [], []
    for p in points:
        if (out / p.folder / p.checkpoint_name).exists():
            kept.append(p)
        else:
            log(f"{p.folder} skipped: no {p.checkpoint_name} in {out / p.folder}")
            skipped.append({"kind": p.kind, "model": p.model, "width": p.width, "target_speedup": p.target_speedup,
                            "reason": f"no run: {p.checkpoint_name} missing"})
    return kept, skipped


def run_frontier(
    base: dict[str, Any],
    out: str | Path,
    *,
    timer: PointTimer,
    widths: Sequence[float] = WIDTHS,
    speedups: Sequence[float] = SPEEDUPS,
    seeds: Sequence[int | None] = (None,),
    tkn_widths: Sequence[float] = (1.0,),
    batches: Sequence[int] = BATCHES,
    repeats: int = 10,
    recipe: str | None = None,
    sets: Sequence[str] = (),
    train: bool = True,
    plan_only: bool = False,
    measure: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (unless ``train`` is false), read back and time every point; return the report.

    Args:
        base: config overrides shared by all runs (``model`` names the targeted model, ``data``, ``epochs``...).
        out: study folder; each point's run goes to ``out / point.folder``.
        timer: times the points read back (see :class:`PointTimer`).
        widths: dense-twin widths.
        speedups: TKN budgets; those above the reachable maximum are skipped and reported.
        seeds: every point is trained once per seed (``None``: the config's seed).
        tkn_widths: widths of the TKNs (each trained at every budget of ``speedups``).
        batches: batch sizes to time at (one interleaved run each).
        repeats: timed repetitions per batch size.
        recipe: YAML config or packaged recipe (as ``tkn train --config``).
        sets: ``key=value`` overrides for every run (as ``tkn train --set``).
        train: ``False``: measure the runs already in ``out`` only (points without one are skipped).
        plan_only: stop after planning: return ``{"planned": [point folders], "skipped": [...]}`` having
            trained and timed nothing (the reachability check calibrates and caches the latency models of
            latency budgets, so that parallel studies started next find them measured on a quiet machine).
        measure: ``False``: stop after training: return ``{"trained": [point folders], "skipped": [...]}``
            having timed nothing (studies that train in parallel jobs are timed afterwards, together, by a
            run with ``train=False`` on a quiet machine).
        resume: continue runs whose folder holds a ``last.pt`` (a finished run is not retrained).
        overwrite: start runs afresh even if their folder holds a run.
        log: receives progress lines.

    Returns:
        ``{"model", "dense", "data", "input_shape", "metric", "dense_macs", "batches", "repeats",
        "rows", "summary", "skipped", "conditions"}``; ``rows`` have the keys of :func:`columns` plus
        ``config``; ``summary`` is :func:`summarize` of the rows.
    """
    from tkn.benchmark import conditions
    from tkn.training import resolve_config
    from tkn.training.loaders import build_data

    out = Path(out)
    batches = list(dict.fromkeys(each("--batch", batches, positive_int)))
    positive_int("--repeats", repeats)
    if not batches:
        raise ValueError("--batch needs at least one batch size")
    probe = resolve_config(recipe, {**base, "out": str(out / "probe")}, sets)
    points = plan_points(probe.model, widths, speedups, seeds, tkn_widths)
    data = build_data(probe)
    metric = "test_error" if data.task == "classification" else "test_mse"
    tkn_points = [p for p in points if p.kind == "tkn"]
    skipped: list[dict[str, Any]] = []
    if tkn_points:
        tkn_cfg = point_config(tkn_points[0], base, out, recipe=recipe, sets=sets)
        points, skipped = split_reachable(points, tkn_cfg, data.num_classes, data.input_shape, log)
    if plan_only:
        return {"planned": [p.folder for p in points], "skipped": skipped}
    if train:
        _train_points(points, base, out, recipe, sets, resume, overwrite, log)
        if not measure:
            return {"trained": [p.folder for p in points], "skipped": skipped}
    else:
        points, missing = _existing(points, out, log)
        skipped += missing
    if not points:
        raise ValueError(f"no point to measure in {str(out)!r}")
    dense_name, dense_macs = baseline_macs(probe.model, data.num_classes, data.input_shape)
    rows, models = [], {}
    for p in points:
        model, payload, last = load_point(p, out)
        rows.append(point_row(p, model, payload, last, out, metric, dense_macs))
        models[p.folder] = (p, model)
    times = timer(models, data.input_shape, batches, repeats, log)
    for row, p in zip(rows, points):
        add_times(row, times[p.folder])
    return {
        "model": probe.model, "dense": dense_name, "data": probe.data, "input_shape": list(data.input_shape),
        "metric": metric, "dense_macs": dense_macs, "batches": batches, "repeats": repeats,
        "rows": rows, "summary": summarize(rows, batches), "skipped": skipped, "conditions": conditions(),
    }
