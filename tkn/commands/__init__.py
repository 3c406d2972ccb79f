"""Sub-commands of the ``tkn`` command line, one module each (see :mod:`tkn.cli`).

Each module defines ``add_parser(subparsers)`` (which sets ``func=run``) and
``run(args) -> int``. The options several commands share are defined here, once:
``--model NAME`` / ``--checkpoint PATH`` (:func:`add_model_arguments`, :func:`load_model`) and
``--input-size C,H,W`` (:func:`input_size`), the model options of :data:`tkn.models.options.MODEL_OPTIONS`
(:func:`add_model_option_arguments`) and ``--import MODULE`` (:func:`add_import_argument`, read by
:mod:`tkn.cli`).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OneLineErrorParser", "add_model_arguments", "add_model_option_arguments", "model_option_values",
           "add_import_argument", "add_study_arguments", "input_size", "load_model"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit code 2.

    ``argparse`` prints the whole usage block before an error; ``tkn`` promises
    one clear line per mistake (``tkn train: error: ... (see tkn train --help)``).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = None,
                        model_help: str = "a registered model name (built at its initialisation)",
                        checkpoint_help: str = "a checkpoint written by tkn train") -> None:
    """The model options every command shares: ``--model NAME`` or ``--checkpoint PATH``, not both.

    One of them is required unless ``default`` names a model.
    """
    group = parser.add_mutually_exclusive_group(required=default is None)
    group.add_argument("--model", metavar="NAME", default=default, help=model_help)
    group.add_argument("--checkpoint", metavar="PATH", help=checkpoint_help)


def add_model_option_arguments(parser: Any, names: Sequence[str]) -> None:
    """One flag per model option in ``names`` (``--min-roi PIXELS`` for ``min_roi``), read off
    :data:`tkn.models.options.MODEL_OPTIONS` (type, choices, help); each defaults to ``None`` (not given).

    ``parser`` may be an argument group.
    """
    from tkn.models.options import MODEL_OPTIONS

    for name in names:
        option = MODEL_OPTIONS[name]
        kwargs: dict[str, Any] = {"help": option.help}
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.type is not None:
            kwargs["type"] = option.type
        if option.metavar is not None:
            kwargs["metavar"] = option.metavar
        parser.add_argument(option.flag, dest=name, **kwargs)


def model_option_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The model options of ``names`` given on the command line (those not ``None``), by name."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable): modules to import before the command runs, e.g. one that registers a
    model with :func:`tkn.models.register_model` (see :func:`tkn.models.import_plugins`; ``$TKN_PLUGINS``
    names more, comma separated)."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (e.g. one that registers your own model with "
                             "tkn.register_model); repeatable; $TKN_PLUGINS names more, comma separated")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that train many runs into one folder (``tkn sweep``, ``tkn frontier``):
    ``--set``, ``--resume``, ``--overwrite``, ``--progress``."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key for every run (as tkn train --set); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue (or reuse) runs already in --out")
    parser.add_argument("--overwrite", action="store_true", help="start every run afresh")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                        help="per-batch progress bars (default off: one line per epoch)")


def input_size(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """The ``--input-size C,H,W`` option of ``args`` as ``(C, H, W)`` (:func:`tkn.validate.chw`), ``None`` if absent."""
    from tkn.validate import chw

    return None if args.input_size is None else chw("--input-size", args.input_size)


def load_model(args: argparse.Namespace, shape: tuple[int, int, int] | None = None,
               **kwargs: Any) -> tuple[nn.Module, tuple[int, int, int], dict[str, Any]]:
    """The model of ``--checkpoint`` or ``--model`` (built for ``shape`` and ``kwargs``), in ``eval()`` mode.

    Returns:
        ``(model, (C, H, W), payload)``: the input shape is ``shape`` if given, else the checkpoint's
        recorded ``input_shape``, else the model's ``in_channels``/``input_size``; the payload is the
        checkpoint's (``{}`` for ``--model``).
    """
    from tkn.checkpoint import model_from_checkpoint
    from tkn.models import create_model
    from tkn.models.registry import shape_kwargs

    payload: dict[str, Any] = {}
    if args.checkpoint is not None:
        model, payload = model_from_checkpoint(args.checkpoint)
    else:
        if shape is not None:
            kwargs.update(shape_kwargs(args.model, shape))
        model = create_model(args.model, **kwargs).eval()
    found = shape or payload.get("input_shape")
    if found is None and hasattr(model, "in_channels") and hasattr(model, "input_size"):
        size = model.input_size
        found = (model.in_channels, *((size, size) if isinstance(size, int) else size))
    if found is None:
        raise ValueError("cannot tell the model's input size: pass --input-size C,H,W")
    return model, tuple(int(v) for v in found), payload
