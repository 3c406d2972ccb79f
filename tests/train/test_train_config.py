"""TrainConfig: layering order, --set parsing, validation messages, file loading."""
from __future__ import annotations

import pytest

from tkn.training.config import TrainConfig, list_recipes, load_config_file, parse_set, resolve_config


def test_layering_order_defaults_config_flags_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: dn10\nlr: 0.5\nepochs: 7\nbatch_size: 16\n")
    cfg = resolve_config(f, {"lr": 0.25, "epochs": None, "seed": 4}, ["lr=0.125", "milestones=[3, 5]"])
    assert cfg.model == "dn10"           # from the file
    assert cfg.epochs == 7               # flag None does not override
    assert cfg.batch_size == 16          # file over default 128
    assert cfg.seed == 4                 # flag over default 0
    assert cfg.lr == 0.125               # --set wins over flag and file
    assert cfg.milestones == [3, 5]
    assert cfg.weight_decay == 1e-4      # untouched default (paper section 4.2)


def test_defaults_are_the_paper_mnist_recipe():
    cfg = TrainConfig().validate()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.optimizer, cfg.momentum, cfg.nesterov) == (
        20, 128, 0.1, "sgd", 0.9, True)
    assert (cfg.weight_decay, cfg.milestones, cfg.gamma) == (1e-4, [10, 15], 0.1)


def test_dotted_set_merges_nested_mappings():
    cfg = resolve_config(None, None, ["paper.error=0.4", "paper.table=T2", "model_kwargs.dropout=0.25"])
    assert cfg.paper == {"error": 0.4, "table": "T2"}
    assert cfg.model_kwargs == {"dropout": 0.25}


@pytest.mark.parametrize("item, expected", [
    ("lr=1e-3", (["lr"], 1e-3)),
    ("nesterov=false", (["nesterov"], False)),
    ("data_root=/x/y", (["data_root"], "/x/y")),
    ("a.b.c=[1, 2]", (["a", "b", "c"], [1, 2])),
    ("max_test_samples=", (["max_test_samples"], None)),
])
def test_parse_set(item, expected):
    assert parse_set(item) == expected


@pytest.mark.parametrize("item", ["lr", "=3", "a..b=1"])
def test_parse_set_rejects_malformed(item):
    with pytest.raises(ValueError, match="--set"):
        parse_set(item)


@pytest.mark.parametrize("key, value, message", [
    ("epochs", -1, "epochs must be an int >= 1, got -1"),
    ("epochs", 0, "epochs must be an int >= 1, got 0"),
    ("epochs", 2.5, "epochs must be an int >= 1, got 2.5"),
    ("batch_size", 0, "batch_size must be an int >= 1, got 0"),
    ("lr", 0, "lr must be a finite number > 0, got 0"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("optimizer", "rmsprop", "optimizer must be one of sgd, adam"),
    ("window", "box", "window must be one of cauchy, gaussian"),
    ("l2", -1e-4, "l2 must be a finite non-negative number, got -0.0001"),
    ("beta", 0, "beta must be a finite number > 0, got 0"),
    ("milestones", [15, 10], "strictly increasing"),
    ("milestones", [0], "positive epoch numbers"),
    ("device", "tpu", "device must be one of auto, cpu, cuda"),
    ("workers", -2, "workers must be an int >= 0, got -2"),
    ("nesterov", "yes", "nesterov must be true or false"),
    ("max_train_samples", 0, "max_train_samples must be an int >= 1, got 0"),
    ("loss", "hinge", "loss must be one of"),
    ("latency_threads", 0, "latency_threads must be an int >= 1, got 0"),
    ("latency_feedback", -1, "latency_feedback must be an int >= 0, got -1"),
])
def test_validation_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(None, {key: value})


def test_unknown_key_is_listed():
    with pytest.raises(ValueError, match="unknown config key.*'learning_rate'"):
        resolve_config(None, None, ["learning_rate=0.1"])


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a packaged recipe"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config_file(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_config_file(scalar)
    code = tmp_path / "code.yaml"
    code.write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config_file(code)


def test_recipe_names_resolve_with_and_without_suffix():
    assert "paper/tdn10-tlmnist-cauchy" in list_recipes()
    a = load_config_file("paper/tdn10-tlmnist-cauchy")
    assert a == load_config_file("paper/tdn10-tlmnist-cauchy.yaml")
    assert a == load_config_file("configs/paper/tdn10-tlmnist-cauchy.yaml")


def test_config_roundtrips_through_dict():
    cfg = resolve_config("paper/tstn-gtsrb-cauchy", {"data_root": "/d"})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_latency_flags_reach_the_config():
    from tkn.commands.train import config_from_args, get_args_parser

    args = get_args_parser().parse_args(["--budget", "latency", "--target-speedup", "3", "--latency-batch", "1",
                                         "--latency-threads", "2", "--latency-feedback", "3"])
    cfg, resume = config_from_args(args)
    assert (cfg.budget, cfg.target_speedup, cfg.latency_batch, cfg.latency_threads, cfg.latency_feedback) == (
        "latency", 3.0, 1, 2, 3) and resume is None
    assert TrainConfig().latency_feedback is None  # the budget's default: 3 below batch 16
