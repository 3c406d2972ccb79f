"""The contract of tkn.LatencyBudget, checked as a benchmark (docs/budget.md, "Training to a measured speed-up").

Usage (repository root): ``python scripts/latency_budget_check.py [--steps N] [--feedback K] [--json FILE]
[--save DIR]``.

For each (target, batch) of TARGETS: TKN6 (28x28, min_roi=1, the paper's L2 off) trained on mnist-5k in a plain
PyTorch loop (seed 0, batch 64 drawn with replacement from the 4,000 training digits, SGD with Nesterov
momentum 0.9, lr 0.02, the window parameters at 10x) with ``tkn.LatencyBudget(..., batch_size=batch)``; then
the frozen model is timed against the dense CNN6 at that batch in one interleaved run, as ``tkn bench`` times
it (tkn.benchmark.bench_model). Prints the budget's prediction, the measured speed-up, their ratio to the
target (the contract: in [0.8, 1.25]) and the test error on the 1,000 test digits (below 15%).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import tkn
from tkn.benchmark import bench_model, write_rows
from tkn.checkpoint import save_checkpoint
from tkn.data import load
from tkn.latency import LatencyBudget
from tkn.models import create_model

#: (target speed-up, batch size it is measured at)
TARGETS = [(4.0, 64), (2.5, 1)]


def train(target: float, batch: int, steps: int, x: torch.Tensor, y: torch.Tensor, feedback: int | None = None
          ) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, l2=0.0, min_roi=1)
    t0 = time.perf_counter()
    budget = LatencyBudget(model, (1, 28, 28), target, steps, batch_size=batch, feedback=feedback)
    calibration_s = time.perf_counter() - t0
    windows = [p for n, p in model.named_parameters() if n.endswith((".m", ".s"))]
    weights = [p for n, p in model.named_parameters() if not n.endswith((".m", ".s"))]
    opt = torch.optim.SGD([{"params": weights}, {"params": windows, "lr": 0.2}], lr=0.02, momentum=0.9,
                          nesterov=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx]) + budget.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tkn.clip_parameters_(model)
        budget.step()
    return model.eval(), {"predicted": budget.speedup(), "max_speedup": budget.max_speedup,
                          "calibration_s": calibration_s,
                          "calibration_checks": budget.latency.checks, "feedback": budget.measurements}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps per run (default 250: 4 epochs)")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds (default 10)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--feedback", type=int, metavar="K",
                        help="measurements of the model during training (LatencyBudget's feedback; default: the "
                             "budget's, 3 below batch 16 and 0 from there on)")
    parser.add_argument("--save", metavar="DIR", help="also save each trained model as DIR/<target>x-b<batch>/best.pt "
                                                      "(for scripts/latency_model_error.py)")
    parser.add_argument("--batch", type=int, nargs="+", choices=sorted({b for _, b in TARGETS}),
                        help="check only the targets at these batch sizes (default: all)")
    args = parser.parse_args()
    train_set, test_set = load("mnist-5k", "train"), load("mnist-5k", "test")
    x, y = train_set.images.float() / 255, train_set.targets
    xt, yt = test_set.images.float() / 255, test_set.targets
    rows = []
    for target, batch in [(t, b) for t, b in TARGETS if not args.batch or b in args.batch]:
        model, info = train(target, batch, args.steps, x, y, args.feedback)
        if args.save:
            save_checkpoint(Path(args.save) / f"{target:g}x-b{batch}" / "best.pt",
                            {"model": model.spec, "model_state": model.state_dict()})
        with torch.no_grad():
            error = (model(xt).argmax(1) != yt).float().mean().item() * 100
        timing = bench_model(model, (1, 28, 28), batch, args.repeats)
        measured = timing["speedup_vs_dense"]
        row = {"target": target, "batch": batch, "steps": args.steps, "predicted": info["predicted"],
               "measured": measured, "measured_over_target": measured / target, "test_error": error,
               "flop_ratio": timing["flop_ratio"], "plans": [p["plan"] for p in timing["plans"]],
               "calibration_s": info["calibration_s"], "calibration_checks": info["calibration_checks"],
               "first_call_measured": timing["first_call_speedup_vs_dense"], "feedback": info["feedback"],
               "ok": 0.8 <= measured / target <= 1.25 and error < 15}
        rows.append(row)
        print(f"target {target:g}x at batch {batch}: predicted {info['predicted']:.2f}x, measured {measured:.2f}x "
              f"({measured / target:.2f} of the target), FLOP ratio {timing['flop_ratio']:.1f}, test error "
              f"{error:.1f}%, calibration {info['calibration_s']:.0f} s, plans {row['plans']}: "
              f"{'within' if row['ok'] else 'OUTSIDE'} the contract", flush=True)
    if args.json:
        write_rows(args.json, rows)


if __name__ == "__main__":
    main()
