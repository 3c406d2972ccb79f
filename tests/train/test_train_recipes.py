"""Every packaged paper recipe loads, validates and matches the paper (Tables 2-6, section 4.2)."""
from __future__ import annotations

import pytest

from tkn.training.config import list_recipes, resolve_config

# Transcribed from the paper: (recipe, model, data, window, L2, beta, params, FLOPs, reported metrics).
# Baselines (no target layers) carry window None.
ROWS = [
    ("cnn6-mnist", "cnn6", "mnist", None, None, None, "4.59M", "368M", {"error": 0.42}),
    ("tkn6-mnist-gaussian", "tkn6", "mnist", "gaussian", 1e-4, 2, "4.59M", "52.9M", {"error": 0.48}),
    ("tkn6-mnist-cauchy", "tkn6", "mnist", "cauchy", 1e-4, 4, "4.59M", "28.6M", {"error": 0.43}),
    ("dn10-mnist", "dn10", "mnist", None, None, None, "44.7K", "11.3M", {"error": 0.48}),
    ("tdn10-mnist-gaussian", "tdn10", "mnist", "gaussian", 1e-4, 2, "45.0K", "6.93M", {"error": 0.42}),
    ("tdn10-mnist-cauchy", "tdn10", "mnist", "cauchy", 1e-4, 4, "45.0K", "6.26M", {"error": 0.38}),
    ("cnn6-tlmnist", "cnn6", "tlmnist", None, None, None, "10.76M", "1470M", {"error": 0.83}),
    ("tkn6-tlmnist-gaussian", "tkn6", "tlmnist", "gaussian", 1e-4, 2, "10.76M", "145M", {"error": 0.48}),
    ("tkn6-tlmnist-cauchy", "tkn6", "tlmnist", "cauchy", 1e-4, 2, "10.76M", "125M", {"error": 0.48}),
    ("tkn6-tlmnist-cauchy-b4", "tkn6", "tlmnist", "cauchy", 1e-4, 4, "10.76M", "68.3M", {"error": 0.53}),
    ("dn10-tlmnist", "dn10", "tlmnist", None, None, None, "44.7K", "45.2M", {"error": 0.50}),
    ("tdn10-tlmnist-gaussian", "tdn10", "tlmnist", "gaussian", 1e-4, 2, "45.0K", "29.7M", {"error": 0.41}),
    ("tdn10-tlmnist-cauchy", "tdn10", "tlmnist", "cauchy", 1e-4, 2, "45.0K", "25.6M", {"error": 0.38}),
    ("dn40-svhn", "dn40", "svhn", None, None, None, "0.83M", "357M", {"error": 3.17}),
    ("tdn40-svhn-cauchy", "tdn40", "svhn", "cauchy", 1e-4, 2, "0.83M", "205M", {"error": 3.11}),
    ("stn-gtsrb", "stn", "gtsrb", None, None, None, "1.18M", "145M", {"error": 1.52}),
    ("tstn-gtsrb-cauchy", "tstn", "gtsrb", "cauchy", 1e-3, 2, "1.18M", "55.7M", {"error": 1.53}),
    ("dn40-pain", "dn40", "pain", None, None, None, "0.83M", "802M", {"mse": 1.67, "mae": 0.51}),
    ("tdn40-pain-cauchy", "tdn40", "pain", "cauchy", 1e-4, 4, "0.83M", "391M", {"mse": 1.67, "mae": 0.50}),
]

# Section 4.2: (epochs, batch, optimizer, lr, weight decay, milestones)
SCHEDULES = {
    "mnist": (20, 128, "sgd", 0.1, 1e-4, [10, 15]),
    "tlmnist": (20, 128, "sgd", 0.1, 1e-4, [10, 15]),
    "svhn": (40, 64, "sgd", 0.1, 1e-4, [20]),
    "gtsrb": (100, 64, "adam", 1e-3, 0.05, []),
    "pain": (100, 64, "adam", 1e-3, 0.0, []),
}


def _number(text: str) -> float:
    return float(text[:-1]) * {"K": 1e3, "M": 1e6}[text[-1]]


def test_one_recipe_per_paper_row():
    assert sorted(f"paper/{r[0]}" for r in ROWS) == sorted(n for n in list_recipes() if n.startswith("paper/"))


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_recipe_matches_paper(row):
    name, model, data, window, l2, beta, params, flops, reported = row
    cfg = resolve_config(f"paper/{name}")
    assert (cfg.model, cfg.data) == (model, data)
    if window is None:
        assert cfg.l2 == 0.0
    else:
        assert (cfg.window, cfg.l2, cfg.beta) == (window, l2, beta)
    epochs, batch, opt, lr, wd, milestones = SCHEDULES[data]
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.milestones) == (
        epochs, batch, opt, lr, wd, milestones)
    if opt == "sgd":
        assert (cfg.momentum, cfg.nesterov, cfg.gamma) == (0.9, True, 0.1)
    if data == "pain":
        assert cfg.loss == "mse" and cfg.augment
    assert cfg.paper["params"] == pytest.approx(_number(params))
    assert cfg.paper["flops"] == pytest.approx(_number(flops))
    for key, value in reported.items():
        assert cfg.paper[key] == value


@pytest.mark.parametrize("row", [r for r in ROWS if r[2] in ("mnist", "tlmnist", "svhn")], ids=lambda r: r[0])
def test_recipe_builds_a_model_of_the_paper_size(row):
    """The recipe's model, sized by its data set, has the paper's parameter count (within one unit of its last
    digit)."""
    import tkn.data
    from tkn.training.components import build_model

    cfg = resolve_config(f"paper/{row[0]}")
    info = tkn.data.info(cfg.data)
    model = build_model(cfg, info.num_classes, info.input_shape)
    n = sum(p.numel() for p in model.parameters())
    text = row[6]
    decimals = len(text[:-1].split(".")[1]) if "." in text else 0
    unit = 10.0 ** -decimals * {"K": 1e3, "M": 1e6}[text[-1]]
    assert abs(n - _number(text)) <= unit
