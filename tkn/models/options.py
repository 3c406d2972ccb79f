"""The keyword arguments a registered model may take, in one table: name, default, check and help.

:func:`~tkn.models.create_model` validates these options with the table's checks before calling a builder,
``tkn train`` and ``tkn flops`` derive their model flags from it, and :class:`~tkn.training.TrainConfig`
takes its model keys' defaults and checks from it. A builder receives the options its signature names
(a builder with ``**kwargs`` receives the :attr:`ModelOption.common` ones).

>>> sorted(MODEL_OPTIONS)
['beta', 'dropout', 'in_channels', 'input_size', 'l2', 'min_roi', 'num_classes', 'width', 'window']
>>> MODEL_OPTIONS["l2"].check(0)
0.0
>>> MODEL_OPTIONS["input_size"].check((28, 32))
[28, 32]
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tkn import functional as TF
from tkn.validate import in_range, int_pair, non_negative, positive_int, positive_number

__all__ = ["ModelOption", "MODEL_OPTIONS", "SHAPE_OPTIONS"]


@dataclass(frozen=True)
class ModelOption:
    """One keyword argument that registered models may take.

    Attributes:
        name: the keyword (``--name-with-dashes`` on the command line).
        default: what :func:`~tkn.models.create_model` passes when it is not given.
        check: ``check(value) -> normalised value``; raises ``ValueError`` naming the option.
        help: one line for ``--help`` and the docs.
        what: a noun for error messages (``model 'stn' has no width multiplier``).
        common: taken by every paper model, passed to a builder's ``**kwargs`` and always recorded in
            ``model.spec``; an option that is not common reaches only builders that name it and is recorded
            only when it differs from its default.
        type, choices, metavar: how the command line reads it (``type=None``: a string).
    """

    name: str
    default: Any
    check: Callable[[Any], Any]
    help: str
    what: str
    common: bool = True
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag: ``--min-roi`` for ``min_roi``."""
        return "--" + self.name.replace("_", "-")


def _input_size(value: Any) -> int | list[int]:
    """``H`` for square inputs, ``[H, W]`` otherwise (plain data, as checkpoints and JSON keep it)."""
    h, w = int_pair("input_size", value)
    return h if h == w else [h, w]


_TABLE = (
    ModelOption("num_classes", 10, lambda v: positive_int("num_classes", v),
                "outputs of the last layer (10 for MNIST/SVHN, 43 for GTSRB, 1 for Pain)", "num_classes",
                type=int, metavar="N"),
    ModelOption("in_channels", 1, lambda v: positive_int("in_channels", v), "input image channels",
                "in_channels", type=int, metavar="C"),
    ModelOption("input_size", 28, _input_size,
                "H or (H, W) the model is built for (fixes the FC widths of CNN6/STN)", "input size"),
    ModelOption("window", "cauchy", TF.check_window, "attention window of the target layers", "window",
                choices=tuple(sorted(TF.WINDOWS))),
    ModelOption("l2", 1e-4, lambda v: non_negative("l2", v),
                "scale penalty of the first block's target layers (block b gets l2 * beta**b)", "scale penalty",
                type=float),
    ModelOption("beta", 2.0, lambda v: positive_number("beta", v), "the penalty's build-up factor per block",
                "penalty build-up", type=float),
    ModelOption("dropout", None,
                lambda v: in_range("dropout", v, 0, 1, high_open=True, allow_none=True,
                                   note="None: the paper's value"),
                "dropout rate in [0, 1) (default: the paper's value of each model)", "dropout", type=float,
                metavar="P"),
    ModelOption("min_roi", None, TF.check_min_roi,
                "narrowest ROI of the target layers, in output pixels (default: each kernel's width)",
                "minimum ROI", type=int, metavar="PIXELS"),
    ModelOption("width", 1.0, lambda v: positive_number("width", v),
                "channel multiplier (1: the paper's model)", "width multiplier", common=False, type=float,
                metavar="W"),
)

#: Every model option by name, in the order of :func:`~tkn.models.create_model`'s documentation.
MODEL_OPTIONS: dict[str, ModelOption] = {option.name: option for option in _TABLE}

#: Options that come from the input shape (``--input-size C,H,W``, a data set's images): a model that does not
#: take one is built without it (a fully convolutional network needs no input size).
SHAPE_OPTIONS = ("in_channels", "input_size")
