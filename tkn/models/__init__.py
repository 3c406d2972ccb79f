"""The paper's networks by name: CNN6/TKN6, DN10/TDN10, DN40/TDN40, STN/TSTN; and ResNet-18/TResNet-18.

>>> from tkn.models import create_model, list_models
>>> list_models()
['cnn6', 'dn10', 'dn40', 'resnet18', 'stn', 'tdn10', 'tdn40', 'tkn6', 'tresnet18', 'tstn']
>>> model = create_model("tdn10")          # 1x28x28 inputs, 10 classes

Baselines and their targeted variants (``baseline_of``):
``tkn6 -> cnn6``, ``tdn10 -> dn10``, ``tdn40 -> dn40``, ``tstn -> stn``, ``tresnet18 -> resnet18``
(a ResNet-18 for small images written with functional ReLUs and residual additions, see
:mod:`tkn.models.resnet`; not one of the paper's networks).
Your own model: decorate its builder (a function or an ``nn.Module`` class) with
:func:`~tkn.models.registry.register_model`; see :mod:`tkn.models.registry`.
The layouts and how they were derived from the paper's counts are written in
the docstrings of :class:`~tkn.models.cnn6.CNN6`, :func:`~tkn.models.densenet.dn10`,
:func:`~tkn.models.densenet.dn40` and :class:`~tkn.models.stn.STN`.
"""
from __future__ import annotations

from functools import partial

from tkn import rescale  # resolution transfer (paper section 5) as tkn.models.rescale
from tkn.models.base import PaperModel, block_l2
from tkn.models.cnn6 import CNN6
from tkn.models.densenet import DenseNet, dn10, dn40
from tkn.models.resnet import ResNet, resnet18
from tkn.models.options import MODEL_OPTIONS, ModelOption
from tkn.models.registry import (ModelEntry, baseline_of, create_model, get_entry, import_plugins, list_models,
                                 register, register_model, unregister)
from tkn.models.stn import STN

__all__ = [
    "create_model",
    "list_models",
    "register",
    "register_model",
    "unregister",
    "import_plugins",
    "MODEL_OPTIONS",
    "ModelOption",
    "baseline_of",
    "get_entry",
    "ModelEntry",
    "PaperModel",
    "block_l2",
    "CNN6",
    "DenseNet",
    "STN",
    "ResNet",
    "resnet18",
    "dn10",
    "dn40",
    "rescale",
]

_PAPER = [
    # name, builder, baseline, description
    ("cnn6", CNN6, None, "6-layer CNN (MNIST, tlMNIST)"),
    ("tkn6", CNN6, "cnn6", "CNN6 with all convolutions targeted"),
    ("dn10", dn10, None, "DenseNet, 3 blocks x 2 layers, growth 12 (MNIST, tlMNIST)"),
    ("tdn10", dn10, "dn10", "DN10 with its 3x3 block convolutions targeted"),
    ("dn40", dn40, None, "DenseNet-BC, 3 blocks x 12 layers, growth 36 (SVHN, Pain)"),
    ("tdn40", dn40, "dn40", "DN40 with its 3x3 block convolutions targeted"),
    ("stn", STN, None, "spatial transformer network (GTSRB)"),
    ("tstn", STN, "stn", "STN with its main network's convolutions targeted"),
    ("resnet18", resnet18, None, "ResNet-18 for small images (3x3 stem, no max-pool)"),
    ("tresnet18", resnet18, "resnet18", "ResNet-18 with the 3x3 convolutions of its stages targeted"),
]
for _name, _builder, _baseline, _description in _PAPER:
    register(_name, partial(_builder, targeted=_baseline is not None), baseline=_baseline, description=_description)
del _name, _builder, _baseline, _description
