"""``tkn frontier`` on a tiny setting: rows, checkpoints, budgets, timings, figure, ``--resume``, ``--no-train``."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tkn.checkpoint import load_checkpoint
from tkn.cli import main
from tkn.study.frontier import Point, columns, plan_points, summarize

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = [0.5, 0.25]
BUDGETS = [2.0, 4.0]
UNREACHABLE = 100.0  # TKN6 at 28x28 with min_roi=3 reaches at most 15.16x
REPO = Path(__file__).resolve().parents[1]


def _args(out: Path, *extra: str) -> list[str]:
    return [
        "frontier", "--model", "tkn6", "--data", "tlmnist28-5k", "--epochs", "1",
        "--widths", *map(str, WIDTHS), "--target-speedup", *map(str, [*BUDGETS, UNREACHABLE]),
        "--set", "max_train_samples=64", "--set", "max_test_samples=32", "--set", "batch_size=16",
        "--batch", "1", "8", "--repeats", "2", "--out", str(out), *extra,
    ]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _metrics_row(run: Path, epoch: int) -> dict[str, str]:
    return next(r for r in _csv_rows(run / "metrics.csv") if int(r["epoch"]) == epoch)


def _checkpoint_times(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("*/*.pt"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("frontier") / "study"
    assert main(_args(out)) == 0
    return out


def test_rows_are_one_per_point_with_their_checkpoints_and_errors(study):
    report = json.loads((study / "frontier.json").read_text())
    table = _csv_rows(study / "frontier.csv")
    assert list(table[0]) == columns([1, 8])
    assert [(r["kind"], r["model"], r["width"], r["target_speedup"]) for r in report["rows"]] == [
        ("dense", "cnn6", 0.5, None), ("dense", "cnn6", 0.25, None),
        ("tkn", "tkn6", 1.0, 2.0), ("tkn", "tkn6", 1.0, 4.0),
    ]
    assert [float(r["width"]) for r in table] == [*WIDTHS, 1.0, 1.0]
    for row in report["rows"]:
        payload = load_checkpoint(row["checkpoint"])
        assert Path(row["checkpoint"]).name == ("best.pt" if row["kind"] == "dense" else "last.pt")
        assert row["epoch_rule"] == ("best" if row["kind"] == "dense" else "last")
        assert row["epoch"] == payload["epoch"]
        assert row["test_error"] == payload["metrics"]["test_error"]
        assert row["test_error"] == pytest.approx(float(_metrics_row(Path(row["run"]), row["epoch"])["test_error"]))
        last = load_checkpoint(Path(row["run"]) / "last.pt")["metrics"]
        assert (row["epochs"], row["final_test_error"]) == (1, last["test_error"])
        assert row["dense_macs"] == 368_406_912 and row["speedup"] == row["dense_macs"] / row["macs"]
        assert row["config"]["width"] == row["width"] and row["config"]["epochs"] == 1
        for column in ("latency_b1_s", "time_b8_s", "throughput_b8"):
            assert math.isfinite(row[column]) and row[column] > 0
        assert row["throughput_b8"] == pytest.approx(8 / row["time_b8_s"])
    for row in report["rows"][2:]:  # the budget holds at the last epoch: MacBudget's [0.9R, 1.2R] band
        assert 0.9 * row["target_speedup"] <= row["speedup"] <= 1.2 * row["target_speedup"]
    widths = {r["width"]: r["macs"] for r in report["rows"][:2]}
    assert widths[0.25] < widths[0.5] < report["dense_macs"]
    assert report["conditions"]["threads"] >= 1 and report["batches"] == [1, 8]
    assert report["arguments"]["sets"] == ["max_train_samples=64", "max_test_samples=32", "batch_size=16"]
    assert (study / "frontier.png").stat().st_size > 0


def test_an_unreachable_budget_is_skipped_with_its_maximum(study):
    report = json.loads((study / "frontier.json").read_text())
    (skipped,) = report["skipped"]
    assert skipped["target_speedup"] == UNREACHABLE and skipped["min_roi"] == 3
    assert skipped["max_speedup"] == pytest.approx(15.16, abs=0.01)
    assert "reaches at most 15.16x" in skipped["reason"]
    assert not (study / "tkn-speedup-100").exists()


def test_resume_reuses_finished_runs(study, capsys):
    before = _checkpoint_times(study)
    assert main(_args(study, "--resume")) == 0
    text = capsys.readouterr().out
    assert text.count("nothing to do") == 4 and "reaches at most 15.16x" in text
    assert _checkpoint_times(study) == before
    assert len(json.loads((study / "frontier.json").read_text())["rows"]) == 4


def test_no_train_measures_existing_runs_and_skips_missing_ones(study):
    before = _checkpoint_times(study)
    args = ["frontier", "--out", str(study), "--no-train", "--widths", "1", "0.25", "--target-speedup", "4",
            "--batch", "1", "--repeats", "2", "--json"]
    assert main(args) == 0
    report = json.loads((study / "frontier.json").read_text())
    assert [r["run"] for r in report["rows"]] == [str(study / "dense-w0.25"), str(study / "tkn-speedup-4")]
    assert report["skipped"] == [{"kind": "dense", "model": "cnn6", "width": 1.0, "target_speedup": None,
                                  "reason": "no run: best.pt missing"}]
    assert "latency_b1_s" in report["rows"][0] and "time_b8_s" not in report["rows"][0]
    assert _checkpoint_times(study) == before


def test_train_only_trains_and_times_nothing(tmp_path, capsys, monkeypatch):
    from tkn.commands import frontier as command

    out = tmp_path / "train-only"
    monkeypatch.setattr(command, "time_points", lambda *a, **k: pytest.fail("--train-only must not time"))
    args = ["frontier", "--model", "tkn6", "--data", "mnist-5k", "--epochs", "1", "--widths", "0.25",
            "--target-speedup", "--set", "max_train_samples=32", "--set", "max_test_samples=16",
            "--set", "batch_size=16", "--out", str(out), "--train-only"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "trained dense-w0.25"
    assert (out / "dense-w0.25" / "best.pt").exists() and not (out / "frontier.json").exists()
    assert main([*args, "--no-train"]) == 2
    assert "--train-only trains and stops: not with --no-train or --plan" in capsys.readouterr().err


def test_points_and_their_folders():
    points = plan_points("tdn10", [1, 0.5, 0.5], [8])
    assert points == [Point("dense", "dn10", 1.0), Point("dense", "dn10", 0.5), Point("tkn", "tdn10", 1.0, 8.0)]
    assert [p.folder for p in points] == ["dense-w1", "dense-w0.5", "tkn-speedup-8"]
    assert points[2].overrides == {"model": "tdn10", "width": 1.0, "l2": 0.0, "target_speedup": 8.0}


def test_seeds_are_separate_runs_summarized_by_mean_and_spread(study):
    before = _checkpoint_times(study)
    args = ["frontier", "--model", "tkn6", "--data", "tlmnist28-5k", "--epochs", "1", "--widths", "0.25",
            "--target-speedup", "--seeds", "0", "1", "--set", "max_train_samples=64", "--set", "max_test_samples=32",
            "--set", "batch_size=16", "--batch", "1", "--repeats", "2", "--out", str(study), "--resume",
            "--name", "seeds"]
    assert main(args) == 0
    after = _checkpoint_times(study)
    # seed 0 is the study's own dense-w0.25 run, reused; seed 1 is a new run
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["dense-w0.25-seed1/best.pt", "dense-w0.25-seed1/last.pt"]
    rows = _csv_rows(study / "seeds.csv")
    assert [(r["run"], r["seed"]) for r in rows] == [(str(study / "dense-w0.25"), "0"),
                                                     (str(study / "dense-w0.25-seed1"), "1")]
    errors = [float(r["test_error"]) for r in rows]
    assert load_checkpoint(study / "dense-w0.25-seed1" / "best.pt")["config"]["seed"] == 1
    (summary,) = _csv_rows(study / "seeds-summary.csv")
    mean = (errors[0] + errors[1]) / 2
    assert summary["seeds"] == "2" and math.isclose(float(summary["test_error_mean"]), mean)
    assert math.isclose(float(summary["test_error_std"]), abs(errors[0] - errors[1]) / math.sqrt(2))
    assert (study / "seeds.png").exists() and (study / "frontier.csv").exists()


def test_summarize_by_hand():
    rows = [{"kind": "tkn", "model": "tkn6", "data": "d", "width": 1.0, "target_speedup": 4.0, "test_error": e,
             "speedup": r, "macs": 92e6 * 4 / r, "latency_b1_s": t}
            for e, r, t in ((1.0, 4.0, 0.1), (2.0, 4.2, 0.3), (6.0, 3.8, 0.2))]
    rows.append({"kind": "dense", "model": "cnn6", "data": "d", "width": 0.5, "target_speedup": None,
                 "test_error": 5.0, "speedup": 3.9, "macs": 93e6, "latency_b1_s": 0.05})
    # the same budget counted in measured time at batch 1 is another point
    rows.append({"kind": "tkn", "model": "tkn6", "data": "d", "width": 1.0, "target_speedup": 4.0, "test_error": 9.0,
                 "speedup": 9.0, "macs": 40e6, "latency_b1_s": 0.5,
                 "config": {"budget": "latency", "latency_batch": 1}})
    tkn, dense, latency = summarize(rows, [1])
    assert (tkn["seeds"], tkn["test_error_mean"], tkn["test_error_min"], tkn["test_error_max"]) == (3, 3.0, 1.0, 6.0)
    assert math.isclose(tkn["test_error_std"], math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    assert math.isclose(tkn["speedup_mean"], 4.0) and math.isclose(tkn["latency_b1_s"], 0.2)
    assert math.isclose(tkn["macs_mean"], 92e6 * 4 * (1 / 4.0 + 1 / 4.2 + 1 / 3.8) / 3)
    assert (tkn["budget"], tkn["latency_batch"]) == ("macs", None)
    assert (dense["seeds"], dense["test_error_std"], dense["width"], dense["budget"]) == (1, 0.0, 0.5, None)
    assert (latency["seeds"], latency["budget"], latency["latency_batch"], latency["test_error_mean"]) == (
        1, "latency", 1, 9.0)


def test_narrower_tkns_are_points_of_their_own():
    points = plan_points("tkn6", [0.5], [3, 10], tkn_widths=[1, 0.5])
    assert [p.folder for p in points] == ["dense-w0.5", "tkn-speedup-3", "tkn-speedup-10", "tkn-w0.5-speedup-3",
                                          "tkn-w0.5-speedup-10"]
    assert points[3].overrides == {"model": "tkn6", "width": 0.5, "l2": 0.0, "target_speedup": 3.0}
    with pytest.raises(ValueError, match="each --tkn-widths value must be a finite number > 0, got 0"):
        plan_points("tkn6", [], [4], tkn_widths=[0])
    with pytest.raises(ValueError, match="--tkn-widths needs at least one width"):
        plan_points("tkn6", [], [4], tkn_widths=[])


def test_plan_lists_points_with_each_widths_reach_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "plan"
    args = ["frontier", "--model", "tkn6", "--data", "tlmnist28-5k", "--widths", "0.5", "--target-speedup", "4", "20",
            "--tkn-widths", "1", "0.5", "--out", str(out), "--plan"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    # MAC budgets with min_roi=3 on 28x28: full width reaches 15.16x, width 0.5 its own maximum, both below 20
    assert "tkn6 at width 1 with min_roi=3: largest speed-up 15.16x (MACs)" in lines
    assert any(line.startswith("tkn6 at width 0.5 with min_roi=3: largest speed-up ") for line in lines)
    skipped = [line for line in lines if line.startswith("target speed-up 20 skipped: ")]
    assert len(skipped) == 2 and "tkn6 at width 0.5 on 1x28x28 inputs with min_roi=3" in skipped[1]
    assert lines[-3:] == ["dense-w0.5", "tkn-speedup-4", "tkn-w0.5-speedup-4"]
    assert not out.exists() or not any(out.iterdir())


def test_points_per_seed():
    points = plan_points("tkn6", [], [4], seeds=[0, 2])
    assert [p.folder for p in points] == ["tkn-speedup-4", "tkn-speedup-4-seed2"]
    assert points[1].overrides["seed"] == 2 and points[0].overrides["seed"] == 0
    with pytest.raises(ValueError, match="at least one point"):
        plan_points("tkn6", [], [])


@pytest.mark.parametrize("argv, message", [
    (["--model", "cnn6"], "--model must be a targeted model"),
    (["--widths", "0"], "each --widths value must be a finite number > 0, got 0.0"),
    (["--target-speedup", "0.5"], "each --target-speedup value must be a finite number >= 1, got 0.5"),
    (["--set", "width=0.5"], "--set must not change width"),
    (["--batch", "0"], "each --batch value must be a positive int, got 0"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["frontier", "--out", str(tmp_path), "--no-train", *argv]) == 2
    assert message in capsys.readouterr().err


def _finished_epochs(run: Path) -> int:
    """Epochs a run folder has completed (its ``last.pt``), 0 without one."""
    return int(load_checkpoint(run / "last.pt")["epoch"]) if (run / "last.pt").exists() else 0


@pytest.mark.slow
def test_a_killed_study_resumes_without_retraining_its_finished_runs(tmp_path, capsys):
    """SIGKILL once the first run finished (the second run's folder appears), restart with ``--resume``:
    the finished run is read back (its checkpoints untouched), only the others train, the results are whole."""
    out = tmp_path / "study"
    args = ["frontier", "--model", "tkn6", "--data", "mnist-5k", "--epochs", "2", "--widths", "0.25", "0.125",
            "--target-speedup", "2", "--set", "max_train_samples=64", "--set", "max_test_samples=32",
            "--set", "batch_size=16", "--batch", "1", "--repeats", "1", "--out", str(out)]
    folders = ["dense-w0.25", "dense-w0.125", "tkn-speedup-2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tkn.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while not (out / folders[1]).exists():  # created by the second run: the first one has returned
            assert proc.poll() is None, f"the study exited early ({proc.returncode}): {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the first run did not finish within 300 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = {f: _finished_epochs(out / f) for f in folders}
    assert done[folders[0]] == 2 and done[folders[2]] == 0, done
    assert not (out / "frontier.json").exists()
    first = {k: v for k, v in _checkpoint_times(out).items() if k.startswith(folders[0] + "/")}
    assert sorted(first) == [f"{folders[0]}/best.pt", f"{folders[0]}/last.pt"]

    assert main([*args, "--resume"]) == 0
    log = capsys.readouterr().out
    assert {k: v for k, v in _checkpoint_times(out).items() if k in first} == first  # not retrained
    assert f"nothing to do: {str(out / folders[0])!r} already completed 2 of 2 epochs" in log
    # every epoch not finished at the kill ran once, and only those
    assert log.count("epoch 1/2") == sum(1 for f in folders if done[f] < 1)
    assert log.count("epoch 2/2") == sum(1 for f in folders if done[f] < 2)
    assert {f: _finished_epochs(out / f) for f in folders} == dict.fromkeys(folders, 2)
    report = json.loads((out / "frontier.json").read_text())
    assert [Path(r["run"]).name for r in report["rows"]] == folders
    assert [r["epochs"] for r in report["rows"]] == [2, 2, 2]
    assert len(_csv_rows(out / "frontier.csv")) == 3 and (out / "frontier.png").stat().st_size > 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
