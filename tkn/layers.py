"""``nn.Module`` wrappers: Attentive Regularization layers and the target convolution.

Each layer normalises its arguments once in ``__init__``, passes ``device`` and
``dtype`` through like ``torch.nn`` layers, initialises in
``reset_parameters()`` and computes everything else from its parameters in
``forward`` (no state is mutated there).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn import functional as TF
from tkn.ops.fast_conv import fast_target_conv2d
from tkn.validate import check_finite, int_pair, one_of, positive_int, positive_number

__all__ = ["AttentiveRegularization1d", "AttentiveRegularization2d", "TargetConv2d"]


def _check_input(x, rank: int, channels: int, layout: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"input must have rank {rank} {layout}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"input has {x.shape[1]} channels but the layer expects {channels} {layout}")
    if not x.is_floating_point():
        raise TypeError(f"input must be floating point, got {x.dtype}")


def _params_are_checked() -> bool:
    """Host-side checks cost a device sync and break tracing: skip them inside trace/compile."""
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


@torch.fx.wrap
def target_layer_call(
    x: Tensor, weight: Tensor, m: Tensor, s: Tensor, bias: Tensor | None, *, in_channels: int,
    stride: tuple[int, int], padding, dilation: tuple[int, int], groups: int, padding_mode: str, window: str,
    execution: str, min_roi: int | None, relu: bool, pool: int,
) -> Tensor:
    """What :class:`TargetConv2d` computes (``max_pool2d(relu(y), pool)`` when asked), its arguments checked.

    One function of the layer's tensors and settings, so that :func:`torch.fx.symbolic_trace` records a
    target layer as one node (``torch.fx.wrap``): the checks and the ROI geometry need the input's values and
    sizes, which a traced graph does not have, and run when the graph runs.
    """
    _check_input(x, 4, in_channels, "(N, C_in, H, W)")
    if _params_are_checked():
        check_finite("m", m)
        check_finite("s", s)
    if execution == "fast":  # ROI blocks re-planned every call (tkn.ops.fast_conv)
        return fast_target_conv2d(
            x, weight, m, s, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
            padding_mode=padding_mode, window=window, min_roi=min_roi, relu=relu, pool=pool,
        )
    y = TF.target_conv2d(
        x, weight, m, s, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, window=window, execution=execution, min_roi=min_roi,
    )
    y = F.relu(y) if relu else y
    return F.max_pool2d(y, pool) if pool > 1 else y


class _AttentiveRegularization(nn.Module):
    """Shared parameters and checks of the 1-D and 2-D AR layers."""

    ndim: int = 0

    def __init__(self, channels: int, window: str = "cauchy", *, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = positive_int("channels", channels)
        self.window = TF.check_window(window)
        factory = {"device": device, "dtype": dtype}
        self.m = nn.Parameter(torch.empty(channels, self.ndim, **factory))
        self.s = nn.Parameter(torch.empty(channels, self.ndim, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Centred windows (``m = 0.5``) of scale 1, as in the paper (section 3.4)."""
        nn.init.constant_(self.m, 0.5)
        nn.init.constant_(self.s, 1.0)

    def clipped(self, sizes) -> tuple[Tensor, Tensor]:
        """The clipped ``(m, s)`` used for a map of ``sizes`` (one length per axis)."""
        if _params_are_checked():
            check_finite("m", self.m)
            check_finite("s", self.s)
        return TF.clip_params(self.m, self.s, sizes)

    def extra_repr(self) -> str:
        return f"{self.channels}, window={self.window!r}"


class AttentiveRegularization1d(_AttentiveRegularization):
    """Attentive Regularization of sequences: ``y[:, c] = x[:, c] * f_c`` (paper Eq. 1, 12).

    Args:
        channels: number of channels ``C``.
        window: ``"cauchy"`` (default) or ``"gaussian"``.

    Shape:
        - Input: ``(N, C, L)``
        - Output: ``(N, C, L)``

    Example:
        >>> ar = AttentiveRegularization1d(4)
        >>> ar(torch.ones(2, 4, 9)).shape
        torch.Size([2, 4, 9])
    """

    ndim = 1

    def attention(self, length: int) -> Tensor:
        """Windows ``(C, length)`` from the clipped parameters."""
        m, s = self.clipped((length,))
        return TF.window(length, m[:, 0], s[:, 0], self.window)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 3, self.channels, "(N, C, L)")
        return x * self.attention(x.shape[-1]).to(x.dtype)


class AttentiveRegularization2d(_AttentiveRegularization):
    """Attentive Regularization of images: ``y[:, c] = x[:, c] * (f_y ⊗ f_x)_c`` (paper Eq. 8–14).

    ``m`` and ``s`` have shape ``(C, 2)``: column 0 is the row (y) axis,
    column 1 the column (x) axis. With ``correlated=True`` (Gaussian only) the
    layer also learns a correlation ``rho`` of shape ``(C,)``, initialised to 0
    and clipped to ``[-RHO_MAX, RHO_MAX]``, and uses the non-separable window
    of paper Eq. 4–7 (:func:`tkn.functional.attention2d_correlated`).

    Shape:
        - Input: ``(N, C, H, W)``
        - Output: ``(N, C, H, W)``

    Example:
        >>> ar = AttentiveRegularization2d(3, window="gaussian")
        >>> ar.attention(5, 7).shape
        torch.Size([3, 5, 7])
    """

    ndim = 2

    def __init__(self, channels: int, window: str = "cauchy", *, correlated: bool = False, device=None, dtype=None):
        if correlated and TF.check_window(window) != "gaussian":
            raise ValueError(f"correlated=True needs window='gaussian', got window={window!r}")
        self.correlated = bool(correlated)
        super().__init__(channels, window, device=device, dtype=dtype)
        if self.correlated:
            self.rho = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "rho", None) is not None:
            nn.init.zeros_(self.rho)

    def attention(self, height: int, width: int) -> Tensor:
        """Windows ``F`` of shape ``(C, height, width)`` from the clipped parameters."""
        m, s = self.clipped((height, width))
        if self.correlated:
            rho = self.rho.clamp(-TF.RHO_MAX, TF.RHO_MAX)
            return TF.attention2d_correlated(m, s, rho, height, width)
        return TF.attention2d(m, s, height, width, self.window)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", correlated=True" if self.correlated else "")

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 4, self.channels, "(N, C, H, W)")
        return x * self.attention(*x.shape[-2:]).to(x.dtype)


class TargetConv2d(nn.Module):
    """A target layer: convolution, Attentive Regularization and per-channel ROI (paper Eq. 15–17).

    For every output channel ``c``: ``y[c] = (conv(x, W)[c] * F_c) * 1[ROI_c]``
    where ``F_c`` is the separable window of ``(m[c], s[c])`` sampled on the
    output map and ``ROI_c`` the rectangle ``m ± s / sqrt(2)`` (see
    :mod:`tkn.functional` for the exact conventions and clipping).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
        bias, padding_mode: as in ``nn.Conv2d`` (``padding`` defaults to
            ``"same"``, the paper's setting; ``bias`` to ``False``).
        window: ``"cauchy"`` (default) or ``"gaussian"``.
        l2: weight of the L2 penalty on this layer's scales (see
            :func:`tkn.scale_penalty`); the paper's β build-up is folded in.
        min_roi: minimum ROI width in output pixels per axis. ``None`` (default):
            the kernel's dilated extent, the paper's text. An int ``>= 1`` allows
            narrower ROIs, as the paper's original code did (its smallest FLOP
            counts need them); a narrower ROI still reads the kernel's whole halo.
        execution: ``"dense"`` (full convolution, then window and mask: the
            reference), ``"sliced"`` (one convolution per distinct ROI: simple,
            for checking) or ``"fast"`` (ROI blocks re-planned every call, the
            training path of :mod:`tkn.ops.fast_conv`). Same values and
            gradients; ``tkn.freeze`` is the inference counterpart.

    Attributes:
        weight: ``(out_channels, in_channels / groups, kH, kW)``, He-initialised.
        m, s: raw window parameters ``(out_channels, 2)``; column 0 = rows (y).

    Shape:
        - Input: ``(N, C_in, H, W)``
        - Output: ``(N, C_out, H_out, W_out)``, ``H_out``/``W_out`` as ``nn.Conv2d``.

    Example:
        >>> conv = TargetConv2d(3, 8, 3)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> conv.rois(16, 16)[0].tolist()  # at initialisation every ROI is the whole map
        [0, 16, 0, 16]
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding="same",
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        window: str = "cauchy",
        l2: float = 0.0,
        min_roi: int | None = None,
        *,
        padding_mode: str = "zeros",
        execution: str = "dense",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.groups = positive_int("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.kernel_size = int_pair("kernel_size", kernel_size)
        self.stride = int_pair("stride", stride)
        self.dilation = int_pair("dilation", dilation)
        left, _, top, _ = TF.resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.padding = padding if isinstance(padding, str) else (top, left)
        self.padding_mode = one_of("padding_mode", padding_mode, TF.PADDING_MODES)
        self.window = TF.check_window(window)
        self.l2 = positive_number("l2", l2, allow_zero=True)
        self.min_roi = TF.check_min_roi(min_roi)
        if execution not in ("dense", "sliced", "fast"):
            raise ValueError(f"execution must be 'dense', 'sliced' or 'fast', got {execution!r}")
        self.execution = execution
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.m = nn.Parameter(torch.empty(out_channels, 2, **factory))
        self.s = nn.Parameter(torch.empty(out_channels, 2, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (fan-in, ReLU) initialisation of the weight, zero bias, centred unit-scale windows."""
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.constant_(self.m, 0.5)
        nn.init.constant_(self.s, 1.0)

    # -- geometry -----------------------------------------------------------------
    @property
    def kernel_extent(self) -> tuple[int, int]:
        """Span of the (dilated) kernel in input pixels per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """Explicit ``(left, right, top, bottom)`` padding."""
        return TF.resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation)

    @property
    def roi_floor(self) -> tuple[int, int]:
        """Minimum ROI width per axis in output pixels: ``min_roi``, or the kernel's extent when it is ``None``."""
        return TF.roi_floor(self.kernel_extent, self.min_roi)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output map size for an input of ``height x width``."""
        left, right, top, bottom = self.pad
        return (
            TF.conv_output_size(height, self.kernel_size[0], self.stride[0], self.dilation[0], top + bottom),
            TF.conv_output_size(width, self.kernel_size[1], self.stride[1], self.dilation[1], left + right),
        )

    def clipped(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """The clipped ``(m, s)`` used on an output map of ``height x width``."""
        return TF.clip_params(self.m, self.s, (height, width), self.roi_floor)

    def attention(self, height: int, width: int) -> Tensor:
        """``F``: tensor ``(out_channels, height, width)`` from the clipped parameters (output coordinates).

        Raises:
            ValueError: ``m`` or ``s`` holds a NaN or an infinity.
        """
        self._check_params()
        m, s = self.clipped(height, width)
        return TF.attention2d(m, s, height, width, self.window)

    def rois(self, height: int, width: int) -> Tensor:
        """Integer ROIs ``(out_channels, 4)``: ``y0, y1, x0, x1``, half-open, output coordinates.

        Raises:
            ValueError: ``m`` or ``s`` holds a NaN or an infinity (a non-finite centre or scale has no ROI).
        """
        self._check_params()
        return TF.rois(self.m, self.s, (height, width), self.roi_floor)

    def _check_params(self) -> None:
        if _params_are_checked():
            check_finite("m", self.m)
            check_finite("s", self.s)

    def macs(self, height: int, width: int) -> int:
        """Multiply–accumulates of one forward pass on one sample: only the ROIs are counted."""
        return TF.roi_macs(self.rois(height, width), self.in_channels // self.groups, self.kernel_size)

    # -- forward ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, relu=False, pool=1)

    def forward_relu_pool(self, x: Tensor, pool: int = 1) -> Tensor:
        """``max_pool2d(relu(self(x)), pool)`` (kernel = stride = ``pool``; ``pool=1``: the ReLU alone).

        With ``execution="fast"`` the ReLU and the pool run on each ROI block and only the pooled map is
        assembled (see :func:`tkn.ops.fast_conv.fast_target_conv2d`); the values and gradients are those of
        the three operations in a row. Forward hooks of the layer do not run.

        Shape:
            - Input: ``(N, C_in, H, W)``
            - Output: ``(N, C_out, H_out // pool, W_out // pool)``
        """
        return self._run(x, relu=True, pool=positive_int("pool", pool))

    def _run(self, x: Tensor, relu: bool, pool: int) -> Tensor:
        return target_layer_call(
            x, self.weight, self.m, self.s, self.bias, in_channels=self.in_channels, stride=self.stride,
            padding=self.padding, dilation=self.dilation, groups=self.groups, padding_mode=self.padding_mode,
            window=self.window, execution=self.execution, min_roi=self.min_roi, relu=relu, pool=pool,
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        s += f", window={self.window!r}, l2={self.l2:g}"
        if self.min_roi is not None:
            s += f", min_roi={self.min_roi}"
        if self.execution != "dense":
            s += f", execution={self.execution!r}"
        return s
