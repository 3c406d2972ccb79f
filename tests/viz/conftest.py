"""Shared fixtures of the tkn show / sweep / rescale / export tests: small TKNs and checkpoints."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tkn


def shrink_windows(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every target layer distinct, off-centre windows (as after training) so ROIs differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in tkn.target_layers(model):
            c = layer.out_channels
            layer.m.copy_(torch.rand(c, 2, generator=g) * 0.8 + 0.1)
            layer.s.copy_(torch.rand(c, 2, generator=g) * 0.5 + 0.15)
    return model


@pytest.fixture
def small_tkn() -> nn.Module:
    """Two target layers at 16x16 and 8x8, a linear head: input (1, 16, 16), 5 classes."""
    torch.manual_seed(0)
    net = nn.Sequential(
        tkn.TargetConv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        tkn.TargetConv2d(6, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    return shrink_windows(net).eval()


@pytest.fixture
def tdn10_checkpoint(tmp_path):
    """A registered TDN10 at 16x16 with shrunken windows, saved in the tkn checkpoint format."""
    from tkn.checkpoint import save_checkpoint
    from tkn.models import create_model

    torch.manual_seed(0)
    model = shrink_windows(create_model("tdn10", input_size=16), seed=1).eval()
    path = save_checkpoint(tmp_path / "run" / "best.pt", {
        "model": dict(model.spec), "model_state": model.state_dict(), "epoch": 3, "input_shape": [1, 16, 16],
    })
    return path, model
