"""``FreezeOptions``: every setting of :func:`tkn.engine.freeze`, checked once, in one frozen dataclass."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from tkn.engine import native as native_kernel
from tkn.engine.modules import TRITON
from tkn.ops.plan import CostModel

__all__ = ["FreezeOptions", "BACKENDS", "DEFAULT_CANDIDATES", "TILE_GRIDS"]

#: The ``backend`` values of :class:`FreezeOptions`.
BACKENDS = ("auto", "native", "triton", "torch")

#: Cost-model settings tried for every layer (see :class:`~tkn.ops.plan.CostModel`); the first also
#: plans the tiles and ranks all candidates.
DEFAULT_CANDIDATES: tuple[CostModel, ...] = (
    CostModel(channel_quantum=16, copy_cost=40.0, call_cost=2e6),
    CostModel(channel_quantum=8, copy_cost=40.0, call_cost=2e6),
    CostModel(channel_quantum=8, copy_cost=150.0, call_cost=2e7),
    CostModel(channel_quantum=8, copy_cost=100.0, call_cost=5e8),
)

#: Tile grids ``(rows, columns)`` tried per layer (an int ``g`` means ``(g, g)``); grids leaving tiles under
#: 2 output pixels (or under the fused pool) are skipped. Wide tiles suit ``channels_last`` crops, whose
#: rows are contiguous: on TKN6's 256→256 layer (28×28, batch 64) 7×3 tiles ran 5–10% faster than 6×6.
TILE_GRIDS: tuple[int | tuple[int, int], ...] = (2, 3, 4, 5, 6, 7, (4, 2), (5, 2), (7, 2), (7, 3), (10, 3))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class FreezeOptions:
    """How :func:`tkn.engine.freeze` plans a model; each field is checked when the options are made.

    ``freeze(model, x, measure=False)`` and ``freeze(model, x, options=FreezeOptions(measure=False))`` are the
    same call (keywords given with ``options`` replace its fields).

    Attributes:
        backend: what runs the ROIs: ``"native"`` (the C++ kernel, through ``torch.ops.tkn.roi_conv2d``;
            :func:`~tkn.engine.freeze` says why when it cannot be built here), ``"torch"`` (the PyTorch
            executors: block and tile plans), ``"triton"`` (the Triton kernel of :mod:`tkn.engine.triton_roi`
            through the same operator, for every target layer it can run, without timing against dense:
            CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), or ``"auto"`` (the default: native
            where the kernel is available and can run a layer, the PyTorch executors elsewhere). With
            ``"auto"``, ``"native"`` and ``"torch"`` every layer still runs dense where that measured faster.
        input_size: optional ``(H, W)`` to plan for instead of the example's size (a zero input of that
            size is used: the window parameters are relative, so a TKN trained at one resolution runs at
            another).
        measure: time the candidate plans on the example's activations and keep the fastest (dense
            included); ``False`` trusts the cost model. With the native kernel only dense and native are
            compared, and only when the native plan's work is not clearly smaller: a few seconds in all.
        repeats: timing repeats per candidate (minimum taken; candidates interleaved).
        candidates: cost-model settings to build block plans with (a tuple of
            :class:`~tkn.ops.plan.CostModel`; the first also plans the tiles and ranks the candidates).
        grids: tile grids ``(rows, columns)`` (or ``g`` for ``(g, g)``) to build tile plans on, with the
            first cost model; ``()`` for block plans only.
        permute: let layers emit channels in plan order where the consumer can absorb the permutation
            (:mod:`tkn.engine.routes`); ``False`` makes every layer restore the original order itself.
        fuse: fuse a following batch norm, ReLU and max-pool into the frozen layer, a residual addition
            into a native one, and a batch norm into a plain convolution before it.
        input_sparsity: where frozen target layers feed the next one through operations that keep their
            zeros (their fused epilogue, ReLU, dropout, identity, concatenations, additions), its input is
            zero outside their ROIs: the consumer's blocks then read only the input channels whose ROI
            meets their input window (``input_support`` of :class:`~tkn.engine.modules.FrozenTargetConv2d`).
            Exact; it skips products with zeros. Likewise an ``nn.Linear`` fed by a frozen layer's flattened
            output through operations that keep zeros reads only the features inside the ROIs
            (:class:`~tkn.engine.modules.FrozenSparseLinear`).
        graph: analyse the model on its :mod:`torch.fx` graph (:mod:`tkn.engine.graph`: what ``permute``,
            ``fuse`` and ``input_sparsity`` act on). ``False`` freezes without the analysis, as for a
            model that cannot be traced: each target layer is replaced where it is, with nothing fused,
            permuted or skipped for input sparsity (the frozen layers' own gain).
        native: use the native kernel's plans where it is available and can run a layer, with any of its
            lane strategies (``True``) or only those named (e.g. ``("groups",)``, see
            :data:`tkn.engine.native.STRATEGIES`); ``False`` plans with the PyTorch executors only.
        channels_last: run the frozen model in ``channels_last`` memory: its 4-D parameters and buffers
            are converted and a forward pre-hook converts its 4-D inputs (values are unchanged). ``None``
            (default): when a layer runs the native kernel, which reads and writes ``channels_last``;
            otherwise the dense layers between native ones would convert every map back and forth, and
            residual additions would mix the two layouts (on TResNet-18 that cost 15 ms of copies and
            additions 2x slower than the dense CNN's).

    Raises:
        ValueError: a field out of range (the message names it and what it accepts).
    """

    backend: str = "auto"
    input_size: tuple[int, int] | None = None
    measure: bool = True
    repeats: int = 3
    candidates: tuple[CostModel, ...] = DEFAULT_CANDIDATES
    grids: tuple[int | tuple[int, int], ...] = TILE_GRIDS
    permute: bool = True
    fuse: bool = True
    input_sparsity: bool = True
    graph: bool = True
    native: bool | tuple[str, ...] = True
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}")
        if self.input_size is not None:
            size = self.input_size
            if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(_positive_int(v) for v in size):
                raise ValueError(f"input_size must be a pair of positive ints (H, W), got {size!r}")
            object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        for name in ("measure", "permute", "fuse", "input_sparsity", "graph"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _positive_int(self.repeats):
            raise ValueError(f"repeats must be a positive int, got {self.repeats!r}")
        if isinstance(self.candidates, CostModel) or not isinstance(self.candidates, Sequence) or not all(
                isinstance(c, CostModel) for c in self.candidates):
            raise ValueError(f"candidates must be a sequence of CostModel, got {self.candidates!r}")
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "grids", _grids(self.grids))
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be None, True or False, got {self.channels_last!r}")
        native = self.native
        if not isinstance(native, bool):
            if isinstance(native, str) or not isinstance(native, Sequence) or not all(
                    s in native_kernel.STRATEGIES for s in native):
                raise ValueError(f"native must be True, False or a sequence of strategies from "
                                 f"{native_kernel.STRATEGIES}, got {native!r}")
            object.__setattr__(self, "native", tuple(native) or False)
        if self.backend == "native" and self.native is False:
            raise ValueError("backend='native' with native=False: give one or the other")

    def strategies(self) -> tuple[str, ...]:
        """The kernel strategies a layer may be planned with (``()``: the PyTorch executors only)."""
        if self.backend == "triton":
            return (TRITON,)
        if self.backend == "torch" or self.native is False:
            return ()
        return native_kernel.STRATEGIES if self.native is True else self.native

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the fields (the keywords :func:`tkn.engine.freeze` takes)."""
        return tuple(f.name for f in fields(cls))


def _grids(grids: object) -> tuple[int | tuple[int, int], ...]:
    """``grids`` as a tuple of ints and ``(rows, columns)`` pairs, or a ``ValueError``."""
    if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence):
        raise ValueError(f"grids must be a sequence of ints g or pairs (rows, columns), got {grids!r}")
    out: list[int | tuple[int, int]] = []
    for g in grids:
        if _positive_int(g):
            out.append(int(g))
        elif isinstance(g, (tuple, list)) and len(g) == 2 and all(_positive_int(v) for v in g):
            out.append((int(g[0]), int(g[1])))
        else:
            raise ValueError(f"grids must hold positive ints g or pairs (rows, columns) of them, got {g!r}")
    return tuple(out)
