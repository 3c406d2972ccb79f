"""GPU measurement of the ROI engine: TKN6 frozen with the PyTorch executors and with the Triton kernel vs CNN6.

Run from the repository root on a machine with CUDA (``scripts/gpu_check.sh`` runs it after the tests)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. TRITON_INTERPRET=0 timeout -k 10 420 python scripts/gpu_bench.py

Logic check on a CPU (Triton's interpreter, CPU clocks instead of CUDA events; under a minute, on a tiny TKN6)::

    TRITON_INTERPRET=1 PYTHONPATH=. python scripts/gpu_bench.py --device cpu --smoke

Cases (``--cases``, in this order): ``paper`` (TKN6 at 1x56x56 with the benchmark's ``paper`` ROIs, seed 0, as
``tkn bench --rois paper``; weights seeded 0 here) and the four learned window files shipped with ``tkn``
(``tkn6-NAME``, built as ``tkn bench --windows tkn6-NAME`` builds them: weights seed 0, the file's input
size); ``tiny`` (TKN6 at 1/16 width on 1x16x16, ``paper`` ROIs) is the ``--smoke`` case only. For each case
and batch size (input ``torch.rand`` from a generator seeded 0, as ``tkn bench``):

* ``max_rel_err``: the largest absolute difference between a frozen model's output and the TKN6's eval
  output, over the largest absolute eval output (for ``*_graph``: the replay against the same model run
  eagerly);
* ``times_ms``: min and median of ``--repeats`` calls after ``--warmup`` calls, each call between two CUDA
  events (``time.perf_counter`` on the CPU), of ``dense_cnn6`` (:func:`tkn.benchmark.dense_baseline`,
  cuDNN, ``benchmark=True``), ``target_eval`` (the TKN6 run densely), ``frozen_auto`` (``tkn.freeze(model,
  x)``), ``frozen_triton`` (``tkn.freeze(model, x, backend="triton")``), and ``dense_cnn6_graph``,
  ``frozen_auto_graph``, ``frozen_triton_graph`` (the same replayed through a ``torch.cuda.CUDAGraph``: no
  launch overhead; a forward that synchronises with the host, which a capture cannot hold, is found first
  with ``torch.cuda.set_sync_debug_mode("error")`` and not captured);
* ``freeze_s``, ``first_call_s`` (the first call: Triton compiles there), ``plans``
  (:func:`tkn.engine.plan_summary`), ``flop_ratio``.

Robustness: each case runs in its own worker process (this script with ``--worker``), so that a CUDA error
(sticky in a process) or a crash costs one case at most; inside it every step runs in its own ``try``, and
a failure is recorded as a string under ``errors``. One JSON line per (case, batch) goes to stdout, and
``gpu_bench.json`` (everything so far) is rewritten into ``$OUT`` (default: the current folder) after each,
so a run killed by a timeout keeps what it measured. Once ``--budget-s`` seconds have passed, no further
auto freeze (12-19 s each on an H200 before) and then no further case is started; each is recorded as
skipped. Last in the workers of the first two cases, their Triton-frozen models are profiled
(``torch.profiler``: device time per kernel and copy, host time per operator: ``profiles``).

On CUDA the native C++ kernel is disabled (``TKN_NATIVE=0`` unless set): it runs CPU tensors only, so
``freeze`` cannot choose it for a CUDA model anyway, and this skips its build.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch

import tkn
from tkn.benchmark import ROI_PRESETS, dense_baseline, synthetic_rois_
from tkn.convert import target_layers
from tkn.engine import plan_summary, triton_roi
from tkn.models import create_model
from tkn.windowfile import load_windows

ALL_CASES = ("paper", "tlmnist56-21.5x", "mnist-12.9x", "mnist-5x", "tlmnist28-4x")
#: The ``--smoke`` case: Triton's CPU interpreter runs one forward of it in seconds (of a real case: > 15 min).
SMOKE_CASE = "tiny"
VARIANTS = ("dense_cnn6", "target_eval", "frozen_auto", "frozen_triton", "graph", "profile")
#: An auto freeze is skipped when less than this is left of the budget (seconds).
AUTO_FREEZE_RESERVE_S = 40.0
#: The workers of this many first cases profile their Triton-frozen models.
PROFILED_CASES = 2

START = time.perf_counter()
DEV = torch.device("cpu")
CUDA = False
BUDGET_S = 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="batch sizes (default 1 64)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per variant (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before them (default 5)")
    p.add_argument("--cases", nargs="+", default=None, choices=ALL_CASES + (SMOKE_CASE,),
                   help=f"cases, in this order (default: {' '.join(ALL_CASES)})")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help="what to run (default all)")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="start no auto freeze, then no case, after this many seconds (default 300)")
    p.add_argument("--smoke", action="store_true",
                   help=f"a logic check: one case (the first of --cases, default {SMOKE_CASE!r}), batch 1, "
                        "2 repeats, 1 warm-up")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one case, in this process
    args = p.parse_args(argv)
    if args.smoke:
        args.cases, args.batches, args.repeats, args.warmup = (args.cases or [SMOKE_CASE])[:1], [1], 2, 1
    elif args.cases is None:
        args.cases = list(ALL_CASES)
    return args


def elapsed() -> float:
    return time.perf_counter() - START


def emit(kind: str, record: dict[str, Any]) -> None:
    """One JSON line on stdout (a worker's report to the parent)."""
    print(json.dumps({"kind": kind, **record}, default=str), flush=True)


def error_text(exc: BaseException) -> str:
    """``Type: message`` and the innermost frames of the traceback (the whole traceback goes to stderr)."""
    print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), file=sys.stderr, flush=True)
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {str(exc)[:1500]} [at {where}]"


def attempt(res: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``None`` with the error recorded under ``res["errors"][key]``."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure is data here
        res["errors"][key] = error_text(exc)
        return None


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize(DEV)


def timeit(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Min and median milliseconds of ``repeats`` calls after ``warmup`` calls (CUDA events on a GPU)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync()
        ms = []
        for _ in range(repeats):
            if CUDA:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ms.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                ms.append(1e3 * (time.perf_counter() - t0))
    return {"min_ms": min(ms), "median_ms": statistics.median(ms), "n": repeats}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item())


def build_case(case: str) -> tuple[torch.nn.Module, tuple[int, int, int], dict[str, Any]]:
    """The CPU model, ``(C, H, W)`` and a description, as ``tkn bench`` builds them (seed 0)."""
    if case in ("paper", SMOKE_CASE):  # tkn bench --rois paper: TKN6, synthetic ROIs of seed 0
        torch.manual_seed(0)  # tkn bench leaves these weights unseeded
        size, width = (56, 1.0) if case == "paper" else (16, 1 / 16)
        model = create_model("tkn6", in_channels=1, input_size=size, width=width).eval()
        synthetic_rois_(model, 0, *ROI_PRESETS["paper"])
        return model, (1, size, size), {"rois": "synthetic 'paper' (seed 0)", "width": width}
    name = f"tkn6-{case}"  # tkn bench --windows NAME: load_windows(NAME, seed=0) at the file's input shape
    model, dims, payload = load_windows(name, seed=0)
    return model, dims, {"rois": f"learned windows {name!r} (weights seed 0)",
                         "flop_ratio_file": payload.get("flop_ratio"), "provenance": payload.get("provenance")}


def capture_graph(model: torch.nn.Module, x: torch.Tensor) -> tuple[Callable[[], Any], torch.Tensor]:
    """``model(x)`` captured in a CUDA graph: ``(replay, static output)``. Raises ``RuntimeError`` without
    capturing when the forward synchronises with the host (what a capture cannot hold)."""
    static_x = x.clone()
    with torch.no_grad():
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(static_x)
        except RuntimeError as exc:
            raise RuntimeError(f"not captured: the forward synchronises with the host ({str(exc)[:300]})") from None
        finally:
            torch.cuda.set_sync_debug_mode(0)
        side = torch.cuda.Stream(DEV)
        side.wait_stream(torch.cuda.current_stream(DEV))
        with torch.cuda.stream(side):
            for _ in range(3):
                model(static_x)
        torch.cuda.current_stream(DEV).wait_stream(side)
        sync()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_x)
    sync()
    return graph.replay, static_out


def run_batch(args: argparse.Namespace, case: str, batch: int, model: torch.nn.Module, dims: tuple[int, int, int],
              info: dict[str, Any]) -> tuple[dict[str, Any], torch.nn.Module | None, torch.Tensor]:
    """One (case, batch): ``(result, the Triton-frozen model or None, the input)``."""
    res: dict[str, Any] = {"case": case, "batch": batch, "input": list(dims), **info, "errors": {},
                           "times_ms": {}, "max_rel_err": {}, "freeze_s": {}, "first_call_s": {}, "plans": {}}
    want = set(args.variants)
    x = torch.rand(batch, *dims, generator=torch.Generator().manual_seed(0)).to(DEV)
    target = copy.deepcopy(model)
    for _, layer in target_layers(target):
        layer.execution = "dense"
    target = target.to(DEV).eval()
    with torch.no_grad():
        ref = target(x)
    sync()
    models: dict[str, torch.nn.Module] = {}

    def time_variant(name: str) -> None:
        t = attempt(res, f"{name}_time", lambda m=models[name]: timeit(lambda: m(x), args.repeats, args.warmup))
        if t is not None:
            res["times_ms"][name] = t

    if "dense_cnn6" in want:  # another function (no windows): its output is not compared
        dense = attempt(res, "dense_cnn6", lambda: dense_baseline(target).to(DEV).eval())
        if dense is not None:
            models["dense_cnn6"] = dense
            time_variant("dense_cnn6")
    if "target_eval" in want:
        models["target_eval"] = target
        time_variant("target_eval")
    for backend in ("auto", "triton"):
        key = f"frozen_{backend}"
        if key not in want:
            continue
        if backend == "auto" and BUDGET_S - elapsed() < AUTO_FREEZE_RESERVE_S:
            res["errors"][key] = (f"skipped: less than {AUTO_FREEZE_RESERVE_S:.0f} s of the time budget left "
                                  "(see --budget-s)")
            continue

        def do_freeze(backend: str = backend) -> torch.nn.Module:
            sync()
            t0 = time.perf_counter()
            frozen = tkn.freeze(target, x) if backend == "auto" else tkn.freeze(target, x, backend=backend)
            sync()
            res["freeze_s"][backend] = time.perf_counter() - t0
            return frozen

        frozen = attempt(res, key, do_freeze)
        if frozen is None:
            continue
        models[key] = frozen
        plans = attempt(res, f"{key}_plans", lambda f=frozen: plan_summary(f))
        if plans is not None:
            res["plans"][backend] = [{k: (str(v) if k == "mode" else v) for k, v in row.items()} for row in plans]

        def check(f: torch.nn.Module = frozen, backend: str = backend) -> float:
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = f(x)
            sync()
            res["first_call_s"][backend] = time.perf_counter() - t0
            return rel_err(out, ref)

        res["max_rel_err"][backend] = attempt(res, f"{key}_check", check)
        time_variant(key)
    if "graph" in want:  # last: a capture that goes wrong must not cost the eager figures
        for name in ("dense_cnn6", "frozen_auto", "frozen_triton"):
            key = f"{name}_graph"
            if name not in models:
                continue
            if not CUDA:
                res["errors"][key] = "skipped: CUDA graphs need a CUDA device"
                continue

            def graph_run(m: torch.nn.Module = models[name], key: str = key) -> dict[str, float]:
                with torch.no_grad():
                    eager = m(x)
                replay, out = capture_graph(m, x)
                replay()
                sync()
                res["max_rel_err"][key] = rel_err(out, eager)
                return timeit(replay, args.repeats, args.warmup)

            t = attempt(res, key, graph_run)
            if t is not None:
                res["times_ms"][key] = t
    dense_ms = res["times_ms"].get("dense_cnn6", {}).get("min_ms")
    res["speedup_vs_dense_cnn6_min"] = {k: dense_ms / v["min_ms"] for k, v in res["times_ms"].items()
                                        if dense_ms and k != "dense_cnn6"}
    return res, models.get("frozen_triton"), x


def profile(model: torch.nn.Module, x: torch.Tensor, iters: int = 5) -> dict[str, Any]:
    """``torch.profiler`` over ``iters`` calls: the device's kernels and copies (self time, the 10 largest) and the
    host's operators (self CPU time, the 8 largest), in microseconds over all calls."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with torch.no_grad():
        model(x)
        sync()
        t0 = time.perf_counter()
        with torch_profile(activities=acts) as prof:
            for _ in range(iters):
                model(x)
            sync()
        wall = time.perf_counter() - t0
    kernels, ops = [], []
    for e in prof.key_averages():
        if "cpu" not in str(getattr(e, "device_type", "cpu")).lower():
            dev_us = getattr(e, "self_device_time_total", None)
            if dev_us is None:
                dev_us = getattr(e, "self_cuda_time_total", 0.0)
            kernels.append({"name": e.key[:160], "count": e.count, "self_device_us": float(dev_us or 0.0)})
        else:
            ops.append({"name": e.key[:120], "count": e.count, "self_cpu_us": float(e.self_cpu_time_total)})
    kernels.sort(key=lambda r: -r["self_device_us"])
    ops.sort(key=lambda r: -r["self_cpu_us"])
    return {"iters": iters, "wall_ms_per_call_profiled": 1e3 * wall / iters,
            "device_us_per_call": sum(r["self_device_us"] for r in kernels) / iters,
            "kernels": kernels[:10], "cpu_ops": ops[:8]}


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": str(DEV),
                           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                           "TKN_NATIVE": os.environ.get("TKN_NATIVE"), "threads": torch.get_num_threads(),
                           "triton_available": triton_roi.available(), "triton_reason": triton_roi.reason()}
    try:
        import triton

        env["triton"] = triton.__version__
        env["triton_interpreting"] = triton_roi.interpreting()
    except ImportError as exc:
        env["triton"] = f"not importable: {exc}"
    if CUDA:
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu"] = torch.cuda.get_device_name(DEV)
    return env


def run_worker(args: argparse.Namespace) -> int:
    """One case, all batches, in this process; reports JSON lines (``kind``: environment, result, profile)."""
    torch.backends.cudnn.benchmark = True
    rec: dict[str, Any] = {"errors": {}}
    emit("environment", attempt(rec, "environment", environment) or rec)
    case = args.cases[0]
    built, flop, problems = None, None, {}
    try:
        built = build_case(case)
        report = tkn.flops.count(built[0], built[1])
        flop = report.dense_macs / report.macs
    except Exception as exc:  # noqa: BLE001
        problems["build" if built is None else "flop_ratio"] = error_text(exc)
    kept: list[tuple[int, torch.nn.Module, torch.Tensor]] = []
    for batch in args.batches:
        t0 = time.perf_counter()
        if built is None:
            res: dict[str, Any] = {"case": case, "batch": batch, "errors": dict(problems)}
        elif elapsed() > BUDGET_S:
            res = {"case": case, "batch": batch, "errors": {"skipped": "time budget used (see --budget-s)"}}
        else:
            try:
                res, frozen, x = run_batch(args, case, batch, *built)
                if frozen is not None and "profile" in args.variants:
                    kept.append((batch, frozen, x))
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory outside any attempt()
                res = {"case": case, "batch": batch, "errors": {"run": error_text(exc)}}
        res["errors"].update(problems)
        res["flop_ratio"] = flop
        res["wall_s"] = time.perf_counter() - t0
        emit("result", res)
    for batch, frozen, x in kept:  # last: a profiler failure must not cost any timing
        rec: dict[str, Any] = {"case": case, "batch": batch, "model": "frozen_triton", "errors": {}}
        if elapsed() > BUDGET_S + 20:
            rec["errors"]["profile"] = "skipped: time budget used (see --budget-s)"
        else:
            rec["profile"] = attempt(rec, "profile", lambda m=frozen, x=x: profile(m, x, min(5, args.repeats)))
        emit("profile", rec)
    return 0


def save(out: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    os.replace(path + ".tmp", path)


def run_parent(args: argparse.Namespace) -> int:
    """Each case in a worker process; their reports gathered, printed and saved as they come."""
    path = os.path.join(os.environ.get("OUT") or ".", "gpu_bench.json")
    out: dict[str, Any] = {"argv": sys.argv[1:], "args": vars(args), "environment": None, "results": [],
                           "profiles": []}
    save(out, path)

    def record(key: str, rec: dict[str, Any]) -> None:
        rec["elapsed_s"] = elapsed()
        out[key].append(rec)
        print(json.dumps(rec, default=str), flush=True)
        save(out, path)

    for i, case in enumerate(args.cases):
        left = args.budget_s - elapsed()
        if left <= 0:
            for batch in args.batches:
                record("results", {"case": case, "batch": batch,
                                   "errors": {"skipped": "time budget used (see --budget-s)"}})
            continue
        variants = [v for v in args.variants if v != "profile" or i < PROFILED_CASES]
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--device", args.device, "--cases", case,
               "--batches", *map(str, args.batches), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--variants", *variants, "--budget-s", f"{left:.1f}"]
        reported: set[int] = set()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # stderr: ours (the log)
        watchdog = threading.Timer(left + 60, proc.kill)  # a hung worker: the next case still runs
        watchdog.start()
        try:
            for line in proc.stdout:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    print(line, end="", file=sys.stderr)
                    continue
                kind = rec.pop("kind", None)
                if kind == "environment":
                    if out["environment"] is None:
                        out["environment"] = rec
                        print(json.dumps({"environment": rec}, default=str), flush=True)
                elif kind == "result":
                    reported.add(rec.get("batch"))
                    record("results", rec)
                elif kind == "profile":
                    record("profiles", rec)
            status = proc.wait()
        finally:
            watchdog.cancel()
        for batch in args.batches:
            if batch not in reported:
                record("results", {"case": case, "batch": batch, "errors": {
                    "worker": f"the worker process of {case!r} ended (status {status}) before reporting batch "
                              f"{batch}; its stderr is in the log"}})
    out["total_s"] = elapsed()
    save(out, path)
    print(json.dumps({"done": True, "total_s": out["total_s"], "json": path}), flush=True)
    return 0


def main() -> int:
    global DEV, CUDA, BUDGET_S
    args = parse_args()
    DEV = torch.device(args.device)
    CUDA = DEV.type == "cuda"
    BUDGET_S = args.budget_s
    if CUDA:
        os.environ.setdefault("TKN_NATIVE", "0")  # read at the first freeze (see the module docstring)
    return run_worker(args) if args.worker else run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
