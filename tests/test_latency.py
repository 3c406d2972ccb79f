"""The latency model (values, gradients, monotone fit, cache) and LatencyBudget's loop contract on a given model."""
from __future__ import annotations

import json
import math

import pytest
import torch

import tkn
from tkn.budget import roi_mac_measure
from tkn.convert import target_layers
from tkn.latency import (LatencyBudget, LatencyModel, LayerTable, SparseInput, _frozen_sparse_macs, _sparse_inputs,
                         calibrate, producers)
from tkn.models import create_model
from reference import input_sparse_macs_ref


def test_layer_table_interpolates_with_the_segment_slope():
    table = LayerTable([10.0, 30.0, 20.0], [1.0, 5.0, 2.0])  # unsorted input is sorted
    assert table.macs == [10.0, 20.0, 30.0] and table.seconds == [1.0, 2.0, 5.0]
    w = torch.tensor(25.0, dtype=torch.float64, requires_grad=True)
    t = table(w)
    t.backward()
    assert t.item() == pytest.approx(3.5) and w.grad.item() == pytest.approx(0.3)
    # flat outside the measured range, with a zero gradient
    for x, expected in ((5.0, 1.0), (40.0, 5.0), (10.0, 1.0), (30.0, 5.0)):
        w = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        t = table(w)
        t.backward()
        assert t.item() == pytest.approx(expected) and w.grad.item() == 0.0


def test_layer_table_is_made_monotone_by_pooling_violators():
    table = LayerTable([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 5.0, 2.0, 3.0, 10.0, 4.0])
    # the least-squares non-decreasing fit: (5, 2, 3) pooled to 10/3, (10, 4) to 7
    assert table.seconds == pytest.approx([1.0, 10 / 3, 10 / 3, 10 / 3, 7.0, 7.0])
    assert LayerTable([2.0, 1.0, 2.0], [3.0, 1.0, 5.0]).seconds == [1.0, 4.0]  # one point per count, the mean
    with pytest.raises(ValueError, match="as many times as MAC counts"):
        LayerTable([1.0, 2.0], [1.0])


def test_a_fed_layer_is_priced_by_its_producers_roi_fraction():
    """``b`` has a table measured with its producer ``a`` as small as itself (1 s/MAC) and one with ``a`` whole
    (3 s/MAC); between the two, the price is linear in ``a``'s ROI fraction."""
    lm = LatencyModel(1, 100.0, 0.5, {"a": LayerTable([0.0, 100.0], [0.0, 10.0]),
                                      "b": LayerTable([0.0, 100.0], [0.0, 100.0])},
                      dense_input={"b": LayerTable([0.0, 100.0], [0.0, 300.0])}, producers={"b": "a"},
                      dense_macs={"a": 100.0, "b": 100.0})
    a = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    # the producer as small as the layer (fraction 0.2 each): the same-level table, 0.5 + 2 + 20
    assert lm.predict({"a": a, "b": b}).item() == pytest.approx(22.5)
    assert lm.predict({"a": 10.0, "b": 20.0}).item() == pytest.approx(0.5 + 1 + 20)  # a smaller still: b stays
    assert lm.predict({"a": 100.0, "b": 20.0}).item() == pytest.approx(0.5 + 10 + 60)  # whole: dense-input table
    # halfway (fraction 0.6 = 0.2 + 0.5 * 0.8): halfway between 20 and 60 for b, plus a's 6
    a = torch.tensor(60.0, dtype=torch.float64, requires_grad=True)
    t = lm.predict({"a": a, "b": b})
    t.backward()
    assert t.item() == pytest.approx(0.5 + 6 + 40)
    # d/da: a's own slope 0.1 plus b's (60 - 20) / (100 * (1 - 0.2)); d/db: b's tables mixed half and half
    assert a.grad.item() == pytest.approx(0.1 + 40 / 80)
    # d/db: both tables' slopes mixed half and half, plus the mix weight's own dependence on b's fraction:
    # dw/db = (φ_a - 1) / (1 - φ_b)^2 / 100
    assert b.grad.item() == pytest.approx(1.0 + 0.5 * (3.0 - 1.0) + 40.0 * ((0.6 - 1.0) / 100 / (1 - 0.2) ** 2))
    # a layer without a producer, or a model without the second tables, prices as before
    plain = LatencyModel(1, 100.0, 0.5, dict(lm.layers))
    assert plain.predict({"a": 100.0, "b": 20.0}).item() == pytest.approx(0.5 + 10 + 20)
    again = LatencyModel.from_dict(lm.to_dict())
    assert again.predict({"a": 60.0, "b": 20.0}).item() == pytest.approx(46.5)


def test_producers_are_the_previous_target_layer_of_a_chain():
    net = create_model("tkn6", input_size=28)
    assert tkn.latency.producers(net) == {"features.3": "features.0", "features.6": "features.3"}


def _synthetic(model: torch.nn.Module, batch: int = 64) -> LatencyModel:
    """A made-up engine: per layer 2 ms of overhead plus 1 ns per MAC per sample below dense, dense at full size."""
    from tkn.flops import count

    rows = {r.name: r for r in count(model, (1, 28, 28)).layers}
    tables = {}
    for name, layer in target_layers(model):
        dense = float(rows[name].dense_macs)
        macs = [dense / r for r in (64, 16, 4, 1)]
        tables[name] = LayerTable(macs, [2e-3 + 1e-9 * batch * w for w in macs])
    dense_s = 1e-3 + sum(t.seconds[-1] for t in tables.values())
    return LatencyModel(batch, dense_s, 1e-3, tables)


def _train(model: torch.nn.Module, budget: LatencyBudget, steps: int) -> None:
    """The budget's plain loop on random 28x28 digits: task loss + penalty, optimiser step, clip, budget step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
        loss = torch.nn.functional.cross_entropy(model(x), y) + budget.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tkn.clip_parameters_(model)
        budget.step()


def test_latency_model_predicts_the_sum_of_its_tables():
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, min_roi=1)
    lm = _synthetic(model)
    macs = {name: t.macs[1] for name, t in lm.layers.items()}
    assert float(lm.predict(macs)) == pytest.approx(1e-3 + sum(t.seconds[1] for t in lm.layers.values()))
    again = LatencyModel.from_dict(lm.to_dict())
    assert float(again.predict(macs)) == float(lm.predict(macs))


def test_budget_reaches_the_predicted_speedup_and_prices_time():
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, min_roi=1, l2=0.0)
    lm = _synthetic(model)
    budget = LatencyBudget(model, (1, 28, 28), target_speedup=4.0, total_steps=12, latency_model=lm)
    assert budget.speedup() == pytest.approx(lm.dense_seconds / float(lm.predict(
        {n: float(layer.macs(*hw)) for n, layer, hw in [(c.name, c.layer, c.hw) for c in budget.calls]})))
    # the surrogate's gradient, with windows inside the map (at s = 1 the ROIs are clipped to the whole map and
    # flat in s, as the MAC measure is)
    with torch.no_grad():
        for c in budget.calls:
            c.layer.m.uniform_(0.3, 0.7)
            c.layer.s.uniform_(0.2, 0.4)
    budget.multiplier = 1.0
    budget.penalty().backward()
    for c in budget.calls:
        assert c.layer.s.grad is not None and torch.isfinite(c.layer.s.grad).all() and c.layer.s.grad.abs().sum() > 0
    assert budget.measure().item() == pytest.approx(
        1e-3 + sum(lm.layers[c.name](roi_mac_measure(c.layer, *c.hw).detach()).item() for c in budget.calls))
    # chain rule: d measure / d s = (the table's slope at the layer's MACs) * d MACs / d s
    call = budget.calls[1]
    table = lm.layers[call.name]
    w = roi_mac_measure(call.layer, *call.hw).detach().double()
    i = max(j for j in range(len(table.macs) - 1) if table.macs[j] <= w.item())
    slope = (table.seconds[i + 1] - table.seconds[i]) / (table.macs[i + 1] - table.macs[i])
    (got,) = torch.autograd.grad(budget.measure(), call.layer.s)
    (macs_grad,) = torch.autograd.grad(roi_mac_measure(call.layer, *call.hw), call.layer.s)
    torch.testing.assert_close(got, (slope * macs_grad.double()).to(got.dtype), rtol=1e-5, atol=0)
    _train(model, budget, steps=12)
    assert 4.0 * 0.999 <= budget.speedup() <= 4.0 * 1.1


def test_unreachable_target_names_the_largest_and_state_round_trips():
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, min_roi=1)
    lm = _synthetic(model)
    top = LatencyBudget(model, (1, 28, 28), 1.5, 10, latency_model=lm).max_speedup
    with pytest.raises(ValueError, match=rf"largest measured speed-up .* {top:.3f}"):
        LatencyBudget(model, (1, 28, 28), top * 1.01, 10, latency_model=lm)
    with pytest.raises(ValueError, match="target_speedup must be a number >= 1"):
        LatencyBudget(model, (1, 28, 28), math.nan, 10, latency_model=lm)
    a = LatencyBudget(model, (1, 28, 28), 2.0, 10, latency_model=lm)
    a.steps, a.multiplier = 4, 0.75
    b = LatencyBudget(model, (1, 28, 28), 2.0, 10, latency_model=_synthetic(model, batch=1))
    b.load_state_dict(a.state_dict())
    assert (b.steps, b.multiplier) == (4, 0.75) and b.latency.to_dict() == lm.to_dict()
    with pytest.raises(ValueError, match="batch_size=64, this budget 1"):
        LatencyBudget(model, (1, 28, 28), 2.0, 10, batch_size=1, latency_model=lm).load_state_dict(a.state_dict())


def test_feedback_steps_start_at_the_end_of_the_ramp():
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, min_roi=1)
    lm = _synthetic(model)
    steps = lambda total, k: LatencyBudget(model, (1, 28, 28), 2.0, total, latency_model=lm,  # noqa: E731
                                           feedback=k).feedback_steps()
    assert steps(250, 0) == [] and steps(250, 1) == [63] and steps(250, 3) == [63, 125, 188]
    # by default three measurements below batch 16, none from there on
    assert LatencyBudget(model, (1, 28, 28), 2.0, 10, batch_size=1, latency_model=lm).feedback == 3
    assert LatencyBudget(model, (1, 28, 28), 2.0, 10, batch_size=16, latency_model=lm).feedback == 0
    assert steps(4, 3) == [1, 2, 3] and steps(2, 5) == [1, 2]  # never past the schedule, each step once
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="feedback must be None or an int >= 0"):
            LatencyBudget(model, (1, 28, 28), 2.0, 10, latency_model=lm, feedback=bad)


def _fake_timing(monkeypatch, speedup: float) -> list:
    """Make the budget's measurements find the frozen model ``speedup`` times faster than the dense one."""
    from tkn import latency

    calls = []

    def timed(fns, repeats, **kwargs):
        calls.append(sorted(fns))
        for f in fns.values():
            f()  # the frozen model and the dense one run
        return {"dense": {"min": 6e-3 * speedup}, "frozen": {"min": 6e-3}}

    monkeypatch.setattr(latency, "interleaved", timed)
    return calls


def test_a_measurement_corrects_the_prediction_and_keeps_the_rng(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, min_roi=1, l2=0.0)
    lm = _synthetic(model, batch=2)
    budget = LatencyBudget(model, (1, 28, 28), 3.0, 12, batch_size=2, latency_model=lm)
    raw = budget.speedup()
    calls = _fake_timing(monkeypatch, speedup=0.5 * raw)  # the model runs at half the predicted speed-up
    rng = torch.get_rng_state()
    assert budget.measure_model(5) == pytest.approx(0.5 * raw)
    assert torch.equal(torch.get_rng_state(), rng) and calls == [["dense", "frozen"]]
    assert budget.correction == pytest.approx(2.0) and budget.speedup() == pytest.approx(0.5 * raw)
    assert budget.measure().item() == pytest.approx(2.0 * lm.predict(
        {c.name: roi_mac_measure(c.layer, *c.hw).detach() for c in budget.calls}).item())
    assert budget.measurements == [{"step": 5.0, "measured": pytest.approx(0.5 * raw), "predicted": pytest.approx(raw)}]
    again = LatencyBudget(model, (1, 28, 28), 3.0, 12, batch_size=2, latency_model=lm)
    again.load_state_dict(json.loads(json.dumps(budget.state_dict())))
    assert again.correction == budget.correction and again.measurements == budget.measurements
    assert again.speedup() == pytest.approx(budget.speedup())
    _fake_timing(monkeypatch, speedup=0.125 * raw)  # a second measurement: the correction pools both
    from tkn import latency

    monkeypatch.setattr(latency, "busy_cores", lambda: 1.5)
    with pytest.warns(RuntimeWarning, match="feedback while other work keeps 1.5 of"):
        budget.measure_model(6)
    assert budget.correction == pytest.approx(math.sqrt(2.0 * 8.0)) and budget.speedup() == pytest.approx(raw / 4)


def test_feedback_pushes_a_model_that_runs_slower_than_predicted(monkeypatch):
    """Measured at 0.8 of the predicted speed-up at the end of the ramp, the budget ends where the corrected
    prediction meets the target: the latency model alone then predicts 1/0.8 of it."""
    torch.manual_seed(0)
    model = create_model("tkn6", input_size=28, min_roi=1, l2=0.0).train()
    lm = _synthetic(model, batch=2)
    budget = LatencyBudget(model, (1, 28, 28), 3.0, 12, batch_size=2, latency_model=lm, feedback=2)
    from tkn import latency

    def timed(fns, repeats, **kwargs):  # 0.8 of what the latency model predicts for the current windows
        raw = lm.dense_seconds / float(lm.predict(budget._layer_macs(), budget._sparse_macs()))
        return {"dense": {"min": 6e-3 * 0.8 * raw}, "frozen": {"min": 6e-3}}

    monkeypatch.setattr(latency, "interleaved", timed)
    _train(model, budget, steps=12)
    assert [m["step"] for m in budget.measurements] == budget.feedback_steps() == [3, 7]
    assert budget.correction == pytest.approx(1 / 0.8)
    assert 3.0 * 0.999 <= budget.speedup() <= 3.0 * 1.1
    raw = lm.dense_seconds / float(lm.predict(budget._layer_macs(), budget._sparse_macs()))
    assert raw == pytest.approx(budget.speedup() / 0.8)


def test_calibration_measures_every_layer_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = tkn.targetize(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 16, 3, padding=1)), min_roi=1)
    lm = calibrate(net, (1, 12, 12), batch_size=3, levels=(1.0, 4.0), repeats=1)
    assert set(lm.layers) == {"0", "2"} and lm.batch_size == 3 and lm.dense_seconds > 0
    assert all(len(t.macs) == 2 and t.macs[0] < t.macs[1] for t in lm.layers.values())
    assert [c["flop_ratio"] for c in lm.checks] == [1.0, 4.0]
    calls = []
    monkeypatch.setattr("tkn.latency.interleaved", lambda *a, **k: calls.append(1))
    again = calibrate(net, (1, 12, 12), batch_size=3, levels=(1.0, 4.0), repeats=1)
    assert not calls and again.to_dict() == lm.to_dict()


def test_calibration_runs_on_the_threads_asked_for_and_caches_them_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = tkn.targetize(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1)), min_roi=1)
    seen = []
    timed = tkn.latency.interleaved

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return timed(*args, **kwargs)

    monkeypatch.setattr("tkn.latency.interleaved", spy)
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    one = calibrate(net, (1, 8, 8), batch_size=2, levels=(1.0,), repeats=1, threads=other)
    assert seen and set(seen) == {other} and torch.get_num_threads() == before
    seen.clear()
    calibrate(net, (1, 8, 8), batch_size=2, levels=(1.0,), repeats=1, threads=other)
    assert not seen  # cached for these threads
    mine = calibrate(net, (1, 8, 8), batch_size=2, levels=(1.0,), repeats=1)
    assert seen and set(seen) == {before} and mine.key != one.key  # another entry for the process's threads
    with pytest.raises(ValueError, match="threads must be a positive int, got 0"):
        calibrate(net, (1, 8, 8), batch_size=2, threads=0)


def test_the_cache_entry_does_not_depend_on_how_the_layers_train(tmp_path, monkeypatch):
    # tkn train switches its target layers to the fast ROI-block execution before building the budget; the
    # frozen model is the same, so a calibration made beforehand (tkn frontier --plan) must be found
    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = tkn.targetize(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1)), min_roi=1)
    first = calibrate(net, (1, 8, 8), batch_size=2, levels=(1.0,), repeats=1)
    net[0].execution = "fast"
    assert "execution='fast'" in repr(net)
    calls = []
    monkeypatch.setattr("tkn.latency.interleaved", lambda *a, **k: calls.append(1))
    again = calibrate(net, (1, 8, 8), batch_size=2, levels=(1.0,), repeats=1)
    assert not calls and again.key == first.key


def test_a_layer_with_a_sparse_table_is_priced_by_its_input_sparse_macs():
    lm = LatencyModel(1, 100.0, 0.5, {"a": LayerTable([0.0, 100.0], [0.0, 10.0]),
                                      "b": LayerTable([0.0, 100.0], [0.0, 100.0])},
                      sparse={"b": LayerTable([0.0, 50.0, 100.0], [0.0, 20.0, 120.0])},
                      sparse_inputs={"b": SparseInput("a", 2, (7, 7), (1, 1), (14, 14))})
    x = torch.tensor(75.0, dtype=torch.float64, requires_grad=True)
    t = lm.predict({"a": 40.0, "b": 90.0}, {"b": x})
    t.backward()
    assert t.item() == pytest.approx(0.5 + 4.0 + 70.0) and x.grad.item() == pytest.approx(2.0)
    assert lm.predict({"a": 40.0, "b": 90.0}).item() == pytest.approx(0.5 + 4.0 + 90.0)  # no value: ROI MACs
    again = LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert again.sparse_inputs == lm.sparse_inputs and again.predict({"a": 40.0, "b": 90.0}, {"b": 75.0}).item() == (
        pytest.approx(74.5))


def _tkn6_with_windows(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("tkn6", input_size=28, min_roi=1).eval()
    with torch.no_grad():
        for _, layer in target_layers(model):
            layer.m.uniform_(0.1, 0.9)
            layer.s.uniform_(0.05, 0.6)
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_input_macs_are_what_the_frozen_layer_skips_to(seed):
    """The budget's input-sparse MACs (from the two layers' windows) equal the frozen layer's (from its ROIs and
    the input supports freeze gave it) and a product-by-product count; the real-valued surrogate is close and
    differentiable in both layers' windows."""
    model = _tkn6_with_windows(seed)
    frozen = tkn.freeze(model, torch.rand(2, 1, 28, 28), repeats=1)
    found = _sparse_inputs(frozen, producers(model))
    assert sorted(found) == ["features.3", "features.6"]
    assert found["features.3"].producer == "features.0" and found["features.3"].producer_pool == 2
    modules = dict(model.named_modules())
    hw = {"features.0": (28, 28), "features.3": (14, 14), "features.6": (7, 7)}
    for name, geo in found.items():
        layer, producer = modules[name], modules[geo.producer]
        exact = geo.macs(layer, hw[name], producer, hw[geo.producer])
        assert float(exact) == _frozen_sparse_macs(frozen.get_submodule(name))
        p = geo.producer_pool
        support = [[y0 // p, -(-y1 // p), x0 // p, -(-x1 // p)] for y0, y1, x0, x1 in
                   producer.rois(*hw[geo.producer]).tolist()]
        assert float(exact) == input_sparse_macs_ref(layer.rois(*hw[name]).tolist(), support, layer.kernel_size,
                                                     layer.stride, layer.dilation, geo.pad, geo.extent)
        assert float(exact) < layer.macs(*hw[name])  # the producer's small ROIs leave inputs out
        soft = geo.macs(layer, hw[name], producer, hw[geo.producer], exact=False)
        assert soft.item() == pytest.approx(float(exact), rel=0.05)  # real ends, widened for the rounding
        grads = torch.autograd.grad(soft, [layer.s, producer.s])
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_budget_prices_fed_layers_by_their_input_sparse_macs():
    """With sparse tables, the budget's prediction uses the exact input-sparse MACs, the penalty reaches a producer
    through the layers it feeds, and the loop reaches its target."""
    model = _tkn6_with_windows(0).train()
    frozen = tkn.freeze(model.eval(), torch.rand(2, 1, 28, 28), repeats=1)
    model.train()
    lm = _synthetic(model)
    lm.sparse_inputs = _sparse_inputs(frozen, producers(model))
    lm.sparse = {n: LayerTable(list(lm.layers[n].macs), list(lm.layers[n].seconds)) for n in lm.sparse_inputs}
    lm.layers["features.0"] = LayerTable([1.0], [2e-3])  # flat: its own windows cost nothing here
    budget = LatencyBudget(model, (1, 28, 28), target_speedup=3.0, total_steps=12, latency_model=lm)
    macs = {c.name: float(c.layer.macs(*c.hw)) for c in budget.calls}
    modules = dict(model.named_modules())
    hw = {c.name: c.hw for c in budget.calls}
    sparse = {n: float(g.macs(modules[n], hw[n], modules[g.producer], hw[g.producer])) for n, g in
              lm.sparse_inputs.items()}
    assert budget.speedup() == pytest.approx(lm.dense_seconds / float(lm.predict(macs, sparse)))
    assert budget.speedup() != pytest.approx(lm.dense_seconds / float(lm.predict(macs)))
    budget.multiplier = 1.0
    (grad,) = torch.autograd.grad(budget.penalty(), modules["features.0"].s)
    assert grad.abs().sum() > 0  # only through features.3's input-sparse MACs
    _train(model, budget, steps=12)
    assert 3.0 * 0.999 <= budget.speedup() <= 3.0 * 1.1


def test_calibration_builds_a_sparse_table_for_a_layer_fed_through_a_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = tkn.targetize(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1)), min_roi=1)
    lm = calibrate(net, (1, 12, 12), batch_size=3, levels=(1.0, 4.0), repeats=1, cache=False)
    # the second conv is fed by the first through the pool: both fits are measured, the better one prices it
    assert set(lm.fit_errors) == {"3"} and set(lm.fit_errors["3"]) == {"roi", "sparse"}
    assert ("3" in lm.sparse) == (lm.fit_errors["3"]["sparse"] < lm.fit_errors["3"]["roi"])
    assert lm.layers["3"].macs[-1] == 16 * 36 * 8 * 9  # level 1: whole maps
    if "3" in lm.sparse:
        assert lm.sparse_inputs["3"] == SparseInput("0", 2, (6, 6), (1, 1), (6, 6))
        # level 1's input-sparse count is the ROI count less the padding (per axis 6 positions x 3 taps, 2 of
        # them in the pad); level 4 measured twice (the producer as small as the layer, then whole)
        assert len(lm.sparse["3"].macs) == 3 and lm.sparse["3"].macs[-1] == 16 * 8 * 16 * 16
        assert lm.sparse["3"].macs[0] < lm.layers["3"].macs[0]


def test_calibration_at_batch_1_times_reduce_for_a_fed_layer_that_can_run_it(tmp_path, monkeypatch):
    from tkn.engine import native

    if not native.available() or native.strategy_unsupported("reduce", 16):
        pytest.skip("the native kernel cannot run 'reduce' here")
    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = tkn.targetize(torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 3, padding=1)), min_roi=1)
    lm = calibrate(net, (1, 16, 16), batch_size=1, levels=(1.0, 4.0), repeats=1, cache=False)
    assert set(lm.fit_errors) == {"3"}
    assert ("3" in lm.reduce) == ("3" in lm.sparse)  # input-sparse pricing comes with its "reduce" table
    if "3" in lm.reduce:  # "reduce" timed at every point, against the layer's ROI MACs
        assert lm.reduce["3"].macs == lm.layers["3"].macs and lm.reduce["3"].macs[-1] == 16 * 64 * 16 * 9
        assert all(t > 0 for t in lm.reduce["3"].seconds)


def test_calibration_warns_when_other_work_keeps_cores_busy(tmp_path, monkeypatch):
    import warnings

    from tkn import latency

    monkeypatch.setenv("TKN_CACHE", str(tmp_path))
    net = tkn.targetize(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1)), min_roi=1)
    monkeypatch.setattr(latency, "busy_cores", lambda: 1.5)
    with pytest.warns(RuntimeWarning, match=r"other work keeps 1\.5 of \d+ cores busy"):
        calibrate(net, (1, 8, 8), batch_size=1, levels=(1.0,), repeats=1)
    monkeypatch.setattr(latency, "busy_cores", lambda: 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        calibrate(net, (1, 8, 8), batch_size=1, levels=(1.0,), repeats=1, cache=False)  # quiet: no warning
    monkeypatch.setattr(latency, "busy_cores", lambda: pytest.fail("a cache hit measures nothing"))
    calibrate(net, (1, 8, 8), batch_size=1, levels=(1.0,), repeats=1)


def test_fit_error_is_the_rms_relative_error_of_the_predictions():
    from tkn.latency import _fit_error, _Point

    pts = [_Point(1.0, 1.0, 1.0), _Point(2.0, 2.0, 2.0), _Point(2.0, 1.0, 4.0)]
    assert _fit_error([1.0, 2.0, 4.0], pts) == 0.0
    assert _fit_error([1.5, 1.0, 5.0], pts) == pytest.approx(math.sqrt((0.5 ** 2 + 0.5 ** 2 + 0.25 ** 2) / 3))


def test_a_point_knows_its_time_without_a_plan():
    from tkn.latency import REDUCE, _plan_times, _Point

    class Layer:  # what _plan_times reads of a frozen layer: the plan it runs and freeze's times of each
        plan = type("Plan", (), {"label": REDUCE})()
        timings = {"dense": 8e-3, "native": 6e-3, "native-batch": 5e-3, REDUCE: 4e-3}

    plans = _plan_times(Layer(), 2e-3)  # measured on its own in more rounds: 2 ms, half freeze's 4 ms
    assert plans == pytest.approx({"dense": 4e-3, "native": 3e-3, "native-batch": 2.5e-3, REDUCE: 2e-3})
    point = _Point(10.0, 5.0, 2e-3, REDUCE, plans)
    assert point.without(REDUCE) == pytest.approx(2.5e-3)  # the fastest plan that is not "reduce"
    assert point.without("native") == 2e-3  # it does not run that plan: its own time
    assert _Point(10.0, 5.0, 2e-3, REDUCE).without(REDUCE) == 2e-3  # freeze timed nothing else
    Layer.timings = {}
    assert _plan_times(Layer(), 2e-3) == {}


def test_a_layer_with_a_reduce_table_takes_the_faster_of_its_two_tables():
    """Freeze keeps the faster plan: a fed layer with a "reduce" table costs the smaller of its input-sparse
    table (at its input-sparse MACs) and its "reduce" table (at its ROI MACs), with that one's slope."""
    lm = LatencyModel(1, 100.0, 0.0, {"a": LayerTable([0.0, 100.0], [0.0, 0.0]),
                                      "b": LayerTable([0.0, 100.0], [0.0, 100.0])},
                      sparse={"b": LayerTable([0.0, 100.0], [0.0, 50.0])},
                      sparse_inputs={"b": SparseInput("a", 2, (7, 7), (1, 1), (14, 14))},
                      reduce={"b": LayerTable([0.0, 100.0], [0.0, 20.0])})
    roi = torch.tensor(80.0, dtype=torch.float64, requires_grad=True)
    sparse = torch.tensor(60.0, dtype=torch.float64, requires_grad=True)
    t = lm.predict({"a": 10.0, "b": roi}, {"b": sparse})  # reduce 16 < sparse 30
    t.backward()
    assert t.item() == pytest.approx(16.0) and roi.grad.item() == pytest.approx(0.2) and sparse.grad.item() == 0.0
    assert lm.predict({"a": 10.0, "b": 80.0}, {"b": 20.0}).item() == pytest.approx(10.0)  # sparse 10 < reduce 16
    again = LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict())))
    assert again.reduce == lm.reduce and again.predict({"a": 10.0, "b": 80.0}, {"b": 60.0}).item() == (
        pytest.approx(16.0))
