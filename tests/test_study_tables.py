"""scripts/study_tables.py: the numbers of its tables, from a hand-made study report."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "study_tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("study_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, name: str, times: list[float]) -> str:
    run = tmp_path / name
    run.mkdir()
    lines = ["epoch,epoch_time_s"] + [f"{i + 1},{t}" for i, t in enumerate(times)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return str(run)


def _row(kind, width, target, seed, error, speedup, b1, b64, run, min_roi=3):
    return {"kind": kind, "model": "cnn6" if kind == "dense" else "tkn6", "width": width, "target_speedup": target,
            "seed": seed, "test_error": error, "speedup": speedup, "macs": 368e6 / speedup,
            "latency_b1_s": b1, "time_b64_s": b64, "run": run, "config": {"min_roi": min_roi}}


def test_headline_and_frontier_tables(tables, tmp_path):
    d0, d1 = _run(tmp_path, "d0", [10, 12, 50]), _run(tmp_path, "d1", [11, 11, 11])
    t0, t1 = _run(tmp_path, "t0", [6, 7, 8]), _run(tmp_path, "t1", [9, 9, 9])
    rows = [_row("dense", 1.0, None, 0, 2.0, 1.0, 0.004, 0.128, d0),
            _row("dense", 1.0, None, 1, 3.0, 1.0, 0.004, 0.128, d1),
            _row("tkn", 1.0, 8.0, 0, 4.0, 8.1, 0.002, 0.016, t0),
            _row("tkn", 1.0, 8.0, 1, 6.0, 7.9, 0.002, 0.016, t1)]
    report = {"data": "mnist-5k", "rows": rows, "batches": [1, 64]}
    headline = tables.headline_table(report, report).splitlines()
    assert headline[2].split("|")[1:-1] == [" CNN6 width 1 ", " 2.50 ± 0.71 ", " 2.00–3.00 ", " 2 ", " 1.00 ",
                                           " 1.00 ", " 1.00 ", " 12 "]  # epoch: median of the runs' medians
    assert headline[3].split("|")[1:-1] == [" TKN6 budget 8x (min ROI 3 px) ", " 5.00 ± 1.41 ", " 4.00–6.00 ",
                                           " 2 ", " 8.00 ", " 2.00 ", " 8.00 ", " 8 "]
    frontier = tables.frontier_table({"rows": [r for r in rows if r["seed"] == 0], "batches": [1, 64]}).splitlines()
    assert frontier[3].split("|")[1:-1] == [" TKN6 budget 8x (min ROI 3 px) ", " 45.4M ", " 8.10 ", " 4.00 ", " 2.00 ",
                                           " 2.00 ", " 0.250 ", " 8.00 "]
