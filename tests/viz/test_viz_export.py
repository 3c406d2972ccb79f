"""tkn.export and `tkn export`: the frozen model round-trips through TorchScript and ONNX (onnxruntime)."""
from __future__ import annotations

import json

import pytest
import torch

from tkn.cli import main
from tkn.engine import FrozenTargetConv2d
from tkn.ops.plan import CostModel
from tkn.export import export_model

# Plan from the cost model alone, without per-call cost: the export must carry the ROI-only execution.
BLOCKS = {"measure": False, "native": False, "candidates": [CostModel(copy_cost=0.0, call_cost=0.0)], "grids": ()}
#: tile plans write channels by index instead of by slice: they must export too
TILES = {"measure": False, "native": False, "candidates": [CostModel(copy_cost=0.0, call_cost=0.0)], "grids": (2,)}


@pytest.fixture
def roi_tkn(small_tkn):
    """small_tkn with two ROI groups per layer (so each frozen layer runs two blocks, not a dense conv)."""
    with torch.no_grad():
        for layer in (small_tkn[0], small_tkn[3]):
            c = layer.out_channels
            layer.m.copy_(torch.tensor([[0.3, 0.3]] * (c // 2) + [[0.7, 0.6]] * (c - c // 2)))
            layer.s.copy_(torch.full((c, 2), 0.3))
    return small_tkn


def batch(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_blocks_plan_is_what_gets_exported(roi_tkn):
    from tkn.engine import freeze

    frozen = freeze(roi_tkn, batch(2, 0), **BLOCKS)
    layers = [m for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)]
    assert [(m.plan.mode, len(m.blocks)) for m in layers] == [("blocks", 2), ("blocks", 2)]


def test_tiles_plan_is_what_gets_exported(roi_tkn):
    from tkn.engine import freeze

    frozen = freeze(roi_tkn, batch(2, 0), **TILES)
    assert [m.plan.mode for m in frozen.modules() if isinstance(m, FrozenTargetConv2d)] == ["tiles", "tiles"]


@pytest.mark.parametrize("options", [BLOCKS, TILES], ids=["blocks", "tiles"])
def test_torchscript_roundtrip(roi_tkn, tmp_path, options):
    result = export_model(roi_tkn, batch(2, 0), tmp_path / "m.pt", "torchscript", freeze_options=options)
    assert result.frozen and result.dynamic_batch and result.max_abs_diff <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = batch(5, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), roi_tkn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("options", [TILES], ids=["tiles"])  # index writes; slice writes export the same way
def test_onnx_roundtrip_under_onnxruntime(roi_tkn, tmp_path, options):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    result = export_model(roi_tkn, batch(2, 0), tmp_path / "m.onnx", "onnx", freeze_options=options)
    assert result.frozen and result.dynamic_batch, result.notes
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = batch(3, 2)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), roi_tkn(x), rtol=1e-4, atol=1e-4)


def test_export_cli_torchscript(tdn10_checkpoint, capsys):
    path, model = tdn10_checkpoint
    assert main(["export", "--checkpoint", str(path), "--format", "torchscript", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    out = path.with_name("best.torchscript.pt")
    assert report["path"] == str(out) and report["input_shape"] == [2, 1, 16, 16] and report["frozen"]
    loaded = torch.jit.load(str(out))
    x = batch(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


def test_export_errors(small_tkn, tmp_path, tdn10_checkpoint, capsys):
    with pytest.raises(ValueError, match="format"):
        export_model(small_tkn, batch(2, 0), tmp_path / "m", "tflite")
    with pytest.raises(ValueError, match="example"):
        export_model(small_tkn, torch.rand(1, 16, 16), tmp_path / "m.pt")
    path, _ = tdn10_checkpoint
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--input-size", "1,16"]) == 2
    assert "--input-size must be C,H,W" in capsys.readouterr().err
