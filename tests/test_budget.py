"""``tkn.MacBudget``: the differentiable measure, the schedule, the projection, persistence, real training."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import tkn
from tkn.budget import MacBudget, roi_mac_measure


def _small_tkn(min_roi=None) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )
    return tkn.targetize(net, min_roi=min_roi)


def _exact_roi_macs(layer, h, w) -> int:
    return layer.macs(h, w)


@pytest.mark.parametrize("seed", range(4))
def test_measure_brackets_the_exact_count(seed):
    layer = tkn.TargetConv2d(3, 24, 3, min_roi=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # centres also outside the map, scales from tiny to covering: ROIs cut by the border
        layer.m.copy_(torch.rand(24, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2)
        layer.s.copy_(torch.rand(24, 2, generator=g, dtype=torch.float64) * 0.8)
    h, w = 17, 12
    measure = roi_mac_measure(layer, h, w).item()
    exact = _exact_roi_macs(layer, h, w)
    m, s = layer.clipped(h, w)
    half = s.detach() / math.sqrt(2)
    wy = ((m[:, 0] + half[:, 0]).clamp(0, 1) - (m[:, 0] - half[:, 0]).clamp(0, 1)) * h
    wx = ((m[:, 1] + half[:, 1]).clamp(0, 1) - (m[:, 1] - half[:, 1]).clamp(0, 1)) * w
    slack = float(((wy.detach() + 2).clamp(max=h) * (wx.detach() + 2).clamp(max=w)).sum()) * 27
    assert measure <= exact + 1e-6 <= slack + 1e-6
    # by hand for one channel: the continuous interval, times the map, times C_in * k * k
    c0 = float((wy[0] * wx[0]).detach()) * 27
    assert float(roi_mac_measure(_one_channel(layer, 0), h, w)) == pytest.approx(c0)


def _one_channel(layer, c):
    one = tkn.TargetConv2d(3, 1, 3, min_roi=1, dtype=torch.float64)
    with torch.no_grad():
        one.m.copy_(layer.m[c:c + 1])
        one.s.copy_(layer.s[c:c + 1])
    return one


def test_measure_gradients_match_finite_differences():
    layer = tkn.TargetConv2d(2, 6, 3, min_roi=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # away from the clamp's kinks, one ROI crossing the border
        layer.m.copy_(torch.rand(6, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2)
        layer.s.copy_(torch.rand(6, 2, generator=g, dtype=torch.float64) * 0.3 + 0.2)
        layer.m[0, 0] = 0.05
    assert torch.autograd.gradcheck(lambda m, s: _measure_with(layer, m, s), (layer.m, layer.s))
    total = roi_mac_measure(layer, 15, 15)
    total.backward()
    assert float(layer.s.grad.abs().min()) > 0 and float(layer.m.grad[0, 0]) != 0  # the border ROI moves in


def _measure_with(layer, m, s):
    clone = copy.copy(layer)
    clone._parameters = dict(layer._parameters, m=m, s=s)
    return roi_mac_measure(clone, 15, 15)


def test_speedup_equals_the_counter_and_max_is_enforced():
    model = _small_tkn(min_roi=2)
    budget = MacBudget(model, (1, 28, 28), 2.0, total_steps=10)
    report = tkn.flops.count(model, (1, 28, 28))
    assert budget.speedup() == pytest.approx(report.dense_macs / report.macs) == pytest.approx(1.0)
    top = budget.max_speedup
    with pytest.raises(ValueError, match=f"largest speed-up this model can reach, {top:.3f}"):
        MacBudget(model, (1, 28, 28), top * 1.01, total_steps=10)
    for bad, match in [(0.5, "target_speedup must be a finite number >= 1"),
                       (float("nan"), "target_speedup must be a finite")]:
        with pytest.raises(ValueError, match=match):
            MacBudget(model, (1, 28, 28), bad, total_steps=10)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        MacBudget(model, (1, 28, 28), 2.0, total_steps=0)
    with pytest.raises(ValueError, match="no target layer"):
        MacBudget(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 8, 8), 2.0, total_steps=3)


def test_schedule_ramps_geometrically_then_holds():
    budget = MacBudget(_small_tkn(min_roi=1), (1, 28, 28), 9.0, total_steps=100, ramp=0.5)
    assert budget.scheduled_speedup(0) == 1.0
    assert budget.scheduled_speedup(25) == pytest.approx(3.0)
    assert budget.scheduled_speedup(50) == budget.scheduled_speedup(100) == budget.scheduled_speedup(150) == 9.0


def test_projection_alone_reaches_the_target_without_any_optimiser():
    model = _small_tkn(min_roi=1)
    budget = MacBudget(model, (1, 28, 28), 6.0, total_steps=8)
    seen = []
    for _ in range(8):
        budget.step()
        seen.append(budget.speedup())
        assert budget.scheduled_speedup() <= seen[-1] <= budget.band * budget.scheduled_speedup() * 1.001
    assert 6.0 <= seen[-1] <= 6.6
    # the projection shrank the windows around their centres: the ROIs sit in the middle of each map
    roi = tkn.target_layers(model)[1][1].rois(14, 14).float()
    assert float(((roi[:, 0] + roi[:, 1]) / 2).mean()) == pytest.approx(7.0, abs=0.6)


def _batches(n_steps: int, seed: int):
    from tkn.data import load

    data = load("mnist-5k", "train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(data), (n_steps, 32), generator=g)
    for row in idx:
        xs, ys = zip(*(data[int(i)] for i in row))
        yield torch.stack(xs), torch.tensor(ys)


def _train(model, budget, steps, opt, seed=0):
    losses = []
    for x, y in _batches(steps, seed):
        loss = nn.functional.cross_entropy(model(x), y)
        total = loss + budget.penalty()
        opt.zero_grad()
        total.backward()
        opt.step()
        tkn.clip_parameters_(model)
        budget.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("steps,optimizer,fall", [(30, "sgd", 0.9), (120, "sgd", 0.3), (60, "adam", 0.6)])
def test_real_training_reaches_the_budget_and_learns(steps, optimizer, fall):
    model = _small_tkn(min_roi=2)
    budget = MacBudget(model, (1, 28, 28), 5.0, total_steps=steps)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=2e-3))
    losses = _train(model, budget, steps, opt)
    report = tkn.flops.count(model, (1, 28, 28))
    assert budget.speedup() == pytest.approx(report.dense_macs / report.macs)
    assert 0.9 * 5.0 <= budget.speedup() <= 1.2 * 5.0
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < fall * first, f"the task loss should fall while the windows shrink: {first:.3f} -> {last:.3f}"


def test_state_dict_resumes_bitwise():
    def fresh():
        model = _small_tkn(min_roi=2)
        return model, MacBudget(model, (1, 28, 28), 4.0, total_steps=20), None

    model_a, budget_a, _ = fresh()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05, momentum=0.9)
    _train(model_a, budget_a, 20, opt_a)

    model_b, budget_b, _ = fresh()
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9)
    batches = list(_batches(20, 0))
    for x, y in batches[:10]:
        _one_step(model_b, budget_b, opt_b, x, y)
    saved = copy.deepcopy((model_b.state_dict(), opt_b.state_dict(), budget_b.state_dict()))
    model_c, budget_c, _ = fresh()
    opt_c = torch.optim.SGD(model_c.parameters(), lr=0.05, momentum=0.9)
    model_c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    budget_c.load_state_dict(saved[2])
    assert budget_c.steps == 10 and budget_c.multiplier == budget_b.multiplier
    for x, y in batches[10:]:
        _one_step(model_c, budget_c, opt_c, x, y)
    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), name
    assert budget_c.multiplier == budget_a.multiplier
    with pytest.raises(ValueError, match="target_speedup"):
        MacBudget(_small_tkn(min_roi=2), (1, 28, 28), 3.0, total_steps=20).load_state_dict(saved[2])


def _one_step(model, budget, opt, x, y):
    total = nn.functional.cross_entropy(model(x), y) + budget.penalty()
    opt.zero_grad()
    total.backward()
    opt.step()
    tkn.clip_parameters_(model)
    budget.step()
