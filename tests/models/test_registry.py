"""Models of one's own: ``tkn.register_model``, ``create_model``'s checks, ``--import`` / ``$TKN_PLUGINS`` on the
command line, and checkpoints that record the module to import."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

import tkn
from tkn.checkpoint import load_checkpoint, model_from_checkpoint
from tkn.cli import main
from tkn.models import create_model, get_entry, list_models, register, register_model, unregister

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = "tkn_test_plugin_models"
PLUGIN_SOURCE = textwrap.dedent('''
    """A model registered outside tkn, imported by --import or $TKN_PLUGINS."""
    from torch import nn

    import tkn


    @tkn.register_model("plugnet", description="one 3x3 convolution, global pooling, a linear head")
    def plugnet(num_classes: int = 10, in_channels: int = 1, channels: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(channels, num_classes))
''')


@pytest.fixture
def clean_registry():
    """Remove every model a test registers (and the plugin module), so the registry is the same afterwards."""
    before = set(list_models())
    yield
    for name in set(list_models()) - before:
        unregister(name)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def plugin(tmp_path, monkeypatch, clean_registry):
    """The plugin module's name, written to a folder on ``sys.path`` and not yet imported."""
    (tmp_path / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TKN_PLUGINS", raising=False)
    return PLUGIN


class SmallCNN(nn.Module):
    """Two convolutions and a linear head sized for ``input_size``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: tuple[int, int] = (28, 28),
                 dropout: float | None = None, hidden: int = 8) -> None:
        super().__init__()
        h, w = input_size
        self.features = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout or 0.0), nn.Linear(hidden * (h // 2) * (w // 2),
                                                                                       num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_registered_class_is_built_checked_and_rebuilt(clean_registry):
    assert register_model("smallcnn")(SmallCNN) is SmallCNN
    entry = get_entry("smallcnn")
    assert entry.options == ("num_classes", "in_channels", "input_size", "dropout")
    assert entry.extras == ("hidden",) and entry.description == "Two convolutions and a linear head sized for "\
        "``input_size``." and entry.baseline is None
    model = tkn.create_model("SmallCNN", num_classes=3, in_channels=2, input_size=(8, 6), hidden=5)
    assert model(torch.rand(4, 2, 8, 6)).shape == (4, 3)
    assert model.head[-1].in_features == 5 * 4 * 3
    assert model.spec == {"name": "smallcnn", "module": __name__,
                          "kwargs": {"num_classes": 3, "in_channels": 2, "input_size": [8, 6], "dropout": None,
                                     "hidden": 5}}
    rebuilt = create_model(model.spec["name"], **model.spec["kwargs"])
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 2, 8, 6)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_a_bare_decorator_uses_the_function_name(clean_registry):
    @register_model
    def TinyLinear(num_classes: int = 10) -> nn.Module:  # noqa: N802 - the name is what is tested
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert "tinylinear" in list_models() and get_entry("tinylinear").options == ("num_classes",)
    assert create_model("tinylinear", num_classes=4)(torch.rand(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"num_classes": 0}, ValueError, "num_classes must be a positive int, got 0"),
    ({"input_size": (8, 0)}, ValueError, "input_size must be a positive int or a pair of positive ints, got (8, 0)"),
    ({"dropout": 1.0}, ValueError, "dropout must be None or a finite number in [0, 1) (None: the paper's value), "
                                   "got 1.0"),
    ({"window": "box"}, ValueError, "window must be one of cauchy, gaussian; got 'box'"),
    ({"window": "gaussian"}, ValueError, "model 'smallcnn' has no window (got window='gaussian'); models that "
                                         "take one: cnn6, dn10"),
    ({"width": 0.5}, ValueError, "model 'smallcnn' has no width multiplier (got width=0.5)"),
    ({"depth": 3}, TypeError, "model 'smallcnn' takes no argument 'depth'; it takes: num_classes, in_channels, "
                              "input_size, dropout, hidden"),
])
def test_argument_errors_name_the_argument(clean_registry, kwargs, error, message):
    register("smallcnn", SmallCNN)
    with pytest.raises(error) as exc:
        create_model("smallcnn", **kwargs)
    assert str(exc.value).startswith(message)


def test_options_a_model_does_not_take(clean_registry):
    register("smallcnn", SmallCNN)
    # at their defaults they are accepted (a training config passes them all) and not recorded
    model = create_model("smallcnn", window="cauchy", l2=1e-4, beta=2.0, min_roi=None, width=1.0)
    assert set(model.spec["kwargs"]) == {"num_classes", "in_channels", "input_size", "dropout"}

    @register_model("fullyconv")
    def fullyconv(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    # a model without input_size is built for any input size: the shape options it does not take are dropped
    model = create_model("fullyconv", in_channels=3, input_size=64)
    assert model.spec["kwargs"] == {"num_classes": 10, "in_channels": 3}
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_names_are_unique_and_reregistering_the_same_builder_replaces_it(clean_registry):
    register("smallcnn", SmallCNN, description="first")
    register("smallcnn", SmallCNN, description="again")
    assert get_entry("smallcnn").description == "again"
    with pytest.raises(ValueError, match=f"a model named 'smallcnn' is already registered \\(by {__name__}\\)"):
        register("smallcnn", lambda **kw: SmallCNN(**kw))
    with pytest.raises(ValueError, match="a model named 'cnn6' is already registered"):
        register_model("cnn6")(SmallCNN)
    with pytest.raises(ValueError, match="lower-case"):
        register("SmallCNN", SmallCNN)
    assert unregister("smallcnn").builder is SmallCNN and "smallcnn" not in list_models()


def test_paper_models_are_unchanged():
    assert get_entry("tkn6").options == ("num_classes", "in_channels", "input_size", "window", "l2", "beta",
                                         "dropout", "min_roi", "width")
    assert "width" not in get_entry("stn").options and get_entry("tdn10").extras == ()
    assert not get_entry("tkn6").external and "module" not in create_model("tkn6").spec
    with pytest.raises(TypeError, match="model 'cnn6' takes no argument 'targeted'"):
        create_model("cnn6", targeted=True)


def test_flops_imports_a_plugin_module(plugin, capsys):
    assert main(["flops", "--import", plugin, "--model", "plugnet", "--num-classes", "3", "--input-size", "2,8,8",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # conv 2->4 3x3 (72 weights + 4 biases) and linear 4->3 (12 + 3); MACs: 8*8 positions x 72, then 12
    assert (report["model"], report["params"], report["macs"]) == ("plugnet", 91, 8 * 8 * 72 + 12)
    assert report["baseline"] is None and get_entry("plugnet").module == plugin


def test_plugins_from_the_environment(plugin, monkeypatch, capsys):
    monkeypatch.setenv("TKN_PLUGINS", f" {plugin} ,")
    assert main(["flops", "--model", "plugnet", "--input-size", "1,28,28", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 4 * 9 + 4 + 4 * 10 + 10


def test_a_missing_module_is_a_one_line_error(clean_registry, capsys):
    assert main(["flops", "--import", "tkn_no_such_module", "--model", "cnn6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tkn flops: error: cannot import model module 'tkn_no_such_module' (from --import or "
                          "$TKN_PLUGINS): No module named 'tkn_no_such_module'") and err.count("\n") == 1


def test_train_a_plugin_model_and_rebuild_it_from_its_checkpoint(plugin, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--import", plugin, "--model", "plugnet", "--data", "mnist-5k", "--epochs", "1",
                 "--batch-size", "16", "--max-train-samples", "32", "--max-test-samples", "16", "--lr", "0.05",
                 "--set", "model_kwargs.channels=6", "--no-progress", "--out", str(out)]) == 0
    payload = load_checkpoint(out / "last.pt")
    assert payload["model"] == {"name": "plugnet", "module": plugin,
                                "kwargs": {"num_classes": 10, "in_channels": 1, "channels": 6}}
    model, _ = model_from_checkpoint(out / "last.pt")
    assert model[0].out_channels == 6
    torch.testing.assert_close(model.state_dict(), payload["model_state"], rtol=0, atol=0)

    unregister("plugnet")
    sys.modules.pop(plugin)
    message = (f"unknown model 'plugnet': it is registered by module '{plugin}'; import it first "
               f"(tkn COMMAND --import {plugin}")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model_from_checkpoint(out / "last.pt")
    capsys.readouterr()
    assert main(["flops", "--checkpoint", str(out / "last.pt"), "--json"]) == 2
    assert message in capsys.readouterr().err
    assert main(["flops", "--import", plugin, "--checkpoint", str(out / "last.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 6 * 9 + 6 + 6 * 10 + 10
