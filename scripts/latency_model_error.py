"""The latency model's error on trained windows, per layer and for the whole frozen model.

Usage (repository root)::

    python scripts/latency_model_error.py RUN [RUN ...] [--batch 64] [--threads 2] [--repeats 5] [--json FILE]

``RUN`` is a ``tkn train`` output folder, or one written by ``latency_budget_check.py --save`` (``best.pt``; the input
size is its model's ``input_size``). For each run the
latency model of its network is calibrated (``tkn.latency.calibrate``, cached) at ``--batch`` on ``--threads``,
the trained model is frozen at that batch, and in one interleaved run (``tkn.timing.interleaved``, as
``tkn bench`` times) the dense model, the frozen model and every frozen target layer alone on its own input
are timed. Printed per layer: its ROI MACs, the work the latency model prices it by (ROI MACs, or input-sparse
MACs for a layer fed by a producer, or ROI MACs where its "reduce" table is the cheaper), the plan freeze picked,
predicted and measured milliseconds; then the whole model's predicted and measured time and speed-up over the
dense model.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tkn.benchmark import dense_baseline, write_rows
from tkn.checkpoint import model_from_checkpoint
from tkn.engine.freeze import freeze
from tkn.latency import LatencyBudget, _layer_inputs, calibrate
from tkn.timing import BLOCK_S, interleaved


def check(run: Path, batch: int, threads: int, repeats: int) -> dict:
    model, payload = model_from_checkpoint(run / "best.pt")
    kwargs = payload["model"]["kwargs"]
    shape = (int(kwargs.get("in_channels", 1)), int(kwargs["input_size"]), int(kwargs["input_size"]))
    t0 = time.perf_counter()
    latency = calibrate(model, shape, batch, threads=threads)
    calibration_s = time.perf_counter() - t0
    budget = LatencyBudget(model, shape, 1.0, 1, batch_size=batch, latency_model=latency)
    roi, sparse = budget._layer_macs(), budget._sparse_macs()
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    frozen, dense = freeze(model, x), dense_baseline(model).eval()
    inputs = _layer_inputs(frozen, x)
    fns = {"dense": lambda: dense(x), "frozen": lambda: frozen(x)}
    fns.update({n: (lambda fl=frozen.get_submodule(n), xi=inputs[n]: fl(xi)) for n in roi})
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            t = interleaved(fns, repeats, min_block_s=BLOCK_S)
    finally:
        torch.set_num_threads(previous)
    layers = []
    predicted_layers = latency.layer_seconds(roi, sparse)
    for name in roi:
        priced_by, work = "roi", roi[name]
        if name in sparse:  # the input-sparse table, or the "reduce" table where the model took its smaller price
            priced_by, work = "input-sparse", float(sparse[name])
            if name in latency.reduce and torch.equal(predicted_layers[name], latency.reduce[name](
                    torch.tensor(roi[name], dtype=torch.float64))):
                priced_by, work = "reduce", roi[name]
        layers.append({"layer": name, "roi_macs": roi[name], "priced_by": priced_by, "work_macs": work,
                       "plan": frozen.get_submodule(name).plan.label,
                       "predicted_ms": float(predicted_layers[name]) * 1e3, "measured_ms": t[name]["min"] * 1e3})
    predicted = budget.predicted_seconds()
    return {"run": str(run), "batch": batch, "threads": threads, "calibration_s": calibration_s, "layers": layers,
            "predicted_ms": predicted * 1e3, "measured_ms": t["frozen"]["min"] * 1e3,
            "predicted_speedup": latency.dense_seconds / predicted,
            "measured_speedup": t["dense"]["min"] / t["frozen"]["min"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="tkn train output folders")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads timed on")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        row = check(run, args.batch, args.threads, args.repeats)
        rows.append(row)
        print(f"{run} at batch {args.batch} on {args.threads} threads (calibration {row['calibration_s']:.0f} s)")
        print("| layer | ROI MACs | priced by | work MACs | plan | predicted ms | measured ms | measured / predicted |")
        print("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |")
        for r in row["layers"]:
            print(f"| {r['layer']} | {r['roi_macs'] / 1e6:.1f} M | {r['priced_by']} | {r['work_macs'] / 1e6:.1f} M | "
                  f"{r['plan']} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | "
                  f"{r['measured_ms'] / r['predicted_ms']:.2f} |")
        print(f"| whole frozen model | | | | | {row['predicted_ms']:.2f} | {row['measured_ms']:.2f} | "
              f"{row['measured_ms'] / row['predicted_ms']:.2f} |")
        ratio = row["measured_speedup"] / row["predicted_speedup"]
        print(f"speed-up over the dense model: predicted {row['predicted_speedup']:.2f}x, measured "
              f"{row['measured_speedup']:.2f}x ({ratio:.2f})\n", flush=True)
    if args.json:
        write_rows(args.json, rows)


if __name__ == "__main__":
    main()
