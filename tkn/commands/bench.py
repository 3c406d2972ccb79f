"""``tkn bench``: wall-clock speed of a TKN — dense CNN vs target model (dense) vs frozen (ROI engine).

Examples::

    tkn bench                                   # TKN6 at 1x56x56, synthetic ROIs, batch 1 and 64
    tkn bench --layers --train                  # plus per-layer rows and one training step
    tkn bench --checkpoint runs/tkn6/best.pt    # a trained model's own ROIs
    tkn bench --windows tkn6-mnist-12.9x --layers   # learned windows shipped with tkn (random weights)
    tkn bench --checkpoint runs/tkn6/best.pt --save-windows tkn6.json   # keep a model's windows (kilobytes)
    tkn bench --batch 64 --repeats 9 --json
    tkn bench --rois paper --layers             # ROIs at the paper's FLOP ratios (about 15 on TKN6)
    tkn bench --no-native                       # the PyTorch executors only (ablation)

Variants are interleaved and repeated, each in blocks of consecutive calls
(:mod:`tkn.timing`); the minimum over repeats is reported (the median is in
``--json``). Speed-up is against the dense CNN (the model with plain
``nn.Conv2d`` layers); efficiency = speed-up / FLOP ratio. ``speed-up`` is the
steady state (a model called again and again); ``1st-call`` is the first call
of each block, right after the other variants ran (cold caches). The
synthetic ROI distribution and the memory measurement are documented in
:mod:`tkn.benchmark`.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from tkn.commands import add_model_arguments, input_size, load_model
from tkn.validate import each, positive_int
from tkn.windowfile import list_windows, load_windows, save_windows

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="time dense CNN vs target model vs frozen ROI engine (inference and one training step)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser, default="tkn6", model_help="registered targeted model (default tkn6)",
                        checkpoint_help="benchmark a trained model (its own ROIs)")
    parser.add_argument("--windows", metavar="NAME|FILE",
                        help="a window file (tkn.windowfile: the learned m, s of a trained TKN, with seeded random "
                             f"weights); packaged: {', '.join(list_windows())}")
    parser.add_argument("--save-windows", metavar="FILE",
                        help="with --checkpoint: write its windows to FILE and exit")
    parser.add_argument("--input-size", metavar="C,H,W", help="input size (default: the checkpoint's own, else 1,56,56)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], metavar="N", help="batch sizes (default 1 64)")
    parser.add_argument("--repeats", type=int, default=5, metavar="R", help="timed rounds per variant (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic ROIs and inputs")
    parser.add_argument("--rois", default="default", choices=["default", "paper"],
                        help="synthetic ROI distribution: 'default' (m ~ U(0.1, 0.9), s ~ U(0.1, 0.45)) or 'paper' "
                             "(m ~ U(0.25, 0.6), s ~ U(0.08, 0.16): the paper's FLOP ratios, about 15 on TKN6)")
    parser.add_argument("--layers", action="store_true", help="also time each target layer alone")
    parser.add_argument("--train", action="store_true", help="also time one training step (largest batch)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--no-input-sparsity", dest="input_sparsity", action="store_false",
                        help="freeze without reading only the producer's non-zero channels (ablation)")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false",
                        help="freeze without fusing ReLU / max-pool into the target layers (ablation)")
    parser.add_argument("--no-native", dest="native", action="store_false",
                        help="freeze with the PyTorch executors only, not the native kernel (ablation)")
    parser.add_argument("--ablations", action="store_true",
                        help="also time frozen models without input sparsity / without fusion, in the same rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
    return parser


def _build(args: argparse.Namespace):
    """The model to time, its input size (``--input-size``, else the checkpoint's or 1,56,56) and its ROIs' origin."""
    from tkn.benchmark import ROI_PRESETS, synthetic_rois_

    if args.windows:
        if args.checkpoint:
            raise ValueError("give --windows or --checkpoint, not both")
        model, dims, _ = load_windows(args.windows, seed=args.seed)
        return model, input_size(args) or dims, f"learned windows {args.windows!r} (weights seed {args.seed})"
    if args.checkpoint:
        model, dims, _ = load_model(args, input_size(args))
        return model, dims, "checkpoint ROIs"
    dims = input_size(args) or (1, 56, 56)
    model, dims, _ = load_model(args, dims)
    m_range, s_range = ROI_PRESETS[args.rois]
    return (synthetic_rois_(model, args.seed, m_range, s_range), dims,
            f"synthetic ROIs '{args.rois}' (seed {args.seed})")


def run(args: argparse.Namespace) -> int:
    from tkn.convert import target_layers
    from tkn import benchmark as B

    each("--batch", args.batch, positive_int)
    positive_int("--repeats", args.repeats)
    if args.save_windows:
        if not args.checkpoint:
            raise ValueError("--save-windows needs --checkpoint (the trained model whose windows to keep)")
        model, dims, payload = load_model(args, input_size(args))
        cfg, metrics = payload.get("config") or {}, payload.get("metrics") or {}
        keys = ("model", "data", "epochs", "batch_size", "lr", "target_speedup", "min_roi", "seed")
        provenance = (f"tkn train ({', '.join(f'{k}={cfg[k]}' for k in keys if k in cfg)}); epoch "
                      f"{payload.get('epoch')}, test error {metrics.get('test_error', 'n/a')}")
        path = save_windows(model, args.save_windows, spec=payload["model"], input_shape=dims,
                            provenance=provenance)
        print(json.dumps({"windows": str(path)}) if args.json else f"windows written to {path}")
        return 0
    model, dims, rois = _build(args)
    if not target_layers(model):
        raise ValueError(f"model {args.model!r} has no target layers: benchmark a targeted model (e.g. tkn6)")
    model.eval()
    result: dict[str, Any] = {
        "model": args.checkpoint or args.model, "input": list(dims), "rois": rois, "repeats": args.repeats,
        "conditions_start": B.conditions(), "models": [], "layers": [], "train": None, "memory_mib": {},
    }
    options = {"input_sparsity": args.input_sparsity, "fuse": args.fuse, "native": args.native}
    result["freeze_options"] = options
    for batch in args.batch:
        result["models"].append(B.bench_model(model, dims, batch, args.repeats, seed=args.seed, freeze_options=options,
                                              ablations=B.ABLATIONS if args.ablations else None))
        if args.layers:
            result["layers"] += B.bench_layers(model, dims, batch, args.repeats, seed=args.seed,
                                               freeze_options=options)
    big = max(args.batch)
    if args.train:
        result["train"] = B.bench_train_step(model, dims, big, args.repeats, seed=args.seed)
    if args.memory:
        spec = {"model": args.model, "checkpoint": args.checkpoint, "input": list(dims), "batch": big,
                "seed": args.seed, "threads": torch.get_num_threads(), "freeze_options": options,
                "rois": args.rois}
        variants = ["dense", "target", "frozen"] + (["train_dense", "train_fast"] if args.train else [])
        result["memory_mib"] = {v: B.peak_memory({**spec, "variant": v}) for v in variants}
        result["memory_batch"] = big
    from tkn.engine import native

    result["native"] = {"available": native.available(), "reason": native.reason(),
                        "vector_width": native.vector_width() if native.available() else None}
    result["conditions_end"] = B.conditions()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
    return 0


def _ms(t: dict[str, float]) -> str:
    return f"{1e3 * t['min']:.2f}"


def _load_warning(r: dict[str, Any]) -> list[str]:
    """A warning line when other work kept the cores busy (more runnable tasks than cores) during the run."""
    loads = [c["load_average"][0] for c in (r["conditions_start"], r["conditions_end"]) if c.get("load_average")]
    cores = r["conditions_start"].get("cores") or 1
    if loads and max(loads) > cores:
        return [f"warning: load average {max(loads):.1f} on {cores} cores: other work shared the CPU, the timings "
                "(most of all multi-threaded small batches) are unreliable"]
    return []


def format_report(r: dict[str, Any]) -> str:
    """Text tables of a ``tkn bench`` result."""
    c = r["conditions_start"]
    off = [k for k, v in r.get("freeze_options", {}).items() if not v]
    out = [f"model {r['model']}  input {'x'.join(map(str, r['input']))}  {r['rois']}  min of {r['repeats']} interleaved runs"
           + (f"  freeze without {', '.join(off)}" if off else ""),
           f"torch {c['torch']}, {c['threads']} threads, {c['cpu']} ({c['cores']} cores), "
           f"load average {c['load_average'] and [round(v, 2) for v in c['load_average']]} -> "
           f"{r['conditions_end']['load_average'] and [round(v, 2) for v in r['conditions_end']['load_average']]}",
           *_load_warning(r),
           "native kernel: " + (f"available ({r['native']['vector_width']} channels per vector)"
                                if r.get("native", {}).get("available") else
                                f"not used ({r.get('native', {}).get('reason', 'unknown')})"),
           "",
           "whole model (inference)",
           f"{'batch':>5}  {'FLOP ratio':>10}  {'dense ms':>9}  {'target ms':>9}  {'frozen ms':>9}  "
           f"{'speed-up':>8}  {'efficiency':>10}  {'1st-call speed-up':>17}  {'(eff)':>6}  {'frozen img/s':>12}  "
           f"{'max rel err':>11}  {'freeze s':>8}"]
    for m in r["models"]:
        t = m["times_s"]
        first = m.get("first_call_speedup_vs_dense", float("nan"))
        out.append(f"{m['batch']:>5}  {m['flop_ratio']:>10.2f}  {_ms(t['dense']):>9}  {_ms(t['target']):>9}  "
                   f"{_ms(t['frozen']):>9}  {m['speedup_vs_dense']:>8.2f}  {m['efficiency']:>10.2f}  "
                   f"{first:>17.2f}  {first / m['flop_ratio']:>6.2f}  "
                   f"{m['throughput_per_s']['frozen']:>12.1f}  {m['frozen_max_rel_error']:>11.1e}  {m['freeze_s']:>8.1f}")
    ablated = [(m, name) for m in r["models"] for name in m["times_s"] if name.startswith("frozen_")]
    if ablated:
        out += ["", "ablations (same interleaved rounds as the table above)",
                f"{'batch':>5}  {'variant':<34}  {'ms':>8}  {'speed-up':>8}  {'efficiency':>10}"]
        for m, name in ablated:
            t, d = m["times_s"][name]["min"], m["times_s"]["dense"]["min"]
            out.append(f"{m['batch']:>5}  {name:<34}  {1e3 * t:>8.2f}  {d / t:>8.2f}  {d / t / m['flop_ratio']:>10.2f}")
    if r["layers"]:
        out += ["", "per layer (each alone on its own input)",
                f"{'layer':<12} {'batch':>5}  {'FLOP ratio':>10}  {'dense ms':>8}  {'target ms':>9}  {'frozen ms':>9}  "
                f"{'speed-up':>8}  {'efficiency':>10}  {'work':>5}  plan"]
        for row in r["layers"]:
            t = row["times_s"]
            out.append(f"{row['layer']:<12} {row['batch']:>5}  {row['flop_ratio']:>10.2f}  {_ms(t['dense']):>8}  "
                       f"{_ms(t['target']):>9}  {_ms(t['frozen']):>9}  {row['speedup_vs_dense']:>8.2f}  "
                       f"{row['efficiency']:>10.2f}  {row['work']:>5.2f}  {row['plan']} ({row['blocks']} {row.get('unit', 'blocks')}"
                       f"{', ' + row['epilogue'] if row['epilogue'] else ''})")
    if r["train"]:
        t = r["train"]
        out += ["", f"one training step (batch {t['batch']}): dense CNN {_ms(t['times_s']['dense'])} ms, "
                    f"TKN fast path {_ms(t['times_s']['fast'])} ms ({t.get('fused_epilogues', 0)} fused ReLU/pool "
                    f"epilogues), speed-up {t['speedup_vs_dense']:.2f}; without the fusion "
                    f"{_ms(t['times_s']['fast_unfused'])} ms, speed-up {t['speedup_unfused_vs_dense']:.2f} "
                    f"(FLOP ratio {t['flop_ratio']:.2f})"]
    if r["memory_mib"]:
        mem = ", ".join(f"{k} {'n/a' if v is None else f'{v:.0f}'}" for k, v in r["memory_mib"].items())
        out += ["", f"peak extra memory of one pass at batch {r['memory_batch']} (MiB): {mem}"]
    return "\n".join(out)
