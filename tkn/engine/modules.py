"""The frozen executor: one target layer with fixed ROIs, run by a :class:`~tkn.ops.plan.LayerPlan`.

``"native"`` plans run the C++ kernel of :mod:`tkn.engine.native`: one call per
layer computes every channel's exact ROI (channels in groups of one SIMD
vector, each group over the union of its ROIs row by row) with the whole
epilogue fused; it needs the compiled kernel (:func:`tkn.engine.native.available`),
``groups=1``, float32 and ``pool <=`` :data:`~tkn.engine.native.MAX_POOL`.

``"blocks"`` and ``"tiles"`` plans convolve each block's input crop (the
kernel's halo read from the input, zero padding added only where the crop
leaves the map) with the block's rows of the weight — padded with zero rows
to a multiple of :data:`~tkn.ops.plan.PAD_CHANNELS`, the channel count the
CPU kernels are fast at — multiply the result in place by the precomputed
window·mask crop and write it into a ``channels_last`` output zero-filled
once. ``"blocks"`` plans write by slice (their channels are contiguous in the
plan order), ``"tiles"`` plans by channel index (their output keeps the
original channel order). ``"dense"`` plans run the full convolution (padding
inside the convolution, no padded copy) and multiply by the window·mask map
in place.

An *epilogue* can be fused: a per-channel affine map ``scale * y + shift`` (a
batch norm folded into the layer; applied after the window·mask, so outside
the ROIs the output is ``shift``), a ReLU and a ``pool``×``pool`` max-pool (stride
``pool``) applied per block before the write, so the full-size activation is
never materialised (on TKN6 at 56×56 that full map is 205 MB at batch 64, and
pooling it costs more than the ROI convolution). Block boxes are aligned to
the pool (:func:`~tkn.ops.plan.align_plan`): every pool window lies wholly
inside or wholly outside a block, and outside it the activation is the
channel's *fill value*, ``relu(shift)`` (0 without an affine map).

The module's state (``state_dict``) is the same for every plan: ``weight``, ``bias``, ``window_map``, ``roi``,
``scale`` and ``shift`` in the layer's original channel orders; everything a plan derives from them is a
non-persistent buffer, derived again when a state is loaded (a state with other ROIs is refused).

The output channels come out in the plan's order when ``permute_output`` is
true (the model's next layer has been permuted to expect them so, see
:mod:`tkn.engine.routes`); otherwise one final ``index_select`` restores the
original order. ``in_perm`` says in which order the input channels arrive; it
is folded into the weight.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn import functional as TF
from tkn.engine import native as native_kernel
from tkn.engine import op as roi_op
from tkn.engine import triton_roi
from tkn.ops.plan import Block, LayerPlan, PlanMode, align_plan, dense_plan, input_span, padded_channels
from tkn.layers import TargetConv2d

__all__ = ["FrozenTargetConv2d", "FrozenSparseLinear", "GEMM_MAX_K", "native_plan", "TRITON"]

#: The strategy name of plans that run :mod:`tkn.engine.triton_roi`'s kernel.
TRITON = "triton"

#: Block convolutions whose reduction ``C_in × kH × kW`` is at most this run as ``unfold`` + ``matmul``.
#: For TKN6's first layer (1 → 256, 5×5) oneDNN's direct convolution of 64 ROI crops was 3x slower
#: than the matmul (8.8 ms vs 3.0 ms for 64 channels on 20×20, batch 64).
GEMM_MAX_K = 32


def native_plan(channels: int, strategy: str = "groups") -> LayerPlan:
    """The plan that runs the layer with a compiled ROI kernel: the native CPU kernel with one of its lane
    ``strategy`` (:data:`tkn.engine.native.STRATEGIES`; see :class:`tkn.engine.native.NativeConv`), or
    ``"triton"`` (:mod:`tkn.engine.triton_roi`)."""
    if strategy == TRITON:
        return LayerPlan(PlanMode.NATIVE, list(range(channels)), [], channels, TRITON, strategy=TRITON)
    if strategy not in native_kernel.STRATEGIES:
        raise ValueError(native_kernel.strategy_unsupported(strategy, 0))
    label = "native" if strategy == "groups" else f"native-{strategy}"
    return LayerPlan(PlanMode.NATIVE, list(range(channels)), [], channels, label, strategy=strategy)


def _channel_vector(name: str, value: Tensor | None, channels: int) -> Tensor | None:
    if value is None:
        return None
    if not isinstance(value, Tensor) or value.dim() != 1 or value.shape[0] != channels:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a 1-D tensor of {channels} values (one per output channel), got {shape}")
    return value.detach()


def _in_order(plan: LayerPlan) -> bool:
    """Whether ``plan`` computes the channels in their original order."""
    return plan.perm == list(range(len(plan.perm)))


def _memory_format(t: Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D tensor stored so (and not also plainly contiguous); else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class FrozenTargetConv2d(nn.Module):
    """A :class:`~tkn.layers.TargetConv2d` frozen for one input size: only the ROIs are convolved.

    Args:
        layer: the trained target layer (its parameters are copied).
        input_hw: the ``(H, W)`` of the inputs the layer will see.
        plan: how to run it (default: a dense plan).
        in_perm: order of the incoming channels (``x[:, j]`` is original input channel
            ``in_perm[j]``); ``None`` for the original order.
        permute_output: return channels in ``plan.perm`` order instead of the original.
        scale: optional ``(C_out,)`` factors (original channel order) multiplying the output after
            window·mask (fused epilogue; e.g. a folded ``BatchNorm2d``: ``weight / sqrt(var + eps)``).
        shift: optional ``(C_out,)`` offsets added after ``scale`` (a folded batch norm's
            ``bias - mean * scale``); outside its ROI a channel then equals ``shift``, not 0.
        relu: apply a ReLU to the output, after the affine map (fused epilogue).
        pool: apply ``max_pool2d(kernel_size=pool, stride=pool)`` after that (fused; 1 = none).
        input_support: optional ``(C_in, 4)`` boxes ``y0, y1, x0, x1`` (input coordinates, in the
            order the input channels arrive) outside which each input channel is known to be zero,
            e.g. the ROIs of the target layer that produces the input. A block then reads only the
            range of input channels spanning those whose box meets its input window: the skipped
            products are products with zeros, so the output is unchanged. (Only the caller can vouch
            for the zeros: :func:`tkn.engine.freeze` passes it where a frozen layer feeds this one
            directly.)
        output_order: for tile plans, return channel ``output_order[j]`` at position ``j`` (writes
            go to these positions directly; the consumer is permuted to match).
        residual: native plans without pool: ``forward(x, residual)`` adds ``residual`` (the output's
            shape) after the affine map and before the ReLU, as a ResNet block ends.

    Shape:
        - Input: ``(N, C_in, H, W)`` with ``(H, W) == input_hw``, any memory format.
        - Output: ``(N, C_out, H_out // pool, W_out // pool)``; ``channels_last`` for native, block and
          tile plans, unless :attr:`contiguous_output` is set.

    The output equals ``maxpool(relu(scale * layer.eval()(x) + shift [+ residual]))`` (each part only
    when asked for; with the channel orders above).
    """

    def __init__(
        self,
        layer: TargetConv2d,
        input_hw: tuple[int, int],
        plan: LayerPlan | None = None,
        *,
        in_perm: list[int] | None = None,
        permute_output: bool = False,
        relu: bool = False,
        pool: int = 1,
        input_support: Tensor | None = None,
        output_order: list[int] | None = None,
        scale: Tensor | None = None,
        shift: Tensor | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(layer, TargetConv2d):
            raise TypeError(f"layer must be a TargetConv2d, got {type(layer).__name__}")
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be a positive int (1 for no pooling), got {pool!r}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.conv_hw = layer.output_size(*self.input_hw)
        ho, wo = self.conv_hw
        if ho < pool or wo < pool:
            raise ValueError(f"pool={pool} is larger than the layer's output {self.conv_hw}")
        self.output_hw = (ho // pool, wo // pool)
        self.relu, self.pool = bool(relu), pool
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.dilation = layer.kernel_size, layer.stride, layer.dilation
        self.kernel_extent = layer.kernel_extent
        self.groups, self.pad, self.padding_mode = layer.groups, layer.pad, layer.padding_mode
        plan = plan if plan is not None else dense_plan(layer.out_channels)
        #: a tensor of the output's shape is added before the ReLU (``forward(x, residual)``; native plans only)
        self.residual = bool(residual)
        if self.residual and (plan.mode is not PlanMode.NATIVE or pool != 1):
            raise ValueError(f"a residual addition is fused into native plans without pool only, got plan "
                             f"{plan.mode.value!r} with pool={pool}")
        if plan.mode is PlanMode.NATIVE:
            why = self.native_unsupported(layer, pool, plan.strategy or "groups")
            if why:
                raise ValueError(f"a native plan cannot run this layer: {why}")
            if plan.perm != list(range(self.out_channels)) or permute_output:
                raise ValueError("native plans keep the original channel order (identity perm, no permute_output)")
        if plan.mode is not PlanMode.DENSE and self.groups != 1:
            raise ValueError(f"block and tile plans need groups=1, the layer has groups={self.groups}")
        if sorted(plan.perm) != list(range(self.out_channels)):
            raise ValueError(f"plan.perm must be a permutation of range({self.out_channels})")
        if plan.mode is PlanMode.TILES and permute_output:
            raise ValueError("tile plans keep the original channel order: permute_output must be False")
        if output_order is not None and (plan.mode is not PlanMode.TILES or sorted(output_order) != list(range(
                self.out_channels))):
            raise ValueError(f"output_order must be a permutation of range({self.out_channels}), for tile plans")
        if in_perm is not None and (self.groups != 1 or sorted(in_perm) != list(range(self.in_channels))):
            raise ValueError(f"in_perm must be a permutation of range({self.in_channels}) (and groups 1)")
        if output_order is not None:  # a tile plan emitting its channels in another order: that is its perm
            plan = dataclasses.replace(plan, perm=list(output_order))
            permute_output = True
        self.plan = align_plan(plan, pool, self.conv_hw)
        self.permute_output = bool(permute_output)
        #: order of the incoming channels this layer was built for (``None``: the original order)
        self.in_perm = None if in_perm is None else list(in_perm)
        #: seconds measured per candidate plan at freeze time (empty when not measured)
        self.timings: dict[str, float] = {}
        #: return the output as a contiguous (NCHW) tensor, for consumers that need that memory (``x.view``)
        self.contiguous_output = False
        self.blocks: list[Block] = list(self.plan.blocks)
        self._tiles = self.plan.mode is PlanMode.TILES
        scale = _channel_vector("scale", scale, self.out_channels)
        shift = _channel_vector("shift", shift, self.out_channels)
        #: whether a per-channel affine map is fused
        self.affine = scale is not None or shift is not None
        self._native: native_kernel.NativeConv | None = None
        #: the operator's cache key of the tensors :attr:`_native` was packed from (see :meth:`_direct_native`)
        self._native_key: tuple | None = None
        #: input channels ``[lo, hi)`` read per block (``None``: all of them); empty for dense and native plans
        self.input_ranges: list[tuple[int, int] | None] = []

        if self.plan.mode is PlanMode.DENSE and not _in_order(self.plan):
            raise ValueError("dense plans keep the original channel order (identity perm)")
        with torch.no_grad():
            roi = layer.rois(ho, wo)
            wm = (layer.attention(ho, wo) * TF.roi_mask(roi, ho, wo)).to(layer.weight.dtype)
            weight = layer.weight.detach()
            bias = None if layer.bias is None else layer.bias.detach()
        if self.affine:
            scale = torch.ones_like(wm[:, 0, 0]) if scale is None else scale.to(wm)
            shift = torch.zeros_like(wm[:, 0, 0]) if shift is None else shift.to(wm)
        # the state (state_dict): the same keys and layouts for every plan, in the original channel orders;
        # copies: a frozen layer is a snapshot, whatever happens to the layer it was built from
        self.register_buffer("weight", weight.clone(memory_format=torch.contiguous_format))
        self.register_buffer("bias", None if bias is None else bias.clone())
        self.register_buffer("window_map", wm.clone(memory_format=torch.contiguous_format))
        self.register_buffer("roi", roi.clone())
        self.register_buffer("scale", None if scale is None else scale.clone())
        self.register_buffer("shift", None if shift is None else shift.clone())
        #: the boxes outside which the input channels are known to be zero (``None``: not known)
        self.input_support = None if input_support is None else input_support.detach().to(torch.int64).cpu()
        self.identity_order = _in_order(self.plan)
        if input_support is not None and (input_support.dim() != 2 or tuple(input_support.shape) != (
                self.in_channels, 4)):
            raise ValueError(f"input_support must be ({self.in_channels}, 4) boxes, got {tuple(input_support.shape)}")
        #: small reductions (C_in x kH x kW) run as unfold + matmul: oneDNN's direct convolution is slow there
        self._gemm = self.in_channels * self.kernel_size[0] * self.kernel_size[1] <= GEMM_MAX_K
        if self.plan.mode is PlanMode.NATIVE:
            pad = self.pad
            if self.padding_mode != "zeros":  # padded explicitly: the kernel sees no padding
                pad = (0, 0, 0, 0)
            self._op_geometry = (tuple(self.stride), tuple(pad), tuple(self.dilation), self.relu, pool,
                                 self.plan.strategy or "groups", self.residual)
            if self.plan.strategy == TRITON and self.residual:
                raise ValueError("a residual addition is fused by the native 'groups' strategy only")
        self._pack()

    def _pack(self) -> None:
        """Derive the plan's working tensors from the state (non-persistent buffers): the fill values, the
        kernel's or the blocks' packed weights, windows and epilogue factors. Run again after a
        ``load_state_dict``."""
        perm = torch.tensor(self.plan.perm, dtype=torch.long, device=self.weight.device)
        self.register_buffer("inverse_perm", torch.argsort(perm), persistent=False)
        weight = self.weight
        if self.in_perm is not None:  # the input channels arrive in the producer's order
            weight = weight[:, torch.tensor(self.in_perm, dtype=torch.long, device=weight.device)]
        shift = None if self.shift is None else self.shift[perm]
        fill = None if shift is None else (shift.relu() if self.relu and not self.residual else shift)
        # the value of each output channel (plan order) where nothing is computed; None: zero
        self.register_buffer("fill", fill, persistent=False)
        self.input_ranges = []
        packed = None if self.in_perm is None else weight.contiguous(memory_format=_memory_format(self.weight))
        if self.plan.mode in (PlanMode.NATIVE, PlanMode.DENSE):
            #: the weight with the input channels in arrival order (``None``: :attr:`weight` itself)
            self.register_buffer("packed_weight", packed, persistent=False)
        if self.plan.mode is PlanMode.NATIVE:
            self._pack_native()
        elif self.plan.mode is not PlanMode.DENSE:
            self._pack_blocks(weight)

    def _pack_native(self) -> None:
        """The operator's arguments (``torch.ops.tkn.roi_conv2d``) are the module's buffers; the kernel's packed
        form of them is derived here and found again by the operator."""
        support = self.input_support
        hw = self.input_hw
        if self.padding_mode != "zeros":  # the pad copies values from inside, so the supports do not hold
            left, right, top, bottom = self.pad
            hw, support = (hw[0] + top + bottom, hw[1] + left + right), None
        self.register_buffer("native_support", None if support is None else
                             support.to(torch.int32).contiguous(), persistent=False)
        if self.plan.strategy == TRITON:
            return
        weight, window, roi, bias, scale, shift, _ = self._op_arguments()
        self._native = native_kernel.NativeConv(
            weight, bias, window, roi, conv_hw=self.conv_hw, input_hw=hw, stride=self.stride,
            dilation=self.dilation, pad=self._op_geometry[1], scale=scale, shift=shift, relu=self.relu,
            pool=self.pool, support=support, residual=self.residual, strategy=self.plan.strategy or "groups")
        roi_op.remember(self._native, self._op_arguments(), self._op_geometry)
        self._native_key = roi_op.cache_key(self._op_arguments(), self._op_geometry)

    def _direct_native(self, x: Tensor, residual: Tensor | None) -> native_kernel.NativeConv | None:
        """The packed kernel, to be called without ``torch.ops.tkn.roi_conv2d``'s dispatch (60-90 us a call on
        the 2-core test machine, against a 0.1-0.3 ms kernel at batch 1) where that gives what the operator
        gives: plain float32 CPU tensors (not fake, traced or compiled), no gradient to record, and the
        module's tensors those it was packed from (not replaced, not changed in place since). ``None``: use the
        operator."""
        native = self._native
        if native is None or type(x) is not Tensor or x.device.type != "cpu" or x.dtype != torch.float32:
            return None
        if residual is not None and type(residual) is not Tensor:
            return None
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return None
        args = self._op_arguments()
        if torch.is_grad_enabled() and (x.requires_grad or (residual is not None and residual.requires_grad)
                                        or any(t is not None and t.requires_grad for t in args)):
            return None
        return native if roi_op.cache_key(args, self._op_geometry) == self._native_key else None

    def _apply(self, fn, recurse: bool = True):
        """Module conversions (``.to``, ``.float``, a memory format) replace the buffers: the packed kernel still
        stands for them where their values and dtypes are unchanged on the CPU (freeze's ``channels_last``)."""
        before = self._op_arguments() if self._native is not None else None
        in_sync = before is not None and roi_op.cache_key(before, self._op_geometry) == self._native_key
        out = super()._apply(fn, recurse)
        if in_sync:
            after = self._op_arguments()
            same = all((a is None) == (b is None) and (a is None or (
                b.device.type == "cpu" and a.dtype == b.dtype and torch.equal(a, b))) for a, b in zip(before, after))
            self._native_key = roi_op.cache_key(after, self._op_geometry) if same else None
        return out

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # the pickled kernel stands for the pickled buffers only if it was packed from them as they are now
        state["_native_key"] = self._native is not None and roi_op.cache_key(
            self._op_arguments(), self._op_geometry) == self._native_key
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        in_sync = self.__dict__.pop("_native_key", False)
        self._native_key = roi_op.cache_key(self._op_arguments(), self._op_geometry) if in_sync is True else None

    def _pack_blocks(self, weight: Tensor) -> None:
        """Per block: ``weight_i``, ``bias_i``, ``window_i``, ``scale_i``, ``shift_i`` (and ``index_i`` for tiles)."""
        bias, wm, scale, shift = self.bias, self.window_map, self.scale, self.shift
        for i, b in enumerate(self.blocks):
            idx = torch.tensor(self.plan.channels(b), dtype=torch.long, device=weight.device)
            padded = padded_channels(b.count)
            w = weight.new_zeros((padded, *weight.shape[1:]))
            w[:b.count] = weight[idx]
            used = None if self.input_support is None or self._gemm else self._used_inputs(b, self.input_support)
            if used is not None:
                w = w[:, used[0]:used[1]]
            self.input_ranges.append(used)
            if self._gemm:
                w = w.reshape(padded, -1).t().contiguous()  # (C_in kH kW, padded rows): unfold's order
            else:
                w = w.contiguous(memory_format=torch.channels_last)
            self.register_buffer(f"weight_{i}", w, persistent=False)
            if bias is not None:
                bb = bias.new_zeros(padded)
                bb[:b.count] = bias[idx]
                self.register_buffer(f"bias_{i}", bb, persistent=False)
            # (h, w, padded channels): multiplies the block's output seen as N, h, w, C (zero on the pad rows)
            win = wm.new_zeros((b.y1 - b.y0, b.x1 - b.x0, padded))
            win[..., :b.count] = wm[idx, b.y0:b.y1, b.x0:b.x1].permute(1, 2, 0)
            self.register_buffer(f"window_{i}", win, persistent=False)
            if self.affine:
                self.register_buffer(f"scale_{i}", torch.cat([scale[idx], scale.new_ones(padded - b.count)]),
                                     persistent=False)
                self.register_buffer(f"shift_{i}", torch.cat([shift[idx], shift.new_zeros(padded - b.count)]),
                                     persistent=False)
            if self._tiles:  # where the block's channels go in the output
                self.register_buffer(f"index_{i}", self.inverse_perm[idx], persistent=False)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        """Load the state (any plan's: the keys are the same) and derive the plan's tensors from it again.

        The ROIs, and which channels are non-zero outside them, must be those the layer was planned for: the
        plan's blocks and the input supports of the layers it feeds were derived from them."""
        roi = state_dict.get(prefix + "roi")
        if isinstance(roi, Tensor) and (roi.shape != self.roi.shape or not torch.equal(roi.to(self.roi), self.roi)):
            error_msgs.append(f"{prefix}roi: the state holds other ROIs than this frozen layer was planned for; "
                              "freeze the model with those parameters instead")
            return
        shift = state_dict.get(prefix + "shift")
        if isinstance(shift, Tensor) and self.shift is not None and shift.shape == self.shift.shape and not torch.equal(
                self._fill_zeros(shift.to(self.shift)), self._fill_zeros(self.shift)):
            error_msgs.append(f"{prefix}shift: outside the ROIs the state's channels are non-zero where this frozen "
                              "layer's are zero (or the reverse); freeze the model with those parameters instead")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        with torch.no_grad():
            self._pack()

    def _fill_zeros(self, shift: Tensor) -> Tensor:
        """Per channel, whether the output is zero outside the ROI for this ``shift``."""
        return (shift.relu() if self.relu and not self.residual else shift) == 0

    def _used_inputs(self, b: Block, support: Tensor) -> tuple[int, int] | None:
        """The range ``[lo, hi)`` of input channels spanning those whose ``support`` box meets the block's
        input window (channels inside the range but not meeting it are read exactly: they only add work),
        grown to a multiple of :data:`~tkn.ops.plan.PAD_CHANNELS`; ``None`` when it would skip less than an eighth.

        A range, not a list: a slice of the ``channels_last`` input is copied at memory speed, while
        gathering scattered channels (``index_select`` on the innermost dimension) measured 5-20x slower
        than the copy and cost more than the skipped products saved. :func:`tkn.engine.freeze` orders
        the producer's channels by ROI position so that the ranges are short.
        """
        left, _, top, _ = self.pad
        ya, yb, _, _ = input_span(b.y0, b.y1, self.stride[0], self.kernel_extent[0], top, self.input_hw[0])
        xa, xb, _, _ = input_span(b.x0, b.x1, self.stride[1], self.kernel_extent[1], left, self.input_hw[1])
        s = support.to(torch.int64).cpu()
        meets = (s[:, 0] < yb) & (s[:, 1] > ya) & (s[:, 2] < xb) & (s[:, 3] > xa) & (s[:, 1] > s[:, 0]) & (
            s[:, 3] > s[:, 2])
        used = torch.nonzero(meets).flatten().tolist() or [0]
        length = min(self.in_channels, padded_channels(used[-1] + 1 - used[0]))
        hi = min(self.in_channels, used[0] + length)
        lo = hi - length
        if length > self.in_channels * 7 // 8:
            return None
        return lo, hi

    @staticmethod
    def native_unsupported(layer: TargetConv2d, pool: int = 1, strategy: str = "groups") -> str:
        """Why a kernel plan of ``strategy`` cannot run ``layer`` (with a fused ``pool``); ``""`` when it can."""
        if strategy == TRITON:
            why = triton_roi.reason()
            if why:
                return f"the Triton kernel is not available ({why})"
            if layer.groups != 1:
                return f"groups={layer.groups} (the Triton kernel needs groups=1)"
            if layer.weight.dtype != torch.float32:
                return f"{layer.weight.dtype} (the Triton kernel needs float32)"
            return ""
        if not native_kernel.available():
            return f"the native kernel is not available ({native_kernel.reason()})"
        if layer.groups != 1:
            return f"groups={layer.groups} (the kernel needs groups=1)"
        if layer.weight.dtype != torch.float32 or layer.weight.device.type != "cpu":
            return f"{layer.weight.dtype} on {layer.weight.device} (the kernel needs float32 on the CPU)"
        if pool > native_kernel.MAX_POOL:
            return f"pool={pool} (the kernel fuses pools up to {native_kernel.MAX_POOL})"
        return ""

    # -- execution -------------------------------------------------------------------
    def _epilogue(self, y: Tensor) -> Tensor:
        if self.affine:
            y = y.mul_(self.scale[:, None, None]).add_(self.shift[:, None, None])
        if self.relu:
            y = y.relu_()
        return F.max_pool2d(y, self.pool) if self.pool > 1 else y

    def _dense(self, x: Tensor) -> Tensor:
        # NCHW: oneDNN's blocked direct convolution behind it ran this layer 1.3x faster than channels_last
        # (256->256, 5x5, 28x28, batch 64), and a block-planned producer hands over channels_last
        x = x.contiguous()
        if x.shape[1] == 1:  # plain NCHW strides for a one-channel map (see tkn.engine.native.nhwc_as_nchw)
            x = x.reshape(-1).view(x.shape)
        weight = self.weight if self.packed_weight is None else self.packed_weight
        left, right, top, bottom = self.pad
        if self.padding_mode == "zeros" and left == right and top == bottom:
            y = F.conv2d(x, weight, self.bias, stride=self.stride, padding=(top, left), dilation=self.dilation,
                         groups=self.groups)
        else:
            xp = TF.pad_input(x, self.pad, self.padding_mode)
            y = F.conv2d(xp, weight, self.bias, stride=self.stride, dilation=self.dilation, groups=self.groups)
        return self._epilogue(y.mul_(self.window_map))

    def _block_output(self, i: int, b: Block, x: Tensor, top: int, left: int, hw: tuple[int, int]) -> Tensor:
        """Block ``i``'s convolution over its box, as ``(N, h, w, padded channels)`` (a view of contiguous memory).

        ``x`` is, for matmul layers, the patch view of :meth:`_patches` (the block's patches are copied out
        of it); otherwise the input of size ``hw``, which the block crops (zero padding added only where
        the crop leaves the map: ``top``/``left`` padding is still to be applied), keeping only the input
        channels it reads.
        """
        w = getattr(self, f"weight_{i}")
        bias = getattr(self, f"bias_{i}", None)
        if self._gemm:
            cols = x[:, b.y0:b.y1, b.x0:b.x1].reshape(-1, w.shape[0])
            y = torch.mm(cols, w) if bias is None else torch.addmm(bias, cols, w)
            return y.view(x.shape[0], b.y1 - b.y0, b.x1 - b.x0, w.shape[1])
        h, w_in = hw  # Python ints (not x.shape: traced, they would make the crop bounds data-dependent)
        ya, yb, pt, pb = input_span(b.y0, b.y1, self.stride[0], self.kernel_extent[0], top, h)
        xa, xb, pl, pr = input_span(b.x0, b.x1, self.stride[1], self.kernel_extent[1], left, w_in)
        lo, hi = self.input_ranges[i] or (0, x.shape[1])
        crop = x[:, lo:hi, ya:yb, xa:xb]
        if pt or pb or pl or pr:
            crop = F.pad(crop, (pl, pr, pt, pb))
        y = F.conv2d(crop, w, bias, stride=self.stride, dilation=self.dilation)
        return y.permute(0, 2, 3, 1)

    def _patches(self, x: Tensor) -> Tensor:
        """A view ``(N, H_out, W_out, C_in, kH, kW)`` of the padded input's patches (no copy), for matmul layers."""
        xp = TF.pad_input(x, self.pad, self.padding_mode).contiguous()
        n, c, hp, wp = xp.shape
        (sy, sx), (dy, dx) = self.stride, self.dilation
        return xp.as_strided((n, *self.conv_hw, c, *self.kernel_size),
                             (c * hp * wp, sy * wp, sx, hp * wp, dy * wp, dx))

    def _pool_nhwc(self, y: Tensor) -> Tensor:
        """``k``×``k`` max-pool (stride ``k``) of ``(N, h, w, C)`` by elementwise maxima of strided views."""
        k = self.pool
        out = y[:, 0::k, 0::k]
        for dy in range(k):
            for dx in range(k):
                if dy or dx:
                    out = torch.maximum(out, y[:, dy::k, dx::k])
        return out

    def _blocks(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        ho, wo = self.output_hw
        p = self.pool
        left, right, top, bottom = self.pad
        hw = self.input_hw
        if self._gemm:
            x = self._patches(x)
        else:
            if self.padding_mode != "zeros":
                x = TF.pad_input(x, self.pad, self.padding_mode)
                hw = (hw[0] + top + bottom, hw[1] + left + right)
                left, top = 0, 0
            # each block copies its own crop: sharing one crop per tile measured slower (blocks of a tile
            # rarely have the same box, so they copied twice)
            x = x.contiguous(memory_format=torch.channels_last)
        if self.fill is None:
            out = x.new_zeros((n, ho, wo, self.out_channels))
        else:
            out = self.fill.to(x.dtype).expand(n, ho, wo, self.out_channels).clone()
        for i, b in enumerate(self.blocks):
            y = self._block_output(i, b, x, top, left, hw).mul_(getattr(self, f"window_{i}"))
            if self.affine:
                y = y.mul_(getattr(self, f"scale_{i}")).add_(getattr(self, f"shift_{i}"))
            if p > 1:
                y = self._pool_nhwc(y)
            if self.relu:
                y = y.relu_()  # after the pool: relu and max commute, and the pooled map is p*p times smaller
            rows, cols = slice(b.y0 // p, b.y1 // p), slice(b.x0 // p, b.x1 // p)
            # slice / index assignment, not mul(out=view): the TorchScript-based ONNX exporter drops writes into views
            if self._tiles:
                out[:, rows, cols, getattr(self, f"index_{i}")] = y[..., :b.count]
            else:
                out[:, rows, cols, b.c0:b.c1] = y[..., :b.count]
        return native_kernel.nhwc_as_nchw(out)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            raise ValueError(
                f"this frozen layer was planned for inputs of size {self.input_hw}, got {tuple(x.shape[-2:])}; "
                "freeze the model again with an example of the new size"
            )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must be (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if self.plan.mode is PlanMode.NATIVE:
            if self.padding_mode != "zeros":
                x = TF.pad_input(x, self.pad, self.padding_mode)
            native = self._direct_native(x, residual)
            if native is not None:
                y = native(x, residual)
            else:
                stride, pad, dilation, relu, pool, strategy, _ = self._op_geometry
                weight, window, roi, bias, scale, shift, support = self._op_arguments()
                y = torch.ops.tkn.roi_conv2d(x, weight, window, roi, bias, scale, shift, support, residual,
                                             list(stride), list(pad), list(dilation), relu, pool, strategy)
        else:
            y = self._dense(x) if self.plan.mode is PlanMode.DENSE else self._blocks(x)
            if not (self.permute_output or self.identity_order):
                y = y.index_select(1, self.inverse_perm)
        return y.contiguous() if self.contiguous_output else y

    def _op_arguments(self) -> tuple[Tensor | None, ...]:
        """The tensors ``torch.ops.tkn.roi_conv2d`` takes from this (native) layer, in the operator's order."""
        weight = self.weight if self.packed_weight is None else self.packed_weight
        return (weight, self.window_map, self.roi, self.bias, self.scale, self.shift, self.native_support)

    def output_support(self) -> Tensor:
        """``(C_out, 4)`` boxes (output coordinates, in the order the channels are returned) outside which
        each output channel is zero: its ROI, through the fused pool (the whole map for a channel whose
        fill value ``relu(shift)`` is not zero)."""
        roi = self.roi[torch.tensor(self.plan.perm, device=self.roi.device)] if self.permute_output else self.roi
        box = TF.pooled_rois(roi.cpu(), self.pool, *self.output_hw)
        if self.residual:  # the residual may be non-zero anywhere
            box[:] = torch.tensor([0, self.output_hw[0], 0, self.output_hw[1]])
        elif self.fill is not None:
            fill = self.fill if (self.permute_output or self.identity_order) else self.fill[self.inverse_perm]
            box[fill.cpu() != 0] = torch.tensor([0, self.output_hw[0], 0, self.output_hw[1]])
        return box

    def macs(self, height: int | None = None, width: int | None = None) -> int:
        """Multiply–accumulates of one sample over the fixed ROIs (what :func:`tkn.flops.count` reports)."""
        return TF.roi_macs(self.roi, self.in_channels // self.groups, self.kernel_size)

    def executed_macs(self, batch: int | None = None) -> int:
        """Multiply–accumulates of one sample as this plan runs them: block boxes, channels padded to
        :data:`~tkn.ops.plan.PAD_CHANNELS`, the input channel ranges read (compare :meth:`macs`, the ROIs' own).
        With ``batch``, the native ``"batch"`` strategy's padding lanes (the batch rounded up to the vector
        width) count too."""
        k = self.kernel_size[0] * self.kernel_size[1]
        if self.plan.strategy == TRITON:
            return self.macs()  # one program per channel over exactly its ROI
        if self._native is not None:
            work = self._native.executed_macs
            if self._native.strategy == "batch" and batch:
                vw = native_kernel.vector_width()
                work = work * (-(-batch // vw) * vw) // batch
            return work
        if self.plan.mode is PlanMode.DENSE:
            return self.dense_macs()
        total = 0
        for b, used in zip(self.blocks, self.input_ranges):
            padded = padded_channels(b.count)
            total += padded * b.area * (used[1] - used[0] if used else self.in_channels) * k
        return total

    def work_units(self) -> tuple[int, str]:
        """How many separate pieces of work one call runs, and what they are: the native kernel's channel
        groups, or the plan's blocks (0 blocks for a dense plan)."""
        if self.plan.strategy == TRITON:
            return self.out_channels, "channels"
        if self._native is not None:
            if self._native.strategy == "batch":
                return self.output_hw[0] * self.output_hw[1], "output positions"
            if self._native.strategy == "reduce":
                return int(self._native.set_boxes.shape[0]), "channel sets"
            return len(self._native.groups), "channel groups"
        return len(self.blocks), "blocks"

    def dense_macs(self, height: int | None = None, width: int | None = None) -> int:
        """Multiply–accumulates of the full convolution of one sample."""
        per = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return self.out_channels * self.conv_hw[0] * self.conv_hw[1] * per

    def extra_repr(self) -> str:
        p = self.plan
        s = f"{self.in_channels}, {self.out_channels}, input_hw={self.input_hw}, plan={p.mode}"
        if p.mode in (PlanMode.BLOCKS, PlanMode.TILES):
            s += f", blocks={len(self.blocks)}, active={p.n_active}"
        if self.affine:
            s += ", affine"
        if self.residual:
            s += ", + residual"
        if self.relu:
            s += ", relu"
        if self.pool > 1:
            s += f", pool={self.pool}"
        if self.permute_output:
            s += ", permuted output"
        return s


class FrozenSparseLinear(nn.Module):
    """An ``nn.Linear`` whose input is known to be zero outside ``columns``: only those columns are read.

    :func:`tkn.engine.freeze` puts one where a frozen target layer's flattened output feeds a linear layer
    through operations that keep zeros (the input of TKN6's first fully connected layer is about 90% zeros:
    the ROIs of the last target layer). Exact: the skipped products are products with zeros.

    Args:
        linear: the layer (its parameters are copied).
        columns: indices of the input features that can be non-zero.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.
    """

    def __init__(self, linear: nn.Linear, columns: Tensor) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        columns = torch.as_tensor(columns, dtype=torch.long, device=linear.weight.device).flatten()
        if columns.numel() and (int(columns.min()) < 0 or int(columns.max()) >= linear.in_features):
            raise ValueError(f"columns must lie in [0, {linear.in_features}), got [{int(columns.min())}, "
                             f"{int(columns.max())}]")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("columns", columns)
        self.register_buffer("weight", linear.weight.detach()[:, columns].contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features in its last dimension, got {tuple(x.shape)}")
        return F.linear(x.index_select(-1, self.columns), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, columns read={self.columns.numel()}"
