"""Sub-commands of the ``tkn`` command line, one module each (see :mod:`tkn.cli`).

Each module defines ``add_parser(subparsers)`` (which sets ``func=run``) and
``run(args) -> int``. The options several commands share are defined here, once:
``--model NAME`` / ``--checkpoint PATH`` (:func:`add_model_arguments`, :func:`load_model`) and
``--input-size C,H,W`` (:func:`input_size`).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OneLineErrorParser", "add_model_arguments", "add_study_arguments", "input_size", "load_model"]


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

    payload: dict[str, Any] = {}
    if args.checkpoint is not None:
        model, payload = model_from_checkpoint(args.checkpoint)
    else:
        if shape is not None:
            kwargs.update(in_channels=shape[0], input_size=shape[1:])
        model = create_model(args.model, **kwargs).eval()
    found = shape or payload.get("input_shape")
    if found is None and hasattr(model, "in_channels") and hasattr(model, "input_size"):
        size = model.input_size
        found = (model.in_channels, *((size, size) if isinstance(size, int) else size))
    if found is None:
        raise ValueError("cannot tell the model's input size: pass --input-size C,H,W")
    return model, tuple(int(v) for v in found), payload
