"""The paper's networks: registry, interface, gradients, layouts that section 4.3 prescribes, β build-up."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tkn.convert import scale_penalty, target_layers
from tkn.layers import TargetConv2d
from tkn.models import baseline_of, create_model, list_models

PAPER_MODELS = ["cnn6", "tkn6", "dn10", "tdn10", "dn40", "tdn40", "stn", "tstn"]
TARGETED = {"tkn6": "cnn6", "tdn10": "dn10", "tdn40": "dn40", "tstn": "stn"}
# Target channels counted from section 4.3 by hand: CNN6 256+256+128; DN10 six 3x3 convs of growth 12;
# DN40 3 blocks x 6 bottleneck layers x growth 36; STN main network 128+128+256.
TARGET_CHANNELS = {"tkn6": 640, "tdn10": 6 * 12, "tdn40": 18 * 36, "tstn": 512}
SMALL = 16  # the smallest input every paper model admits (the STN pools 4 times): keeps the tests fast


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_the_paper_models():
    assert set(PAPER_MODELS) <= set(list_models())
    assert list_models() == sorted(list_models())
    for targeted, base in TARGETED.items():
        assert baseline_of(targeted) == base
        assert baseline_of(base) is None


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'cnn7'.*cnn6.*tstn"):
        create_model("cnn7")
    with pytest.raises(TypeError, match="model name must be a string"):
        create_model(6)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"input_size": (28,)}, "input_size"),
        ({"window": "box"}, "window"),
        ({"l2": -1.0}, "l2"),
        ({"beta": 0}, "beta"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        create_model("tkn6", **kwargs)


def test_name_is_case_insensitive_and_spec_uses_the_registry_name():
    assert create_model("TDN10").spec["name"] == "tdn10"


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_size=SMALL)
    x = torch.rand(2, 1, SMALL, SMALL)
    sizes = {}
    hooks = [layer.register_forward_hook(lambda mod, args, out, n=n: sizes.__setitem__(n, min(out.shape[-2:])))
             for n, layer in target_layers(model)]
    out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # A target layer whose output map is narrower than its kernel (TResNet-18's last stage is 2x2 here)
    # has its scales clipped to the kernel's extent, a constant: no gradient reaches them.
    clipped = {f"{n}.s" for n, layer in target_layers(model) if sizes[n] < min(layer.kernel_extent)}
    out.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        # The STN's localisation head starts with zero weight (identity transform), so the layers
        # before it get exactly zero gradient on the first step; everything else must move.
        upstream_of_zero_head = pname.startswith("localization.") and not pname.startswith("localization.head.5")
        if not upstream_of_zero_head and pname not in clipped:
            assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list_models())
def test_features_then_head_is_forward_and_spec_rebuilds(name):
    torch.manual_seed(1)
    model = create_model(name, num_classes=5, input_size=SMALL).eval()
    x = torch.rand(3, 1, SMALL, SMALL)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 4 and feats.shape[0] == 3
        torch.testing.assert_close(model.forward_head(feats), model(x), rtol=0, atol=0)
        rebuilt = create_model(model.spec["name"], **model.spec["kwargs"])
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), model(x))
    assert model.num_classes == 5
    assert model.spec["kwargs"]["num_classes"] == 5


def test_spec_records_resolved_kwargs():
    model = create_model("tkn6", input_size=(28, 32), window="gaussian", l2=1e-3, beta=4)
    assert model.spec == {
        "name": "tkn6",
        "kwargs": {
            "num_classes": 10, "in_channels": 1, "input_size": [28, 32], "window": "gaussian",
            "l2": 1e-3, "beta": 4.0, "dropout": None, "min_roi": None,
        },
    }
    assert model(torch.rand(1, 1, 28, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_targeted_minus_baseline_params_is_four_per_target_channel(name):
    kwargs = {"in_channels": 3, "input_size": 32, "num_classes": 43}
    targeted, base = create_model(name, **kwargs), create_model(TARGETED[name], **kwargs)
    channels = sum(layer.out_channels for _, layer in target_layers(targeted))
    assert channels == TARGET_CHANNELS[name]
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(targeted) - n(base) == 4 * TARGET_CHANNELS[name]
    assert not target_layers(base)


def _expected_block(name: str, layer_name: str, index: int) -> int:
    """The paper's Convolution (1)/(2)/(3) block of a target layer, read off its place in the network."""
    if name in ("tkn6", "tstn"):
        return index  # one target layer per block, in order
    return int(layer_name.split(".")[1])  # blocks.<b>.layer<i>.conv3x3.2


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_beta_builds_up_the_l2_penalty_per_block(name):
    l2, beta = 3e-4, 3.0
    model = create_model(name, l2=l2, beta=beta, window="gaussian")
    layers = target_layers(model)
    blocks = set()
    for i, (lname, layer) in enumerate(layers):
        block = _expected_block(name, lname, i)
        blocks.add(block)
        assert layer.l2 == pytest.approx(l2 * beta**block), lname
        assert layer.window == "gaussian"
    assert blocks == {0, 1, 2}
    # scale_penalty at initialisation (s = 1 on both axes): Σ 2 C_layer l2 β^block
    expected = sum(
        2 * layer.out_channels * l2 * beta ** _expected_block(name, n, i) for i, (n, layer) in enumerate(layers)
    )
    assert scale_penalty(model).item() == pytest.approx(expected, rel=1e-6)


def test_densenets_target_only_the_3x3_block_convolutions():
    for name, layers_per_block in (("tdn10", 2), ("tdn40", 6)):
        model = create_model(name)
        targets = target_layers(model)
        assert len(targets) == 3 * layers_per_block
        assert all(layer.kernel_size == (3, 3) and n.startswith("blocks.") for n, layer in targets)
        dense = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        # stem (3x3) + transitions (1x1) + bottlenecks (1x1, DN40 only) stay dense
        assert [n for n, m in dense if m.kernel_size == (3, 3)] == ["stem"]
        assert len(dense) == 1 + 2 + (18 if name == "tdn40" else 0)


def test_cnn6_and_stn_target_every_main_convolution():
    assert not any(isinstance(m, nn.Conv2d) for m in create_model("tkn6").modules())
    tstn = create_model("tstn")
    assert not any(isinstance(m, nn.Conv2d) for m in tstn.features.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in tstn.localization.modules()) == 3


@pytest.mark.parametrize("name", list_models())
def test_no_convolution_has_a_bias(name):
    for mname, m in create_model(name).named_modules():
        if isinstance(m, (nn.Conv2d, TargetConv2d)):
            assert m.bias is None, mname


def test_he_initialisation():
    torch.manual_seed(0)
    model = create_model("cnn6")
    w = model.features[3].weight  # 256 -> 256, 5x5: 1.6M weights
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (256 * 25)), rel=0.01)
    fc = model.head[1].weight
    assert fc.std().item() == pytest.approx(math.sqrt(2.0 / fc.shape[1]), rel=0.01)


@pytest.mark.parametrize(
    "name, rates, places",
    [
        ("cnn6", [0.5], 1),  # before the last FC
        ("dn10", [], 6 + 2),  # none in the paper; after every conv but the stem when asked for
        ("dn40", [0.2] * (36 + 2), 36 + 2),  # after every conv but the stem
        ("stn", [0.6], 1),  # before the last FC
    ],
)
def test_dropout_where_the_paper_puts_it(name, rates, places):
    model = create_model(name)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == rates
    override = create_model(name, dropout=0.1)
    assert [m.p for m in override.modules() if isinstance(m, nn.Dropout)] == [0.1] * places


def test_stn_starts_at_the_identity_transform():
    torch.manual_seed(0)
    model = create_model("stn", in_channels=3, input_size=32, num_classes=43).eval()
    x = torch.rand(2, 3, 32, 32)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.theta(x), identity)
        torch.testing.assert_close(model.transform(x), x, rtol=0, atol=1e-5)


def test_fc_models_reject_other_input_sizes_and_densenets_do_not():
    with pytest.raises(ValueError, match="input_size"):
        create_model("cnn6")(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="input_size"):
        create_model("stn")(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        create_model("stn", input_size=15)
    with pytest.raises(ValueError, match="channels"):
        create_model("dn10")(torch.rand(1, 3, 28, 28))
    assert create_model("tdn10")(torch.rand(1, 1, 40, 36)).shape == (1, 10)


def test_baselines_accept_and_ignore_target_arguments():
    a = create_model("cnn6")
    b = create_model("cnn6", window="gaussian", l2=0.5, beta=7.0)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert not target_layers(b)
