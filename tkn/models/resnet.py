"""ResNet-18 and its targeted twin TResNet-18, written the usual way, for small inputs.

Layout (He et al. 2016, "Deep Residual Learning", the 18-layer network of
its Table 1, with the small-image stem of its CIFAR experiments)::

    3x3 conv 64, stride 1 - BN - ReLU                       stem (no max-pool)
    stage 1: 2 BasicBlocks,  64 channels, stride 1          H x W
    stage 2: 2 BasicBlocks, 128 channels, first stride 2    H/2 x W/2
    stage 3: 2 BasicBlocks, 256 channels, first stride 2    H/4 x W/4
    stage 4: 2 BasicBlocks, 512 channels, first stride 2    H/8 x W/8  -> features
    global average pool - FC num_classes

A BasicBlock is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``
with 3x3 convolutions (padding 1, the first one strided) and, where the
stride or the width changes, a ``1x1 conv (strided) - BN`` shortcut; the
activations are written as ``F.relu`` calls in ``forward`` and the residual
as an addition, as is usual for this network.

The stem is a 3x3 stride-1 convolution without max-pool (not the 7x7
stride-2 convolution and max-pool meant for 224x224 images): on 28x28 or
64x64 inputs the ImageNet stem would leave maps of 1x1 to 2x2 in the last
stage, too small for ROIs. TResNet-18 makes the sixteen 3x3 convolutions of
the four stages target layers; the stem (a cheap 3-channel convolution) and
the 1x1 shortcut convolutions stay dense, as the DenseNets keep their stem
and 1x1 convolutions dense. Stage ``b`` (0..3) gets the scale penalty
``l2 * beta**b`` (the paper's β build-up continued to a fourth stage).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tkn.layers import TargetConv2d
from tkn.models.base import PaperModel, block_l2, he_init_, traced

__all__ = ["ResNet", "BasicBlock", "resnet18"]

#: Output channels of the four stages and their number of BasicBlocks.
WIDTHS = (64, 128, 256, 512)
BLOCKS_18 = (2, 2, 2, 2)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, *, targeted: bool = False,
            window: str = "cauchy", l2: float = 0.0, min_roi: int | None = None) -> nn.Module:
    """A 3x3 convolution, padding 1, no bias: ``nn.Conv2d`` or, if ``targeted``, a :class:`TargetConv2d`."""
    if targeted:
        return TargetConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, window=window, l2=l2,
                            min_roi=min_roi)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, the two-convolution residual block.

    Args:
        in_channels: channels entering the block.
        out_channels: channels of both 3x3 convolutions (and of the output).
        stride: of the first convolution and of the shortcut.
        targeted, window, l2, min_roi: whether the 3x3 convolutions are target layers, their window,
            penalty and minimum ROI width.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, ceil(H / stride), ceil(W / stride))``
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, targeted: bool = False,
                 window: str = "cauchy", l2: float = 0.0, min_roi: int | None = None) -> None:
        super().__init__()
        kw = dict(targeted=targeted, window=window, l2=l2, min_roi=min_roi)
        self.conv1 = conv3x3(in_channels, out_channels, stride, **kw)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, **kw)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return F.relu(out)


class ResNet(PaperModel):
    """A ResNet of BasicBlocks for small images (see the module docstring for the layout).

    Args:
        blocks: BasicBlocks per stage (four stages of :data:`WIDTHS` channels).
        num_classes, in_channels, input_size: see :func:`tkn.models.create_model`
            (fully convolutional: ``input_size`` is only recorded).
        targeted: the 3x3 convolutions of the stages are target layers, stage ``b`` with ``l2 * beta**b``.
        window, l2, beta: the target layers' window, scale penalty and its build-up. Ignored by the baseline.
        dropout: ``None`` (none, the network's own setting) or a rate applied before the classifier.
        min_roi: the target layers' minimum ROI width (``None``: the kernel's, 3 pixels).

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Features: ``(N, 512, ceil(H / 8), ceil(W / 8))``
        - Output: ``(N, num_classes)``
    """

    def __init__(
        self,
        *,
        blocks: tuple[int, ...] = BLOCKS_18,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        targeted: bool = False,
        window: str = "cauchy",
        l2: float = 1e-4,
        beta: float = 2.0,
        dropout: float | None = None,
        min_roi: int | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        if len(blocks) != len(WIDTHS) or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"blocks must be {len(WIDTHS)} positive ints (BasicBlocks per stage), got {blocks!r}")
        self.targeted = targeted
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        cin = WIDTHS[0]
        stages = []
        for stage, (width, count) in enumerate(zip(WIDTHS, blocks)):
            layers = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, width, stride, targeted=targeted, window=window,
                                         l2=block_l2(l2, beta, stage), min_roi=min_roi))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        he_init_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, features: Tensor) -> Tensor:
        if not traced(features) and (features.dim() != 4 or features.shape[1] != self.num_features):
            raise ValueError(f"features must be (N, {self.num_features}, h, w), got {tuple(features.shape)}")
        x = self.avgpool(features).flatten(1)
        return self.fc(self.dropout(x))


def resnet18(*, targeted: bool = False, **kwargs) -> ResNet:
    """ResNet-18 (2 BasicBlocks per stage) or, if ``targeted``, TResNet-18; see :class:`ResNet`."""
    return ResNet(blocks=BLOCKS_18, targeted=targeted, **kwargs)
