"""The training loop's parts against independent computations, and the files of a tiny real run."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tkn.training import TrainConfig, evaluate, train_one_epoch
from tkn.training.components import build_optimizer, window_parameters
from tkn.training.distributed import DistContext, ShardSampler
from tkn.training.loaders import eval_loader, per_process_batch, set_epoch, subset, train_loader
from tkn.training.metrics import Meter


def _tiny_classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_evaluate_matches_naive_float64_loop():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(23, 1, 6, 6, generator=g), torch.randint(0, 3, (23,), generator=g)
    model = _tiny_classifier()
    got = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=5), "classification")
    loss, wrong = 0.0, 0
    with torch.no_grad():
        for i in range(23):
            z = model(x[i : i + 1])[0].double()
            loss += float(torch.logsumexp(z, 0) - z[y[i]])
            wrong += int(int(z.argmax()) != int(y[i]))
    assert got["loss"] == pytest.approx(loss / 23, rel=1e-6)
    assert got["error"] == pytest.approx(100.0 * wrong / 23)


def test_evaluate_regression_mse_mae():
    x = torch.arange(6, dtype=torch.float32).reshape(6, 1)
    target = torch.tensor([0.0, 2.0, 1.0, 5.0, 4.0, 3.0])
    model = nn.Identity()
    got = evaluate(model, DataLoader(TensorDataset(x, target), batch_size=4), "regression", device="cpu")
    diffs = [0.0, -1.0, 1.0, -2.0, 0.0, 2.0]
    assert got["mse"] == pytest.approx(sum(d * d for d in diffs) / 6)
    assert got["mae"] == pytest.approx(sum(abs(d) for d in diffs) / 6)
    assert got["loss"] == pytest.approx(got["mse"])


def test_meter_handcomputed():
    m = Meter("classification")
    m.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, 1]), loss=0.3)
    m.update(torch.tensor([[0.0, 2.0]]), torch.tensor([1]), loss=0.7)
    out = m.compute()
    assert out["error"] == 50.0
    assert out["loss"] == pytest.approx((0.3 * 3 + 0.7) / 4)


def test_loss_decreases_on_a_fixed_batch():
    from tkn.models import create_model

    torch.manual_seed(0)
    model = create_model("tdn10", input_size=16)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.rand(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)),
                      batch_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = [train_one_epoch(model, data, opt, task="classification", loss="cross_entropy",
                              device=torch.device("cpu"))["loss"] for _ in range(8)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_windows_clipped_after_each_step():
    from tkn.models import create_model

    torch.manual_seed(0)
    model = create_model("tdn10", input_size=16)
    with torch.no_grad():
        for p in window_parameters(model):
            p.add_(3.0)  # push m far outside [0, 1]
    data = DataLoader(TensorDataset(torch.rand(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    train_one_epoch(model, data, opt, task="classification", loss="cross_entropy", device=torch.device("cpu"))
    for name, p in model.named_parameters():
        if name.endswith(".m"):
            assert float(p.detach().max()) <= 1.0 and float(p.detach().min()) >= 0.0


def test_weight_decay_spares_window_parameters():
    from tkn.models import create_model

    model = create_model("tdn10", input_size=16)
    cfg = TrainConfig(weight_decay=0.5, lr=0.1, momentum=0.0, nesterov=False)
    opt = build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    n_windows = 0
    for n, p in model.named_parameters():
        if n.endswith(".m") or n.endswith(".s"):
            n_windows += 1
            assert torch.equal(p, before[n]), n
        else:  # plain SGD with decay and zero gradient: p <- p - lr * wd * p
            assert torch.allclose(p, before[n] * (1 - 0.1 * 0.5)), n
    assert n_windows == 2 * 6  # six target layers in TDN10


def test_subset_is_seeded_sorted_and_sized():
    ds = TensorDataset(torch.arange(100))
    a, b, c = subset(ds, 10, 5), subset(ds, 10, 5), subset(ds, 10, 6)
    ia = [int(a[i][0]) for i in range(10)]
    assert ia == [int(b[i][0]) for i in range(10)] and ia == sorted(ia) and len(set(ia)) == 10
    assert ia != [int(c[i][0]) for i in range(10)]
    assert subset(ds, None, 0) is ds and subset(ds, 1000, 0) is ds


def _order(loader, seed, epoch):
    set_epoch(loader, seed, epoch)
    return [b[0].tolist() for b in loader]


def test_shuffle_derives_from_seed_and_epoch_only():
    ds = TensorDataset(torch.arange(20))
    cfg = TrainConfig(batch_size=4, seed=9)
    one = train_loader(ds, cfg, DistContext())
    first = _order(one, 9, 3)
    _order(one, 9, 0), _order(one, 9, 1)  # other epochs in between change nothing
    assert _order(train_loader(ds, cfg, DistContext()), 9, 3) == first == _order(one, 9, 3)
    assert _order(one, 9, 4) != first
    assert sorted(sum(first, [])) == list(range(20))


def test_two_process_batches_union_to_the_single_process_batch():
    """Global batch semantics: rank r takes batch_size/2 samples; the two halves of step k form batch k."""
    ds = TensorDataset(torch.arange(24))
    cfg = TrainConfig(batch_size=8, seed=2)
    single = _order(train_loader(ds, cfg, DistContext()), 2, 1)
    ranks = [_order(train_loader(ds, cfg, DistContext(rank=r, world_size=2)), 2, 1) for r in (0, 1)]
    assert all(len(b) == 4 for r in ranks for b in r)
    for k, batch in enumerate(single):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(batch)
    with pytest.raises(ValueError, match="divisible"):
        per_process_batch(9, DistContext(world_size=2))


def test_evaluation_shards_cover_each_sample_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    ds = TensorDataset(torch.arange(11))
    cfg = TrainConfig(batch_size=6)
    seen = [int(v) for r in range(3) for b in eval_loader(ds, cfg, DistContext(rank=r, world_size=3)) for v in b[0]]
    assert sorted(seen) == list(range(11))


# --------------------------------------------------------------------------- the tiny real run


def _rows(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_metrics_and_checkpoints(tiny_run):
    from tkn import flops
    from tkn.checkpoint import model_from_checkpoint

    code, out = tiny_run
    assert code == 0
    rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "train_loss", "train_error", "test_loss", "test_error", "macs", "speedup",
                             "penalty", "budget_multiplier", "predicted_speedup", "lr", "epoch_time_s"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.005])  # /10 at milestone 2
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 3
    assert {"optimizer_state", "scheduler_state", "rng", "config", "history"} <= set(last)
    best = torch.load(out / "best.pt", weights_only=True)
    errors = [float(r["test_error"]) for r in rows]
    assert best["epoch"] == 1 + errors.index(min(errors))
    model, _ = model_from_checkpoint(out / "last.pt")
    assert int(rows[-1]["macs"]) == flops.count(model, (1, 28, 28)).macs
    penalty = sum(layer.l2 * float((layer.s.detach().double() ** 2).sum())
                  for layer in model.modules() if hasattr(layer, "l2"))
    assert float(rows[-1]["penalty"]) == pytest.approx(penalty, rel=1e-5)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == last["config"] and saved["model"] == "tdn10" and saved["epochs"] == 3


def test_tiny_run_test_error_matches_independent_evaluation(tiny_run):
    import tkn.data
    from tkn.checkpoint import model_from_checkpoint

    _, out = tiny_run
    model, payload = model_from_checkpoint(out / "last.pt")
    test = tkn.data.load("mnist-5k", "test")
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(3 + 1))[:32].sort().values
    wrong, loss = 0, 0.0
    with torch.no_grad():
        for i in idx.tolist():
            x, y = test[i]
            z = model(x[None])[0].double()
            wrong += int(int(z.argmax()) != int(y))
            loss += float(torch.logsumexp(z, 0) - z[int(y)])
    row = _rows(out)[-1]
    assert float(row["test_error"]) == pytest.approx(100.0 * wrong / 32)
    assert float(row["test_loss"]) == pytest.approx(loss / 32, rel=1e-5)
    assert math.isfinite(float(row["train_loss"]))


def test_regression_epoch_reports_mse_and_mae_of_its_batches():
    """Euclidean loss (paper Table 6): with lr 0, the epoch's mse/mae equal a direct float64 computation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    x, y = torch.rand(10, 1, 4, 4), torch.rand(10) * 16
    data = DataLoader(TensorDataset(x, y), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = train_one_epoch(model, data, opt, task="regression", loss="mse", device=torch.device("cpu"))
    with torch.no_grad():
        d = model(x)[:, 0].double() - y.double()
    assert got["mse"] == pytest.approx(float((d * d).mean()), rel=1e-6)
    assert got["mae"] == pytest.approx(float(d.abs().mean()), rel=1e-6)
    assert got["loss"] == pytest.approx(got["mse"], rel=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = [train_one_epoch(model, data, opt, task="regression", loss="mse", device=torch.device("cpu"))["loss"]
              for _ in range(5)]
    assert losses[-1] < losses[0]


def test_fast_execution_follows_the_dense_loss_curve(tmp_path, monkeypatch):
    """``execution="fast"`` (the default) trains the same function as the dense reference: same losses."""
    from tkn.ops import fast_conv as fast_path
    from tkn.training import TrainConfig, train

    blocked = []
    original = fast_path._BlockConvs.apply
    monkeypatch.setattr(fast_path._BlockConvs, "apply", lambda *a: blocked.append(1) or original(*a))
    histories = {}
    for execution in ("fast", "dense"):
        cfg = TrainConfig(model="tkn6", data="mnist-5k", epochs=3, batch_size=16, lr=0.02, milestones=[],
                          max_train_samples=32, max_test_samples=16, l2=0.0, target_speedup=4.0, min_roi=2,
                          execution=execution, out=str(tmp_path / execution), progress=False)
        result = train(cfg)
        histories[execution] = [(r["train_loss"], r["test_loss"], r["speedup"]) for r in result.history]
    fast, dense = histories["fast"], histories["dense"]
    assert fast[-1][2] >= 4.0 and blocked, "the windows must have shrunk and the fast path run ROI blocks"
    for (lf, tf, sf), (ld, td, sd) in zip(fast, dense):
        assert lf == pytest.approx(ld, rel=1e-4) and tf == pytest.approx(td, rel=1e-4)
        assert sf == pytest.approx(sd, rel=1e-3)  # float rounding may move a channel's ROI border by a pixel
