"""CNN6 and TKN6: the paper's 6-layer CNN for MNIST and tlMNIST (Table 1, section 4.3).

Layout (derived from the counts of Tables 2 and 3, see :class:`CNN6`)::

    5x5 conv 256 - ReLU - 2x2 max pool          Convolution (1), Transition (1)
    5x5 conv 256 - ReLU - 2x2 max pool          Convolution (2), Transition (2)
    5x5 conv 128 - ReLU                         Convolution (3)   -> features
    flatten - FC 328 - ReLU - FC 192 - ReLU - dropout 0.5 - FC num_classes
"""
from __future__ import annotations

from torch import Tensor, nn

from tkn.models.base import PaperModel, block_l2, conv, he_init_, traced
from tkn.models.width import scale_channels
from tkn.validate import positive_number

__all__ = ["CNN6"]

CHANNELS = (256, 256, 128)
KERNEL = 5
FC = (328, 192)
DROPOUT = 0.5


class CNN6(PaperModel):
    """The paper's CNN6 baseline, or TKN6 when ``targeted`` (every convolution a target layer).

    Derivation of the layout. Section 4.3 gives three convolutions (256, 256,
    128 kernels) and three FC layers, dropout 0.5 on the last one and ReLU
    everywhere; the garbled Table 1 shows 5x5 kernels, 2x2 max pooling after
    the first two convolutions and the FC widths 328 and 192. With
    same-padded, bias-free convolutions, no pooling after the third one and
    biased FC layers, the counts are (one MAC per multiply-accumulate plus one
    per BN element; there is no BN here):

    ============ ================================ =============================
    input        params (paper)                   MACs (paper)
    ============ ================================ =============================
    1x28x28      4,586,642 (4.59M)                368,406,912 (368M)
    1x56x56      10,758,290 (10.76M)              1,473,432,960 (1470M)
    ============ ================================ =============================

    Both match to 0.1%; a pool after the third convolution, valid padding or
    other FC widths miss by far more. The original Keras code of the paper
    uses exactly this layout.

    Args:
        num_classes, in_channels, input_size: see :func:`tkn.models.create_model`;
            ``input_size`` fixes the width of the first FC layer
            (``C3 * (H // 4) * (W // 4)``, ``C3 = 128`` at width 1).
        targeted: build TKN6 (all three convolutions are :class:`~tkn.layers.TargetConv2d`).
        window, l2, beta: target layers' window, and scale penalty ``l2 * beta**block``
            for Convolution (1), (2), (3) (``block`` = 0, 1, 2). Ignored by CNN6.
        min_roi: target layers' minimum ROI width (``None``: the kernel's, 5 pixels).
        dropout: before the last FC layer (default 0.5).
        width: channel multiplier (a finite number > 0; 1 = the paper's CNN6). Every
            convolution and both hidden FC layers get ``max(1, round(c * width))``
            units where the paper's model has ``c`` (256, 256, 128; 328, 192), so
            width 0.5 is ``128, 128, 64; 164, 96``. The attribute ``width`` keeps it.

    Shape:
        - Input: ``(N, in_channels, H, W)`` with ``(H, W) == input_size``
        - Features: ``(N, C3, H // 4, W // 4)`` with ``C3 = max(1, round(128 * width))``
        - Output: ``(N, num_classes)``

    Raises:
        ValueError: ``input_size`` below 4x4, or ``width`` not a finite number > 0.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        targeted: bool = False,
        window: str = "cauchy",
        l2: float = 1e-4,
        beta: float = 2.0,
        dropout: float | None = None,
        min_roi: int | None = None,
        width: float = 1.0,
    ) -> None:
        super().__init__(num_classes, in_channels, input_size)
        h, w = self.input_size
        if h < 4 or w < 4:
            raise ValueError(f"input_size must be at least 4x4 for CNN6 (two 2x2 poolings), got {self.input_size}")
        self.targeted = targeted
        self.width = positive_number("width", width)
        channels = [scale_channels(c, self.width) for c in CHANNELS]
        fc = [scale_channels(c, self.width) for c in FC]
        layers: list[nn.Module] = []
        cin = in_channels
        for block, cout in enumerate(channels):
            layers.append(conv(cin, cout, KERNEL, targeted=targeted, window=window, l2=block_l2(l2, beta, block),
                               min_roi=min_roi))
            layers.append(nn.ReLU(inplace=True))
            if block < 2:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.feature_shape = (channels[-1], h // 4, w // 4)
        flat = channels[-1] * (h // 4) * (w // 4)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, fc[0]),
            nn.ReLU(inplace=True),
            nn.Linear(fc[0], fc[1]),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT if dropout is None else dropout),
            nn.Linear(fc[1], num_classes),
        )
        he_init_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        if not traced(features) and tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"CNN6 built for input_size={self.input_size} expects features {self.feature_shape}, got "
                f"{tuple(features.shape[1:])}: its FC layers fix the input size; build it with the new input_size"
            )
        return self.head(features)
