"""Every registered model traces with ``torch.fx.symbolic_trace`` and its traced module computes the model's
outputs; the checks on real inputs keep their messages."""
from __future__ import annotations

import re

import pytest
import torch
from torch import fx

from tkn.layers import TargetConv2d
from tkn.models import create_model, list_models

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _random_windows_(model: torch.nn.Module, seed: int) -> None:
    """Windows with ROIs of many sizes, batch norms with non-trivial statistics (so the outputs depend on both)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, TargetConv2d):
            m.m.copy_(torch.rand(m.m.shape, generator=g))
            m.s.copy_(torch.rand(m.s.shape, generator=g) * 0.45 + 0.05)
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name", list_models())
def test_symbolic_trace_equals_the_model(name):
    model = create_model(name).eval()
    _random_windows_(model, 7)
    traced = fx.symbolic_trace(model)
    targets = sum(isinstance(m, TargetConv2d) for m in model.modules())
    # a target layer is one node of the graph (its ROI geometry needs the input's size)
    nodes = [n for n in traced.graph.nodes if n.op == "call_function" and n.target.__name__ == "target_layer_call"]
    assert len(nodes) == targets
    x = torch.randn(3, model.in_channels, *model.input_size)
    with torch.no_grad():
        want, got = model(x), traced(x)
    assert want.shape == (3, model.num_classes) and want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tkn6", "tdn10", "tstn", "tresnet18"])
def test_checks_still_reject_bad_inputs(name):
    model = create_model(name).eval()
    with pytest.raises(ValueError, match=re.escape("input must have rank 4 (N, C, H, W), got shape (1, 28, 28)")):
        model(torch.randn(1, 28, 28))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        model([1.0])
