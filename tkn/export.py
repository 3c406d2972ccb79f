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
* ONNX: ``torch.onnx.export`` with the TorchScript-based exporter
  (``dynamo=False``), which records the unrolled plan as plain ONNX ops
  (``Slice``, ``Conv``, ``Mul``, ``ScatterND``...). torch 2.13's default
  ``torch.export`` path cannot trace the frozen engine's data-dependent ROI
  loop, so it is tried only as a fallback. If neither succeeds on the frozen
  model, the dense model (same function, no speed-up) is exported and the
  result says so. Needs ``pip install 'tkn[onnx]'`` (``onnx``, ``onnxruntime``,
  ``onnxscript``).

:func:`verify_onnx` checks a file with ``onnx.checker`` and compares its
``onnxruntime`` outputs with PyTorch's.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["FORMATS", "ExportResult", "export_model", "export_torchscript", "export_onnx", "verify_onnx",
           "verify_torchscript"]

FORMATS = ("torchscript", "onnx")


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
        notes: human-readable remarks (fallbacks taken, warnings).
    """

    path: Path
    format: str
    frozen: bool
    input_shape: tuple[int, ...]
    max_abs_diff: float
    dynamic_batch: bool
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "frozen": self.frozen,
                "input_shape": list(self.input_shape), "max_abs_diff": self.max_abs_diff,
                "dynamic_batch": self.dynamic_batch, "notes": self.notes}


def _require(module: str):
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise RuntimeError(f"ONNX export needs {module}: pip install 'tkn[onnx]'") from None


def export_torchscript(model: nn.Module, example: Tensor, path: str | os.PathLike) -> Path:
    """Trace ``model`` on ``example`` and save the TorchScript module to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings: the plan's Python loops are meant to be unrolled
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, *, opset: int = 17,
                dynamic_batch: bool = True) -> Path:
    """Export ``model`` to ONNX at ``path`` (input ``"input"``, output ``"output"``).

    Tries the TorchScript-based exporter first (``dynamo=False``), then
    ``torch.export``. With ``dynamic_batch`` the batch axis is symbolic.
    Raises ``RuntimeError`` with both exporters' errors if neither works.
    """
    _require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(model.eval(), (example,), str(path), input_names=["input"],
                                  output_names=["output"], opset_version=opset, dynamic_axes=axes,
                                  dynamo=dynamo)
            return path
        except Exception as exc:  # exporters raise many types; both are reported below
            errors.append(f"{'torch.export' if dynamo else 'TorchScript'} exporter: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
    raise RuntimeError("ONNX export failed; " + "; ".join(errors))


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
            ``model.eval()`` on ``example`` (a larger one raises ``RuntimeError``).

    Returns:
        An :class:`ExportResult`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() != 4 or not example.is_floating_point():
        raise ValueError(f"example must be a floating (N, C, H, W) tensor, got {getattr(example, 'shape', example)!r}")
    from tkn.convert import freeze as freeze_model

    model = model.eval()
    other = torch.rand((example.shape[0] + 1, *example.shape[1:]), generator=torch.Generator().manual_seed(0),
                       dtype=example.dtype).to(example.device)
    with torch.no_grad():
        reference, other_reference = model(example), model(other)
    verify = verify_torchscript if format == "torchscript" else verify_onnx
    notes: list[str] = []
    candidates = [(freeze_model(model, example), True)] if freeze else []
    candidates.append((model, False))
    for i, (candidate, frozen) in enumerate(candidates):
        try:
            if format == "torchscript":
                export_torchscript(candidate, example, path)
            else:
                export_onnx(candidate, example, path)
            diff = verify(path, example, reference)
        except RuntimeError as exc:
            if i + 1 == len(candidates) or "pip install" in str(exc):
                raise
            notes.append(f"the frozen model could not be exported ({exc}); exported the dense model instead "
                         "(same outputs, no ROI speed-up)")
            continue
        if diff > atol:
            raise RuntimeError(f"the exported {format} model differs from PyTorch by {diff:.3g} > atol {atol:g}")
        try:
            dynamic = verify(path, other, other_reference) <= atol
        except Exception:  # runtimes raise their own types on a shape mismatch
            dynamic = False
        if not dynamic:
            notes.append(f"the export only accepts batches of {example.shape[0]} (the example's batch size)")
        return ExportResult(Path(path), format, frozen, tuple(example.shape), diff, dynamic, notes)
    raise AssertionError("unreachable")
