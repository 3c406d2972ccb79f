"""Window files: the learned m, s of a model, saved and loaded back exactly; the packaged ones; bad files."""
from __future__ import annotations

import json

import pytest
import torch

from tkn.convert import target_layers
from tkn.flops import count
from tkn.models import create_model
from tkn.windowfile import FORMAT, list_windows, load_windows, save_windows


def test_round_trip_keeps_every_window_and_the_rois(tmp_path):
    torch.manual_seed(0)
    model = create_model("tdn10", input_size=28, min_roi=1)
    with torch.no_grad():
        for _, layer in target_layers(model):
            layer.m.uniform_(0.1, 0.9)
            layer.s.uniform_(0.05, 0.5)
    spec = {"name": "tdn10", "kwargs": {"input_size": 28, "min_roi": 1}}
    path = save_windows(model, tmp_path / "w.json", spec=spec, input_shape=(1, 28, 28), provenance="a test")
    loaded, shape, meta = load_windows(path, seed=3)
    assert shape == (1, 28, 28) and meta["format"] == FORMAT and meta["provenance"] == "a test"
    originals, copies = dict(target_layers(model)), dict(target_layers(loaded))
    assert originals.keys() == copies.keys()
    for name, layer in originals.items():
        torch.testing.assert_close(copies[name].m, layer.m, rtol=0, atol=0)
        torch.testing.assert_close(copies[name].s, layer.s, rtol=0, atol=0)
        assert torch.equal(copies[name].rois(14, 14), layer.rois(14, 14))
    assert count(loaded, (1, 28, 28)).macs == count(model, (1, 28, 28)).macs
    assert meta["flop_ratio"] == pytest.approx(count(model, (1, 28, 28)).dense_macs / count(model, (1, 28, 28)).macs)


def test_packaged_windows_come_from_training():
    names = list_windows()
    assert {"tkn6-mnist-12.9x", "tkn6-tlmnist28-4x"} <= set(names)
    for name in names:
        model, shape, meta = load_windows(name)
        assert meta["provenance"].startswith("tkn train (")
        report = count(model, shape)
        # the recorded factor is the model's own, and training shrank the windows
        assert report.dense_macs / report.macs == pytest.approx(meta["flop_ratio"], rel=1e-9)
        assert meta["flop_ratio"] > 3.5


def test_bad_window_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="no window file 'nope': give a path or one of"):
        load_windows("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable window file"):
        load_windows(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not a window file"):
        load_windows(bad)
    model = create_model("tkn6", input_size=28)
    good = save_windows(model, tmp_path / "g.json", spec={"name": "tkn6", "kwargs": {"input_size": 28}},
                        input_shape=(1, 28, 28))
    payload = json.loads(good.read_text())
    payload["layers"]["features.0"]["m"] = payload["layers"]["features.0"]["m"][:-1]
    bad.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"features.0.m has shape \(255, 2\), the layer \(256, 2\)"):
        load_windows(bad)
    del payload["layers"]["features.0"]
    bad.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="are not the model's"):
        load_windows(bad)
    with pytest.raises(ValueError, match="no target layers"):
        save_windows(torch.nn.Conv2d(1, 1, 3), tmp_path / "x.json", spec={"name": "x"}, input_shape=(1, 8, 8))
