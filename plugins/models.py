"""Built-in models for small grey images (28x28 by default).

Every model takes raw pixels in [0, 1] and normalises inside (so the exported ONNX does too) and
returns logits. Factories have the contract signature ``f(num_classes, in_channels, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Fashion-MNIST training-set statistics; close enough for MNIST-like data too.
DEFAULT_MEAN = 0.2860
DEFAULT_STD = 0.3530


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float, channels: int) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.register_buffer("mean", torch.full((1, channels, 1, 1), float(mean)))
        self.register_buffer("inv_std", torch.full((1, channels, 1, 1), 1.0 / float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): a 3x3 stem, then stages of basic blocks, global pooling."""

    def __init__(
        self, num_classes: int, in_channels: int, widths: Sequence[int], blocks: int, mean: float, std: float
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            stage = [
                BasicBlock(cin if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                for j in range(blocks)
            ]
            layers.append(nn.Sequential(*stage))
            cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class LeNet5(nn.Module):
    """LeNet-5-like (LeCun et al. 1998): two conv+pool stages and three fully connected layers."""

    def __init__(
        self, num_classes: int, in_channels: int, width: float, image_size: int, mean: float, std: float
    ) -> None:
        super().__init__()
        c1, c2 = max(1, round(6 * width)), max(1, round(16 * width))
        self.normalize = Normalize(mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = ((image_size // 2) - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(self.normalize(x))))


class MLP(nn.Module):
    """A multilayer perceptron on the flattened image."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        hidden: Sequence[int],
        image_size: int,
        mean: float,
        std: float,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        dims = [in_channels * image_size * image_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.normalize(x)))


def resnet8(
    num_classes: int,
    in_channels: int,
    widths: Sequence[int] = (16, 32, 64),
    mean: float = DEFAULT_MEAN,
    std: float = DEFAULT_STD,
) -> ResNet:
    """ResNet-8-like teacher: stem + three stages of one basic block (widths per stage)."""
    return ResNet(num_classes, in_channels, tuple(widths), 1, mean, std)


def lenet5(
    num_classes: int,
    in_channels: int,
    width: float = 1.0,
    image_size: int = 28,
    mean: float = DEFAULT_MEAN,
    std: float = DEFAULT_STD,
) -> LeNet5:
    """LeNet-5-like student (about 60k parameters at width 1)."""
    return LeNet5(num_classes, in_channels, width, image_size, mean, std)


def mlp(
    num_classes: int,
    in_channels: int,
    hidden: Sequence[int] = (256, 128),
    image_size: int = 28,
    mean: float = DEFAULT_MEAN,
    std: float = DEFAULT_STD,
) -> MLP:
    """Fully connected network on the flattened image."""
    return MLP(num_classes, in_channels, tuple(hidden), image_size, mean, std)
