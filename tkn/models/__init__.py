"""The paper's networks by name: CNN6/TKN6, DN10/TDN10, DN40/TDN40, STN/TSTN.

>>> from tkn.models import create_model, list_models
>>> list_models()
['cnn6', 'dn10', 'dn40', 'stn', 'tdn10', 'tdn40', 'tkn6', 'tstn']
>>> model = create_model("tdn10")          # 1x28x28 inputs, 10 classes

Baselines and their targeted variants (``baseline_of``):
``tkn6 -> cnn6``, ``tdn10 -> dn10``, ``tdn40 -> dn40``, ``tstn -> stn``.
The layouts and how they were derived from the paper's counts are written in
the docstrings of :class:`~tkn.models.cnn6.CNN6`, :func:`~tkn.models.densenet.dn10`,
:func:`~tkn.models.densenet.dn40` and :class:`~tkn.models.stn.STN`.
"""
from __future__ import annotations

from functools import partial

from tkn.models.base import PaperModel, block_l2
from tkn.models.cnn6 import CNN6
from tkn.models.densenet import DenseNet, dn10, dn40
from tkn.models.registry import ModelEntry, baseline_of, create_model, get_entry, list_models, register
from tkn.models.stn import STN

__all__ = [
    "create_model",
    "list_models",
    "register",
    "baseline_of",
    "get_entry",
    "ModelEntry",
    "PaperModel",
    "block_l2",
    "CNN6",
    "DenseNet",
    "STN",
    "dn10",
    "dn40",
]

register("cnn6", partial(CNN6, targeted=False), description="6-layer CNN (MNIST, tlMNIST)")
register("tkn6", partial(CNN6, targeted=True), baseline="cnn6", description="CNN6 with all convolutions targeted")
register("dn10", partial(dn10, targeted=False), description="DenseNet, 3 blocks x 2 layers, growth 12 (MNIST, tlMNIST)")
register("tdn10", partial(dn10, targeted=True), baseline="dn10", description="DN10 with its 3x3 block convolutions targeted")
register("dn40", partial(dn40, targeted=False), description="DenseNet-BC, 3 blocks x 12 layers, growth 36 (SVHN, Pain)")
register("tdn40", partial(dn40, targeted=True), baseline="dn40", description="DN40 with its 3x3 block convolutions targeted")
register("stn", partial(STN, targeted=False), description="spatial transformer network (GTSRB)")
register("tstn", partial(STN, targeted=True), baseline="stn", description="STN with its main network's convolutions targeted")
