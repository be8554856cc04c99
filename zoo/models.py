"""The three reference CNNs of the zoo, as plain `torch.nn` modules taking `[N,1,28,28]` MNIST batches.

Each network is chosen for the ONNX operators it makes the compiler and the overlay handle, not for
state-of-the-art accuracy:

* `LeNet5` - the smallest useful graph: Conv, Relu, MaxPool, Flatten and a Gemm chain.
* `ResNetSmall` - residual Adds (with and without a 1x1 projection), strided convs, GlobalAveragePool.
* `MobileNetV2Small` - depthwise (grouped) convs, ReLU6 (exported as Clip), linear bottlenecks and a
  fixed-window AveragePool.

BatchNorm is used freely: it is folded into the preceding Conv when exported in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """Classic LeNet-5 with ReLU and max pooling; padding 2 on the first conv keeps the 28x28 input."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Bias-free conv ("same" padding) followed by BatchNorm; the BN supplies the bias after folding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, residual Add, then ReLU.

    The shortcut is the identity when shapes match and a strided 1x1 conv+BN projection otherwise, so
    the exported graph contains both kinds of Add input the overlay must rescale.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), nn.ReLU(), _conv_bn(cout, cout, 3))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A three-stage ResNet (16, 32/2, 64/2 channels/stride), one BasicBlock per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(1, 16, 3), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project (no activation after it).

    The residual Add exists only when stride is 1 and the channel count is unchanged, as in the paper.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            nn.ReLU6(),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            _conv_bn(hidden, cout, 1),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """A four-block MobileNetV2 for 28x28 inputs: 16 -> 24/2 -> 24 -> 32/2 -> 32, then 1x1 to 64.

    Pooling is `AvgPool2d(7)` on the final 7x7 map rather than a global pool, so the graph carries a
    real windowed AveragePool; this ties the model to 28x28 inputs, which is all the zoo feeds it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(1, 16, 3), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 24, 2),
            InvertedResidual(24, 24, 1),
            InvertedResidual(24, 32, 2),
            InvertedResidual(32, 32, 1),
        )
        self.head = nn.Sequential(
            _conv_bn(32, 64, 1),
            nn.ReLU6(),
            nn.AvgPool2d(7),
            nn.Flatten(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
    "resnet_small": ResNetSmall,
    "mobilenetv2_small": MobileNetV2Small,
}
"""Zoo name -> constructor; the names are also the bundled file names in `zoo/models/`."""
