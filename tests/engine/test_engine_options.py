"""``FreezeOptions``: each field checked when made; ``freeze(..., options=...)`` is the keyword call."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from helpers_engine import FINE, random_rois_
from tkn.engine import DEFAULT_CANDIDATES, TILE_GRIDS, FreezeOptions, FrozenTargetConv2d, freeze, plan_summary
from tkn.layers import TargetConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(TargetConv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2), TargetConv2d(16, 8, 3), nn.ReLU())
    random_rois_(net[0], 1)
    random_rois_(net[3], 2)
    return net.eval()


def test_defaults_and_normalised_fields():
    o = FreezeOptions()
    assert (o.backend, o.input_size, o.measure, o.repeats, o.permute, o.fuse, o.input_sparsity, o.graph, o.native,
            o.channels_last) == ("auto", None, True, 3, True, True, True, True, True, None)
    assert o.candidates == DEFAULT_CANDIDATES and o.grids == TILE_GRIDS
    o = FreezeOptions(input_size=[20, 24], candidates=[FINE], grids=[2, [3, 4]], native=["groups"])
    assert (o.input_size, o.candidates, o.grids, o.native) == ((20, 24), (FINE,), (2, (3, 4)), ("groups",))
    assert FreezeOptions(native=()).native is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.measure = False


def test_strategies_follow_the_backend():
    assert FreezeOptions(backend="torch").strategies() == ()
    assert FreezeOptions(native=False).strategies() == ()
    assert FreezeOptions(native=("batch",)).strategies() == ("batch",)
    assert FreezeOptions(backend="triton", native=False).strategies() == ("triton",)


@pytest.mark.parametrize("field,value,message", [
    ("backend", "cuda", "backend must be one of 'auto', 'native', 'triton', 'torch', got 'cuda'"),
    ("input_size", (28,), "input_size must be a pair of positive ints (H, W), got (28,)"),
    ("input_size", (28, 0), "input_size must be a pair of positive ints (H, W), got (28, 0)"),
    ("measure", 1, "measure must be True or False, got 1"),
    ("graph", None, "graph must be True or False, got None"),
    ("repeats", 0, "repeats must be a positive int, got 0"),
    ("repeats", True, "repeats must be a positive int, got True"),
    ("candidates", [1.0], "candidates must be a sequence of CostModel, got [1.0]"),
    ("grids", [2, (3, 0)], "grids must hold positive ints g or pairs (rows, columns) of them, got (3, 0)"),
    ("grids", 3, "grids must be a sequence of ints g or pairs (rows, columns), got 3"),
    ("native", "groups", "native must be True, False or a sequence of strategies from"),
    ("native", ("simd",), "native must be True, False or a sequence of strategies from"),
    ("channels_last", "yes", "channels_last must be None, True or False, got 'yes'"),
])
def test_each_field_is_checked(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FreezeOptions(**{field: value})
    with pytest.raises(ValueError, match=re.escape(message)):  # the same check through freeze's keywords
        freeze(_net(), torch.randn(1, 3, 12, 12), **{field: value})


def test_backend_native_with_native_false_is_refused():
    with pytest.raises(ValueError, match="backend='native' with native=False"):
        FreezeOptions(backend="native", native=False)


def test_unknown_keyword_and_wrong_options_type():
    with pytest.raises(TypeError, match=re.escape("unexpected keyword arguments ['mesure']")):
        freeze(_net(), torch.randn(1, 3, 12, 12), mesure=False)
    with pytest.raises(TypeError, match="options must be a FreezeOptions, got dict"):
        freeze(_net(), torch.randn(1, 3, 12, 12), options={"measure": False})


def test_options_and_keywords_freeze_the_same_model():
    net, x = _net(), torch.randn(2, 3, 12, 12)
    by_keywords = freeze(net, x, measure=False, native=False, candidates=[FINE], grids=(2,))
    options = FreezeOptions(measure=False, native=False, candidates=(FINE,), grids=(2,))
    by_options = freeze(net, x, options=options)
    # keywords given with options replace its fields
    overridden = freeze(net, x, options=dataclasses.replace(options, fuse=True), fuse=False)
    assert plan_summary(by_options) == plan_summary(by_keywords)
    assert [repr(m) for m in by_options.modules() if isinstance(m, FrozenTargetConv2d)] == [
        repr(m) for m in by_keywords.modules() if isinstance(m, FrozenTargetConv2d)]
    assert by_options[0].relu and by_options[0].pool == 2 and not overridden[0].relu and overridden[0].pool == 1
    with torch.no_grad():
        ref = net(x)
        for frozen in (by_keywords, by_options, overridden):
            torch.testing.assert_close(frozen(x), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
