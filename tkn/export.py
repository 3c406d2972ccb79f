"""Ship a TKN outside Python: TorchScript and ONNX exports of the frozen (fast) model.

The exported graph is the model :func:`tkn.freeze` returns for an example
input: target layers compute only their fixed ROIs, so the exported model
keeps the speed-up. The ROIs are planned for one input size, so an export is
valid for that ``(C, H, W)`` only. The batch size is checked rather than
assumed: :func:`export_model` re-runs the file on a batch of another size and
reports whether it is free (trace with a batch of at least 2: a batch of 1
lets the tracer bake the batch size into reshapes).

* TorchScript: ``torch.jit.trace`` (the plan's loops are unrolled into the
  graph; loading needs only ``torch``).
* ONNX: ``torch.onnx.export``, first with the TorchScript-based exporter
  (``dynamo=False``: about a second), then, if its file does not reproduce
  the model, with torch 2.13's default ``torch.export``-based exporter
  (``dynamo=True``, needs ``onnxscript``; 10-40 s on 2 CPU cores), which
  functionalises in-place writes. Every file is *verified*, not trusted: the
  TorchScript-based exporter silently drops writes made into a view
  (``torch.mul(a, b, out=y[..., i:j])`` or ``y[..., i:j].copy_(...)``; plain
  ``y[..., i:j] = ...`` is fine, and is what the frozen engine uses), which
  yields a valid ONNX file with wrong outputs. If no exporter
  reproduces the frozen model, the dense model (same function, no speed-up)
  is exported and the result says so.
  Needs ``pip install 'tkn[onnx]'`` (``onnx``, ``onnxruntime``, ``onnxscript``).

:func:`verify_onnx` checks a file with ``onnx.checker`` and compares its
``onnxruntime`` outputs with PyTorch's; :func:`export_model` does both, on
the example and on a batch of another size.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tkn.validate import one_of

__all__ = ["FORMATS", "ExportResult", "MissingDependency", "export_model", "export_torchscript", "export_onnx",
           "verify_onnx",
           "verify_torchscript"]

FORMATS = ("torchscript", "onnx")
_EXPORTERS = {True: "torch.export (dynamo)", False: "TorchScript-based"}


@contextlib.contextmanager
def _quiet_logs():
    """Silence the exporters' progress lines and warnings on stdout/stderr and their loggers."""
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger("torch").setLevel(level)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the file written.
        format: ``"torchscript"`` or ``"onnx"``.
        frozen: whether the exported graph is the frozen (ROI-only) model.
        input_shape: the example input's shape ``(N, C, H, W)``.
        max_abs_diff: largest difference between the exported model's output
            (re-loaded from ``path``) and the PyTorch model's on the example.
        dynamic_batch: whether the file also reproduces the model on a batch
            of another size (checked on one random batch of ``N + 1``).
        notes: human-readable remarks (exporters that failed, fallbacks taken).
        exporter: what produced the file (``torch.jit.trace`` or the ONNX exporter).
    """

    path: Path
    format: str
    frozen: bool
    input_shape: tuple[int, ...]
    max_abs_diff: float
    dynamic_batch: bool
    notes: list[str] = field(default_factory=list)
    exporter: str = ""

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "frozen": self.frozen,
                "input_shape": list(self.input_shape), "max_abs_diff": self.max_abs_diff,
                "dynamic_batch": self.dynamic_batch, "exporter": self.exporter, "notes": self.notes}


class MissingDependency(RuntimeError):
    """An optional package of the ``onnx`` extra is not installed."""

    def __init__(self, module: str) -> None:
        super().__init__(f"ONNX export needs {module}: pip install 'tkn[onnx]'")
        self.module = module


def _require(module: str):
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise MissingDependency(module) from None


def export_torchscript(model: nn.Module, example: Tensor, path: str | os.PathLike) -> Path:
    """Trace ``model`` on ``example`` and save the TorchScript module to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: the plan's Python loops are meant to be unrolled
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, *, dynamo: bool = True,
                opset: int = 18, dynamic_batch: bool = True) -> Path:
    """Export ``model`` to ONNX at ``path`` (input ``"input"``, output ``"output"``).

    Args:
        dynamo: ``True`` for ``torch.export``-based exporter (needs
            ``onnxscript``), ``False`` for the TorchScript-based one.
        opset: ONNX opset version.
        dynamic_batch: make the batch axis symbolic.

    Raises:
        RuntimeError: the exporter failed (its message included).
    """
    _require("onnx")
    if dynamo:
        _require("onnxscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_logs():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(path), input_names=["input"], output_names=["output"],
                              opset_version=opset, dynamic_axes=axes, dynamo=dynamo, verbose=False)
    except Exception as exc:  # exporters raise many types; reported with the exporter's name
        text = str(exc).strip().splitlines()
        raise RuntimeError(f"{_EXPORTERS[dynamo]} exporter failed: {type(exc).__name__}: "
                           f"{text[0] if text else ''}") from None
    return path


def verify_onnx(path: str | os.PathLike, inputs: Tensor, expected: Tensor) -> float:
    """Check ``path`` with ``onnx.checker`` and return max |onnxruntime(inputs) - expected|."""
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.detach().cpu().numpy()})[0]
    return float((torch.from_numpy(got) - expected.detach().cpu()).abs().max())


def verify_torchscript(path: str | os.PathLike, inputs: Tensor, expected: Tensor) -> float:
    """Load ``path`` with ``torch.jit.load`` and return max |loaded(inputs) - expected|."""
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return float((loaded(inputs) - expected).abs().max())


def export_model(
    model: nn.Module,
    example: Tensor,
    path: str | os.PathLike,
    format: str = "torchscript",
    *,
    freeze: bool = True,
    atol: float = 1e-4,
    freeze_options: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` (frozen on ``example`` unless ``freeze=False``) and check the file round-trips.

    Args:
        model: a TKN (or any module); not modified.
        example: ``(N, C, H, W)`` example input; fixes ``C, H, W`` of the export
            (use ``N >= 2`` for a batch-size-free export).
        path: output file.
        format: ``"torchscript"`` or ``"onnx"``.
        freeze: export the ROI-only model of :func:`tkn.freeze` (default) or
            the model as it is.
        atol: largest accepted difference between the re-loaded export and
            ``model.eval()`` on ``example``.
        freeze_options: keyword arguments of :func:`tkn.engine.freeze` (e.g.
            ``measure=False`` to plan from the cost model without timing); ``native``
            defaults to ``False`` here (the native kernel cannot be traced).

    Each attempt (frozen model first; for ONNX the ``torch.export`` exporter
    first) is re-loaded and compared; the first that reproduces the model is
    kept, and what failed before it is listed in ``notes``.

    Returns:
        An :class:`ExportResult`.

    Raises:
        RuntimeError: no attempt reproduced the model (every reason listed),
            or a needed package is missing (with the ``pip install`` line).
    """
    one_of("format", format, FORMATS)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() != 4 or not example.is_floating_point():
        raise ValueError(f"example must be a floating (N, C, H, W) tensor, got {getattr(example, 'shape', example)!r}")
    from tkn.engine import freeze as freeze_model

    model = model.eval()
    other = torch.rand((example.shape[0] + 1, *example.shape[1:]), generator=torch.Generator().manual_seed(0),
                       dtype=example.dtype).to(example.device)
    with torch.no_grad():
        reference, other_reference = model(example), model(other)
    # the native kernel is a compiled library called from Python: exports use the PyTorch executors
    options = {"native": False, **dict(freeze_options or {})}
    models = [("frozen", freeze_model(model, example, **options))] if freeze else []
    models.append(("dense", model))
    exporters = [None] if format == "torchscript" else [False, True]
    failures: list[str] = []
    for kind, candidate in models:
        for dynamo in exporters:
            what = f"{kind} model" + ("" if dynamo is None else f", {_EXPORTERS[dynamo]} exporter")
            try:
                if dynamo is None:
                    export_torchscript(candidate, example, path)
                    diff = verify_torchscript(path, example, reference)
                else:
                    export_onnx(candidate, example, path, dynamo=dynamo)
                    diff = verify_onnx(path, example, reference)
            except Exception as exc:  # exporters, checkers and runtimes raise many types
                if isinstance(exc, MissingDependency) and exc.module != "onnxscript":
                    raise
                failures.append(f"{what}: {type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError)
                                else f"{what}: {exc}")
                continue
            if not diff <= atol:
                failures.append(f"{what}: the exported file differs from PyTorch by {diff:.3g} > atol {atol:g}")
                continue
            notes = []
            if kind == "dense" and freeze:
                notes += failures
                notes.append("exported the dense model instead of the frozen one (same outputs, no ROI speed-up)")
            dynamic = _reproduces(format, path, other, other_reference, atol)
            if not dynamic:
                notes.append(f"the export only accepts batches of {example.shape[0]} (the example's batch size)")
            return ExportResult(Path(path), format, kind == "frozen", tuple(example.shape), diff, dynamic, notes,
                                exporter="torch.jit.trace" if dynamo is None else _EXPORTERS[dynamo])
    raise RuntimeError(f"{format} export failed: " + "; ".join(failures))


def _reproduces(format: str, path: Path, inputs: Tensor, expected: Tensor, atol: float) -> bool:
    try:
        verify = verify_torchscript if format == "torchscript" else verify_onnx
        return verify(path, inputs, expected) <= atol
    except Exception:  # runtimes raise their own types on a shape mismatch
        return False
