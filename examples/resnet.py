"""A small ResNet with BatchNorm, as a user model for `actlab compare --model`.

    actlab compare --model examples/resnet.py:resnet8 --dataset fashion-mnist \\
        --activations relu,gelu,silu --seeds 3 --epochs 2
    actlab compare --model examples/resnet.py:resnet8_rgb --dataset cifar10 ...

A builder: actlab calls ``resnet8(act)`` once per member, after ``torch.manual_seed(seed)``,
with ``act`` returning a fresh module of that member's activation (timm's ``act_layer``
convention). Three stages of one basic block each (He et al. 2016,
https://arxiv.org/abs/1512.03385), widths 16-32-64, global average pooling: any image size
(28x28 Fashion-MNIST, 32x32 CIFAR-10).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN, plus the input (a 1x1 conv when the shape changes), act."""

    def __init__(self, cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act2 = act()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def resnet8(act: Callable[[], nn.Module], in_channels: int = 1, classes: int = 10) -> nn.Module:
    """ResNet-8 for 1-channel images (MNIST family): stem, 3 basic blocks, linear head."""
    widths = (16, 32, 64)
    return nn.Sequential(
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        act(),
        BasicBlock(widths[0], widths[0], 1, act),
        BasicBlock(widths[0], widths[1], 2, act),
        BasicBlock(widths[1], widths[2], 2, act),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(widths[2], classes),
    )


def resnet8_rgb(act: Callable[[], nn.Module]) -> nn.Module:
    """ResNet-8 for 3-channel 32x32 images (CIFAR-10)."""
    return resnet8(act, in_channels=3)
