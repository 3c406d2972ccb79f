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


def test_latency_table_checks_each_budget_against_the_dense_twin_of_its_width(tables):
    def row(kind, width, target, seed, error, b1, b64, batch=64):
        r = _row(kind, width, target, seed, error, 1.0, b1, b64, "run")
        r["config"] = {"budget": "latency", "latency_batch": batch} if kind == "tkn" else {}
        return r

    rows = [row("dense", 1.0, None, 0, 2.0, 0.004, 0.128), row("dense", 1.0, None, 1, 4.0, 0.006, 0.128),
            row("dense", 0.5, None, 0, 3.0, 0.002, 0.032),
            # width 1, 4x at batch 64: twin 2 ms/image, these 0.5 and 0.4 ms/image -> 1.00 and 1.25 of the target
            row("tkn", 1.0, 4.0, 0, 5.0, 0.003, 0.032), row("tkn", 1.0, 4.0, 1, 7.0, 0.003, 0.0256),
            # width 0.5, 2x at batch 64 over CNN6 width 0.5 (0.5 ms/image): 0.2 ms/image -> 1.25
            row("tkn", 0.5, 2.0, 0, 6.0, 0.001, 0.0128),
            # width 1, 2.5x at batch 1 over CNN6 width 1 (5 ms mean): 2.5 ms -> 0.80
            row("tkn", 1.0, 2.5, 0, 4.0, 0.0025, 0.064, batch=1)]
    lines = tables.latency_table({"rows": rows, "batches": [1, 64]}).splitlines()
    cells = [line.split("|")[1:-1] for line in lines[2:]]
    assert [c[0].strip() for c in cells] == ["CNN6 width 1", "CNN6 width 0.5", "TKN6, 2.5x measured at b1",
                                             "TKN6, 4x measured at b64", "TKN6 width 0.5, 2x measured at b64"]
    assert cells[0][1:] == [" 2 ", " 3.00 ± 1.41 ", " 368.0M ", " 1.00 ", " 5.00 ", " 1.00 ", " 2.000 ", " 1.00 ", "  "]
    assert cells[2][5:] == [" 2.50 ", " 2.00 ", " 1.000 ", " 2.00 ", " 0.80 "]
    assert cells[3][2] == " 6.00 ± 1.41 " and cells[3][5:] == [" 3.00 ", " 1.67 ", " 0.450 ", " 4.44 ", " 1.00–1.25 "]
    assert cells[4][-1] == " 1.25 "
