"""DN10/TDN10 and DN40/TDN40: the paper's DenseNets (Table 1, section 4.3).

All convolutions are BN–ReLU–conv composites (Huang et al. 2017). The
targeted variants replace only the 3x3 convolutions inside the dense blocks
by target layers; the stem, the bottleneck and the transition 1x1
convolutions stay dense. The nets are fully convolutional (global average
pooling before the classifier): any input of at least 4x4 works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tkn.models.base import PaperModel, block_l2, conv, he_init_, traced
from tkn.models.width import scale_channels
from tkn.validate import positive_number

__all__ = ["DenseNet", "DenseLayer", "Transition", "bn_relu_conv", "dn10", "dn40"]


def bn_relu_conv(
    in_channels: int, out_channels: int, kernel_size: int, *, dropout: float = 0.0, **conv_kwargs
) -> nn.Sequential:
    """The DenseNet composite ``BN - ReLU - conv`` (same padding, no bias), then dropout if ``dropout > 0``."""
    layers = [
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        conv(in_channels, out_channels, kernel_size, **conv_kwargs),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DenseLayer(nn.Module):
    """One dense layer: ``[BN-ReLU-1x1 conv (bottleneck)] - BN-ReLU-3x3 conv``, output concatenated to its input.

    Args:
        in_channels: channels entering the layer.
        growth_rate: channels the 3x3 convolution adds.
        bottleneck: width of the 1x1 bottleneck, or ``None`` for none.
        dropout: after each convolution.
        targeted, window, l2, min_roi: whether the 3x3 convolution is a target layer, its window, penalty
            and minimum ROI width.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C + growth_rate, H, W)``
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        *,
        bottleneck: int | None,
        dropout: float,
        targeted: bool,
        window: str,
        l2: float,
        min_roi: int | None = None,
    ) -> None:
        super().__init__()
        cin = in_channels
        if bottleneck is not None:
            self.conv1x1 = bn_relu_conv(cin, bottleneck, 1, dropout=dropout)
            cin = bottleneck
        else:
            self.conv1x1 = None
        self.conv3x3 = bn_relu_conv(cin, growth_rate, 3, dropout=dropout, targeted=targeted, window=window, l2=l2,
                                    min_roi=min_roi)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.conv1x1 is None else self.conv1x1(x)
        return torch.cat([x, self.conv3x3(y)], dim=1)


class Transition(nn.Sequential):
    """Transition between dense blocks: ``BN-ReLU-1x1 conv`` (with compression), dropout, 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float) -> None:
        super().__init__()
        self.conv = bn_relu_conv(in_channels, out_channels, 1, dropout=dropout)
        self.pool = nn.AvgPool2d(2)


class DenseNet(PaperModel):
    """A 3-block DenseNet as the paper uses it; see :func:`dn10` and :func:`dn40` for the two configurations.

    The stem is a 3x3 convolution to ``2 * growth_rate`` channels (dense in
    the targeted variants too); each of the 3 blocks has ``layers_per_block``
    :class:`DenseLayer` s; a :class:`Transition` to ``int(compression * C)``
    channels follows each of the first two blocks; then BN-ReLU (the
    features), global average pooling and a linear classifier.

    Args:
        growth_rate: channels added per dense layer.
        layers_per_block: dense layers per block.
        bottleneck: 1x1 bottleneck width as a multiple of ``growth_rate``, or ``None``.
        compression: channel factor of the transitions (1.0 = none, 0.5 = DenseNet-BC).
        dropout: after every convolution but the stem.
        targeted: 3x3 convolutions of the dense blocks are target layers with
            ``l2 * beta**block`` for blocks 0, 1, 2.
        num_classes, in_channels, input_size, window, l2, beta: see
            :func:`tkn.models.create_model` (``input_size`` is only recorded).
        width: channel multiplier (a finite number > 0; 1 = the paper's model). It
            scales the growth rate to ``max(1, round(growth_rate * width))``
            (kept in ``growth_rate``); every other width follows from the
            structure as at width 1: the stem has 2 x growth channels, the
            bottlenecks ``bottleneck`` x growth, each transition ``int(compression * C)``
            of the ``C`` channels it receives. For DN10 at width 0.5: growth 6, stem
            12, transitions 24 and 36 channels. The attribute ``width`` keeps it.

    Shape:
        - Input: ``(N, in_channels, H, W)``, ``H, W >= 4``
        - Features: ``(N, C, H // 4, W // 4)``
        - Output: ``(N, num_classes)``

    Raises:
        ValueError: ``width`` is not a finite number > 0.
    """

    def __init__(
        self,
        *,
        growth_rate: int,
        layers_per_block: int,
        bottleneck: int | None,
        compression: float,
        dropout: float,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        targeted: bool = False,
        window: str = "cauchy",
        l2: float = 1e-4,
        beta: float = 2.0,
        min_roi: int | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        self.targeted = targeted
        self.width = positive_number("width", width)
        growth_rate = scale_channels(growth_rate, self.width)
        self.growth_rate = growth_rate
        channels = 2 * growth_rate
        self.stem = conv(in_channels, channels, 3)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for block in range(3):
            layers = nn.Sequential()
            for i in range(layers_per_block):
                layers.add_module(
                    f"layer{i + 1}",
                    DenseLayer(
                        channels, growth_rate,
                        bottleneck=None if bottleneck is None else bottleneck * growth_rate,
                        dropout=dropout, targeted=targeted, window=window, l2=block_l2(l2, beta, block),
                        min_roi=min_roi,
                    ),
                )
                channels += growth_rate
            self.blocks.append(layers)
            if block < 2:
                out = int(channels * compression)
                self.transitions.append(Transition(channels, out, dropout=dropout))
                channels = out
        self.norm = nn.BatchNorm2d(channels)
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        he_init_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if not traced(x) and (x.shape[-2] < 4 or x.shape[-1] < 4):
            raise ValueError(f"input must be at least 4x4 (two 2x2 poolings), got {tuple(x.shape[-2:])}")
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return F.relu(self.norm(x))

    def forward_head(self, features: Tensor) -> Tensor:
        if not traced(features) and (features.dim() != 4 or features.shape[1] != self.num_features):
            raise ValueError(f"features must be (N, {self.num_features}, h, w), got {tuple(features.shape)}")
        return self.classifier(features.mean(dim=(2, 3)))


def dn10(*, targeted: bool = False, dropout: float | None = None, width: float = 1.0, **kwargs) -> DenseNet:
    """DN10 (or TDN10 when ``targeted``): 3 blocks of 2 plain 3x3 layers, growth 12, no compression.

    Layout: 3x3 conv 24 (stem) - [BN-ReLU-3x3 conv 12] x 2 - BN-ReLU-1x1 conv
    48 - 2x2 avg pool - [..] x 2 - BN-ReLU-1x1 conv 72 - 2x2 avg pool -
    [..] x 2 - BN-ReLU - global avg pool - FC. Ten weight layers: stem, six
    3x3, two transitions, FC. No dropout.

    Derivation. Section 4.3 fixes 3 blocks of 2 layers, growth 12 and no
    compression; Table 1 shows ``[3x3 conv] x 2`` per block, 1x1 transitions
    and a 3x3 first convolution. The open choices were the stem width and
    whether the blocks have 1x1 bottlenecks (the original Keras code can
    build them). Counting all trainable parameters (BN affine included, the
    running statistics are buffers) and one MAC per multiply-accumulate plus
    one per BN output element:

    ==================================== ========= =========== ===========
    reading                              params    MACs 28x28  MACs 56x56
    ==================================== ========= =========== ===========
    paper (Tables 2, 3)                  44.7K     11.3M       45.2M
    stem 24 (= 2 x growth), no bottleneck 44,746    11.32M      45.27M
    stem 16, no bottleneck               37,474    8.69M       34.77M
    stem 24, 1x1 bottleneck 24           33,370    10.33M      41.31M
    stem 24, compression 0.5             23,098    8.08M       32.31M
    ==================================== ========= =========== ===========

    Only the first reading matches. TDN10 adds 4 parameters per channel of
    its six target layers (72 channels): 45,034 (paper: 45.0K).

    ``width`` scales the growth rate (see :class:`DenseNet`): at width ``w`` the
    net has growth ``g = max(1, round(12 w))``, stem ``2g`` and transitions
    ``4g`` and ``6g`` channels.
    """
    return DenseNet(
        growth_rate=12, layers_per_block=2, bottleneck=None, compression=1.0,
        dropout=0.0 if dropout is None else dropout, targeted=targeted, width=width, **kwargs,
    )


def dn40(*, targeted: bool = False, dropout: float | None = None, width: float = 1.0, **kwargs) -> DenseNet:
    """DN40 (or TDN40 when ``targeted``): DenseNet-BC, 3 blocks of 6 bottleneck layers, growth 36, θ = 0.5.

    Layout: 3x3 conv 72 (stem) - 3 blocks of 6 x [BN-ReLU-1x1 conv 72 -
    BN-ReLU-3x3 conv 36], each conv followed by dropout 0.2 - transitions
    BN-ReLU-1x1 conv (compression 0.5) - dropout - 2x2 avg pool - BN-ReLU -
    global avg pool - FC. Forty weight layers: stem, 36 in the blocks, two
    transitions, FC ("12 layers" per block = 6 pairs; 6 layers give the
    paper's 21 connections per block).

    Derivation. The one choice the text leaves open is the bottleneck width:
    the DenseNet-BC paper uses ``4 x growth``, the original code of this
    paper ``2 x growth``. Counts (RGB 32x32, 10 classes, BN affine included):

    ================================= ========= ============ ==============
    reading                           params    MACs 32x32   MACs 48x48 (1)
    ================================= ========= ============ ==============
    paper (Tables 4, 6)               0.83M     357M         802M
    bottleneck 2 x growth, stem 72    832,474   356.6M       799.4M / 802.4M
    bottleneck 4 x growth, stem 72    1,542,682 650.3M       1460M
    bottleneck 2 x growth, stem 36    787,276   325.6M       731M
    ================================= ========= ============ ==============

    (1) Pain, one output: 799.4M for grey input, 802.4M for 3-channel input
    (the stem is the only layer that sees the input channels).

    ``width`` scales the growth rate (see :class:`DenseNet`); stem, bottlenecks
    and transitions follow from it.
    """
    return DenseNet(
        growth_rate=36, layers_per_block=6, bottleneck=2, compression=0.5,
        dropout=0.2 if dropout is None else dropout, targeted=targeted, width=width, **kwargs,
    )
