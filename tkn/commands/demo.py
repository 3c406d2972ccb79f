"""``tkn demo``: the main job on the embedded data, no download.

Trains DN10 and TDN10 (Cauchy window, L2 = 1e-4, β = 2: the paper's Table 3
row) on ``tlmnist-5k`` with a **reduced schedule** sized for a few minutes on
2 CPU cores (the paper trains 20 epochs on 60,000 images), then compares them
side by side: test error, parameters, ROI-aware MACs, relative speed-up
(dense MACs / ROI MACs), and measured CPU latency (batch 1) and throughput
(batch 64; ``--quick``: 8) of the dense DN10 against the frozen TDN10 (:func:`tkn.freeze`),
timed interleaved so that both see the same machine load. Writes
``report.md``, ``report.json`` and ``attention.png`` (the learned windows and
ROIs of every target layer) into ``--out``.

Example::

    tkn demo --out runs/demo            # a few minutes
    tkn demo --quick                    # seconds: a smoke test of the whole pipeline
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


__all__ = ["add_parser", "DemoSchedule", "run_demo", "measure_interleaved", "format_table", "run"]

DATA = "tlmnist-5k"
RECIPES = {"dn10": "paper/dn10-tlmnist", "tdn10": "paper/tdn10-tlmnist-cauchy"}


@dataclass(frozen=True)
class DemoSchedule:
    """The reduced training schedule of the demo (both models get the same one)."""

    epochs: int = 2
    train_samples: int | None = 2000
    test_samples: int | None = None
    batch_size: int = 64
    lr: float = 0.1
    latency_repeats: int = 30
    throughput_batch: int = 64
    throughput_repeats: int = 5
    l2: float = 1e-4
    beta: float = 2.0

    @property
    def tdn10_label(self) -> str:
        return f"TDN10 (Cauchy, L2 {self.l2:g}, β {self.beta:g})"

    @classmethod
    def quick(cls) -> "DemoSchedule":
        """A few batches: checks the whole pipeline in seconds (numbers are meaningless)."""
        return cls(epochs=1, train_samples=32, test_samples=32, batch_size=32, latency_repeats=3, throughput_batch=8,
                   throughput_repeats=1)

    @property
    def milestones(self) -> list[int]:
        """Divide the lr by 10 for the last epoch (when there is more than one)."""
        return [self.epochs - 1] if self.epochs > 1 else []


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tkn demo`` on the ``tkn`` command line."""
    p = subparsers.add_parser("demo", help="train DN10 and TDN10 on tlmnist-5k and compare them (no download)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, help=f"epochs per model (default {DemoSchedule.epochs})")
    p.add_argument("--train-samples", type=int, metavar="N",
                   help=f"training subset of tlmnist-5k (default {DemoSchedule.train_samples}; 0 = all 4,000)")
    p.add_argument("--l2", type=float, metavar="X",
                   help=f"TDN10's scale penalty (default {DemoSchedule.l2:g}, the paper's; a short schedule needs "
                        "a larger one, e.g. 3e-3, for the windows to shrink)")
    p.add_argument("--beta", type=float, metavar="B", help=f"TDN10's β build-up (default {DemoSchedule.beta:g})")
    p.add_argument("--quick", action="store_true", help="a few batches only (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars on stderr")
    p.add_argument("--json", action="store_true", help="print report.json's content on stdout")
    p.set_defaults(func=run)
    return p


def _time_once(fn, x) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def measure_interleaved(models: dict[str, Any], example_shape: tuple[int, int, int], *, batch: int, repeats: int,
                        warmup: int = 2, progress=None) -> dict[str, float]:
    """Median seconds per forward pass of each model at ``batch``, the models timed alternately.

    Each repetition runs every model once, in turn, so a change of machine
    load affects all of them alike. Runs under ``torch.inference_mode``.
    """
    import torch

    x = torch.rand(batch, *example_shape, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    rounds = range(warmup + repeats)
    with torch.inference_mode():
        for i in (progress(rounds) if progress else rounds):
            for name, model in models.items():
                dt = _time_once(model, x)
                if i >= warmup:
                    times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def format_table(report: dict[str, Any]) -> str:
    """The side-by-side comparison as a Markdown table."""
    a, b = report["models"]["dn10"], report["models"]["tdn10"]
    tb = report["schedule"]["throughput_batch"]
    rows = [
        ("test error (%)", f"{a['test_error']:.2f}", f"{b['test_error']:.2f}"),
        ("params", f"{a['params']:,}", f"{b['params']:,}"),
        ("MACs / image", _human(a["macs"]), _human(b["macs"])),
        ("relative speed-up (MACs)", "1.00x", f"{a['macs'] / b['macs']:.2f}x"),
        ("CPU latency, batch 1 (ms)", f"{1e3 * a['latency_s']:.2f}", f"{1e3 * b['latency_s']:.2f}"),
        (f"CPU throughput, batch {tb} (img/s)", f"{a['throughput']:.0f}", f"{b['throughput']:.0f}"),
        ("measured speed-up, batch 1", "1.00x", f"{a['latency_s'] / b['latency_s']:.2f}x"),
        (f"measured speed-up, batch {tb}", "1.00x", f"{b['throughput'] / a['throughput']:.2f}x"),
    ]
    head = ("", "DN10 (dense)", report["tdn10_label"][:-1] + "; frozen)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    fmt = lambda r: "| " + " | ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "| " + " | ".join(("-" * w) if i == 0 else ("-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    return "\n".join([fmt(head), sep, *map(fmt, rows)])


def _schedule(args: argparse.Namespace) -> DemoSchedule:
    base = DemoSchedule.quick() if args.quick else DemoSchedule()
    changes: dict[str, Any] = {}
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        changes["epochs"] = args.epochs
    if args.train_samples is not None:
        if args.train_samples < 0:
            raise ValueError(f"--train-samples must be >= 0 (0 = all), got {args.train_samples}")
        changes["train_samples"] = args.train_samples or None
    for key in ("l2", "beta"):
        value = getattr(args, key, None)
        if value is not None:
            if not value >= 0:
                raise ValueError(f"--{key} must be a non-negative number, got {value}")
            changes[key] = value
    return DemoSchedule(**{**base.__dict__, **changes})


def run_demo(out: str | Path, schedule: DemoSchedule, *, seed: int = 0, progress: bool = True,
             log=print) -> dict[str, Any]:
    """Train both models, compare them and write the report files; returns the report dict."""
    import platform

    import torch

    import tkn
    from tkn.checkpoint import model_from_checkpoint
    from tkn.flops import count
    from tkn.training import resolve_config, train

    out = Path(out)
    log(f"tkn demo: DN10 vs {schedule.tdn10_label} on {DATA}. REDUCED schedule: {schedule.epochs} epoch(s) on "
        f"{schedule.train_samples or 'all'} training images, batch {schedule.batch_size}, lr {schedule.lr} "
        f"(the paper: 20 epochs on 60,000). Output in {out}")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "data": DATA,
        "tdn10_label": schedule.tdn10_label,
        "schedule": {**schedule.__dict__, "milestones": schedule.milestones, "seed": seed,
                     "note": "reduced schedule for a CPU demo; not the paper's 20-epoch recipe"},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "models": {},
    }
    nets = {}
    for name, recipe in RECIPES.items():
        log(f"[{name}] training")
        cfg = resolve_config(recipe, {
            "data": DATA, "epochs": schedule.epochs, "batch_size": schedule.batch_size, "lr": schedule.lr,
            "milestones": schedule.milestones, "max_train_samples": schedule.train_samples,
            "max_test_samples": schedule.test_samples, "seed": seed, "out": str(out / name),
            "progress": progress, "device": "cpu",
            **({"l2": schedule.l2, "beta": schedule.beta} if name == "tdn10" else {}),
        })
        result = train(cfg, overwrite=True, log=lambda line, n=name: log(f"[{n}] {line}"))
        model, payload = model_from_checkpoint(out / name / "best.pt")
        shape = tuple(payload["input_shape"])
        flops = count(model, shape)
        nets[name] = (model, shape)
        report["models"][name] = {
            "recipe": recipe, "best_epoch": result.best["epoch"], "test_error": result.best["test_error"],
            "test_loss": result.best["test_loss"], "params": flops.params, "macs": flops.macs,
            "dense_macs": flops.dense_macs, "checkpoint": str(out / name / "best.pt"),
        }
    shape = nets["dn10"][1]
    dense = nets["dn10"][0].eval()
    tb = schedule.throughput_batch
    log(f"freezing TDN10 (ROI plans for batch 1 and batch {tb})")
    frozen1 = tkn.freeze(nets["tdn10"][0].eval(), torch.rand(1, *shape))
    frozen_tb = tkn.freeze(nets["tdn10"][0].eval(), torch.rand(tb, *shape))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        def bar(it, desc=""):
            return tqdm(it, desc=desc, file=sys.stderr, leave=False)

    log("timing DN10 (dense) and TDN10 (frozen) interleaved on the CPU")
    lat = measure_interleaved({"dn10": dense, "tdn10": frozen1}, shape, batch=1, repeats=schedule.latency_repeats,
                              progress=bar and (lambda it: bar(it, "latency, batch 1")))
    thr = measure_interleaved({"dn10": dense, "tdn10": frozen_tb}, shape, batch=tb, repeats=schedule.throughput_repeats,
                              warmup=1, progress=bar and (lambda it: bar(it, f"throughput, batch {tb}")))
    for name in ("dn10", "tdn10"):
        report["models"][name]["latency_s"] = lat[name]
        report["models"][name]["throughput"] = tb / thr[name]
    report["models"]["tdn10"]["speedup_macs"] = report["models"]["dn10"]["macs"] / report["models"]["tdn10"]["macs"]
    report["wall_time_s"] = time.perf_counter() - started

    from tkn.viz import attention_figure, save_figure

    fig = attention_figure(nets["tdn10"][0], shape, title=f"TDN10 on {DATA}: learned attention windows and ROIs")
    report["attention_figure"] = str(save_figure(fig, out / "attention.png"))
    table = format_table(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(report, table), encoding="utf-8")
    log("")
    log(table)
    log(f"\nreduced schedule ({schedule.epochs} epoch(s)); wrote {out / 'report.md'}, {out / 'report.json'}, "
        f"{out / 'attention.png'} in {report['wall_time_s']:.0f}s")
    return report


def _markdown(report: dict[str, Any], table: str) -> str:
    s, m = report["schedule"], report["machine"]
    return (
        f"# tkn demo: DN10 vs TDN10 on {report['data']}\n\n"
        f"**Reduced schedule** (not the paper's): {s['epochs']} epoch(s), "
        f"{s['train_samples'] or 'all'} training images, batch {s['batch_size']}, SGD Nesterov 0.9, lr {s['lr']}"
        f"{' divided by 10 at epoch ' + str(s['milestones'][0]) if s['milestones'] else ''}, seed {s['seed']}. "
        f"Test error of the best epoch on the {report['data']} test split"
        f"{'' if s['test_samples'] is None else ' subset of ' + str(s['test_samples'])}.\n\n"
        f"{table}\n\n"
        f"Relative speed-up (MACs) = dense DN10 MACs / TDN10 ROI MACs (paper Fig. 5). Latency and throughput: "
        f"median forward time on {m['threads']} CPU thread(s) ({m['cpu']}, torch {m['torch']}), the two models "
        f"timed alternately; TDN10 runs frozen (`tkn.freeze`, ROIs only).\n\n"
        f"![attention windows](attention.png)\n\nWall time: {report['wall_time_s']:.0f} s.\n"
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``tkn demo``; returns the exit code."""
    schedule = _schedule(args)
    stream = sys.stderr if args.json else sys.stdout
    report = run_demo(args.out, schedule, seed=args.seed, progress=args.progress,
                      log=lambda line: print(line, file=stream, flush=True))
    if args.json:
        print(json.dumps(report, indent=2))
    return 0
