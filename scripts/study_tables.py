"""Markdown tables of ``tkn frontier`` studies, as docs/study.md shows them.

    python scripts/study_tables.py frontier RUNS/frontier-tkn6-tlmnist28/final.json
    python scripts/study_tables.py latency RUNS/timing-latency-mnist/frontier.json
    python scripts/study_tables.py headline RUNS/headline-tkn6-tlmnist28/headline.json \
        RUNS/frontier-tkn6-tlmnist28/headline-dense.json --timing RUNS/timing-tlmnist28/frontier.json

``frontier``: one line per point of one timing run: MACs, FLOP ratio, test error, latency at batch 1 and
time per image at batch 64, both also as speed-ups over the width-1 dense point of the same run.
``latency``: one line per point of one timing run that holds every seed (a study trained with latency budgets):
test error over the seeds, MACs and FLOP ratio, mean timings and speed-ups, and each latency budget's measured
speed-up over the dense twin of its width, as a fraction of its target (the contract of ``tkn.LatencyBudget``:
0.8 to 1.25).
``headline``: one line per point of one or more studies trained with ``--seeds`` (their rows pooled): test
error as mean ± sample standard deviation over the seeds (and the range), the FLOP ratio reached, the measured
speed-ups of the seed-0 models (from ``--timing``, a ``--no-train`` re-timing that holds them all, or the first
study's own JSON), and the median epoch time of the runs (from their ``metrics.csv``).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any

from tkn.study.frontier import budget_of, time_column


def _label(row: dict[str, Any]) -> str:
    if row["kind"] == "dense":
        return f"{row['model'].upper()} width {row['width']:g}"
    min_roi = row["config"].get("min_roi")
    rule = "kernel-width ROIs" if min_roi is None else f"min ROI {min_roi} px"
    return f"{row['model'].upper()} budget {row['target_speedup']:g}x ({rule})"


def _key(row: dict[str, Any]) -> tuple:
    return row["kind"], row["width"], row["target_speedup"], row["config"].get("min_roi")


def _per_image_ms(row: dict[str, Any], batch: int) -> float:
    return 1e3 * row[time_column(batch)] / batch


def _dense_reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ref = [r for r in rows if r["kind"] == "dense" and r["width"] == 1.0 and not r.get("seed")]
    if not ref:
        raise SystemExit("the timing run has no width-1 dense point (seed 0) to compare with")
    return ref[0]


def frontier_table(report: dict[str, Any]) -> str:
    rows, big = report["rows"], max(report["batches"])
    ref = _dense_reference(rows)
    lines = [f"| point | MACs | FLOP ratio | test error (%) | batch 1 (ms) | speed-up b1 | batch {big} (ms/image) "
             f"| speed-up b{big} |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: (r["kind"] != "dense", -r["width"], r["target_speedup"] or 0)):
        b1, bb = _per_image_ms(r, 1), _per_image_ms(r, big)
        lines.append(f"| {_label(r)} | {r['macs'] / 1e6:.1f}M | {r['speedup']:.2f} | {r['test_error']:.2f} "
                     f"| {b1:.2f} | {_per_image_ms(ref, 1) / b1:.2f} | {bb:.3f} | {_per_image_ms(ref, big) / bb:.2f} |")
    return "\n".join(lines)


def _epoch_seconds(run: str) -> float:
    with open(Path(run) / "metrics.csv", newline="", encoding="utf-8") as f:
        return statistics.median(float(r["epoch_time_s"]) for r in csv.DictReader(f))


def headline_table(report: dict[str, Any], timing: dict[str, Any]) -> str:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in report["rows"]:
        groups.setdefault(_key(r), []).append(r)
    timed = {_key(r): r for r in timing["rows"] if not r.get("seed")}
    ref = _dense_reference(timing["rows"])
    big = max(timing["batches"])
    lines = [f"| {report['data']} | test error (%), mean ± sd | range | seeds | FLOP ratio | speed-up b1 "
             f"| speed-up b{big} | epoch (s) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != "dense", kv[0][2] or 0)):
        errors = [r["test_error"] for r in rows]
        sd = statistics.stdev(errors) if len(errors) > 1 else 0.0
        t = timed.get(key)
        b1 = f"{_per_image_ms(ref, 1) / _per_image_ms(t, 1):.2f}" if t else "n/a"
        bb = f"{_per_image_ms(ref, big) / _per_image_ms(t, big):.2f}" if t else "n/a"
        epoch = statistics.median(_epoch_seconds(r["run"]) for r in rows)
        lines.append(f"| {_label(rows[0])} | {statistics.fmean(errors):.2f} ± {sd:.2f} | {min(errors):.2f}–"
                     f"{max(errors):.2f} | {len(errors)} | {statistics.fmean(r['speedup'] for r in rows):.2f} "
                     f"| {b1} | {bb} | {epoch:.0f} |")
    return "\n".join(lines)


def _budget(row: dict[str, Any]) -> str:
    budget, batch = budget_of(row)
    if budget == "latency":
        return f"{row['target_speedup']:g}x measured at b{batch}"
    return f"{row['target_speedup']:g}x MACs"


def _latency_label(row: dict[str, Any]) -> str:
    if row["kind"] == "dense":
        return f"{row['model'].upper()} width {row['width']:g}"
    width = "" if row["width"] == 1 else f" width {row['width']:g}"
    return f"{row['model'].upper()}{width}, {_budget(row)}"


def latency_table(report: dict[str, Any]) -> str:
    """One line per point over its seeds, every seed timed in the same run: test error (mean ± sd), MACs,
    latency at batch 1 and time per image at the largest batch (means over the seeds) with their speed-ups
    over the width-1 dense point, and for a latency budget its measured speed-up over the dense twin of its
    width at the budget's batch, as a fraction of the target (min–max over the seeds)."""
    rows, big = report["rows"], max(report["batches"])
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["width"], r["target_speedup"], *budget_of(r)), []).append(r)

    def mean_ms(group: list[dict[str, Any]], batch: int) -> float:
        return statistics.fmean(_per_image_ms(r, batch) for r in group)

    dense = {key[1]: group for key, group in groups.items() if key[0] == "dense"}
    if 1.0 not in dense:
        raise SystemExit("the timing run has no width-1 dense point to compare with")
    ref1, refb = mean_ms(dense[1.0], 1), mean_ms(dense[1.0], big)
    lines = [f"| point | seeds | test error (%), mean ± sd | MACs | FLOP ratio | batch 1 (ms) | speed-up b1 "
             f"| batch {big} (ms/image) | speed-up b{big} | measured / target |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = sorted(groups.items(), key=lambda kv: (kv[0][0] != "dense", -kv[0][1], kv[0][4] or 0, kv[0][2] or 0))
    for (kind, width, target, budget, batch), group in order:
        errors = [r["test_error"] for r in group]
        sd = statistics.stdev(errors) if len(errors) > 1 else 0.0
        b1, bb = mean_ms(group, 1), mean_ms(group, big)
        hit = ""
        if kind == "tkn" and budget == "latency" and width in dense and batch in (1, big):
            twin = mean_ms(dense[width], batch)
            ratios = sorted(twin / _per_image_ms(r, batch) / target for r in group)
            hit = f"{ratios[0]:.2f}" if len(ratios) == 1 else f"{ratios[0]:.2f}–{ratios[-1]:.2f}"
        lines.append(f"| {_latency_label(group[0])} | {len(group)} | {statistics.fmean(errors):.2f} ± {sd:.2f} "
                     f"| {statistics.fmean(r['macs'] for r in group) / 1e6:.1f}M "
                     f"| {statistics.fmean(r['speedup'] for r in group):.2f} | {b1:.2f} | {ref1 / b1:.2f} "
                     f"| {bb:.3f} | {refb / bb:.2f} | {hit} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["frontier", "headline", "latency"])
    parser.add_argument("reports", type=Path, nargs="+", help="JSON files written by tkn frontier")
    parser.add_argument("--timing", type=Path, help="headline: the JSON whose timings to use (default: the first)")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.reports]
    if args.kind == "frontier":
        print(frontier_table(reports[0]))
    elif args.kind == "latency":
        print(latency_table(reports[0]))
    else:
        pooled = {**reports[0], "rows": [row for r in reports for row in r["rows"]]}
        timing = json.loads(args.timing.read_text()) if args.timing else reports[0]
        print(headline_table(pooled, timing))


if __name__ == "__main__":
    main()
